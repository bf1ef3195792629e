"""Models: Hugging Face Llama-architecture causal LMs from named presets or local checkpoints.

A checkpoint is a plain HF directory (config.json + model.safetensors + tokenizer files) that any
HF tool loads with ``from_pretrained(path)``. A LoRA checkpoint is a PEFT adapter directory
(adapter_config.json + adapter_model.safetensors) whose ``base_model_name_or_path`` names the base
checkpoint: relative to the adapter directory when the base lies inside the run (``../base``, so a
moved run keeps working), else absolute; :func:`load_model` merges it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import LoraConfig
from .dist import first_line
from .files import UserError, atomic_dir, commit_dir, default_mode, sha256_file, write_json, writing
from .loss import token_losses

# Named shapes. vocab_size and max_position_embeddings come from the dataset at build time.
PRESETS: dict[str, dict[str, Any]] = {
    # ~1.3M parameters with a 2k vocabulary: the CPU preset used by tests and the default study.
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4),
    # ~10M parameters with an 8k vocabulary.
    "small": dict(hidden_size=320, intermediate_size=864, num_hidden_layers=6, num_attention_heads=5,
                  num_key_value_heads=5),
    # GPT-2-small-sized Llama (~125M with a 32k vocabulary).
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12),
    # The TinyLlama-1.1B shape.
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, rope_theta=10000.0),
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def quiet_hf() -> None:
    """Silence HF's own shard/loading progress bars and info logs; our bars report progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def peft_quiet():
    """While PEFT wraps or loads a model: silence the FutureWarning transformers 5 gives when PEFT reads the
    deprecated ``is_gradient_checkpointing`` (every LoRA run would print it), and only that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file())


def build_model(preset: str, vocab_size: int, seq_len: int, seed: int = 0, eos_id: int | None = None):
    """A freshly initialised LlamaForCausalLM of a named preset."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise UserError(f"unknown model '{preset}': use a preset ({', '.join(PRESETS)}) or a checkpoint directory")
    cfg = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max(seq_len, 128),
                      tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id,
                      pad_token_id=eos_id, **PRESETS[preset])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no GPU is available: use device=cpu")
    return torch.device(name)


def autocast_ctx(device: torch.device, precision: str = "auto"):
    """bf16 autocast on GPU (auto or bf16), fp32 otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a full checkpoint, or a LoRA adapter merged into its base, for inference or further training."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    quiet_hf()
    p = Path(path)
    if not is_checkpoint(p):
        raise UserError(f"not a model checkpoint: {p} (expected a directory with config.json or adapter_config.json)")
    if bad := damaged_files(p):
        raise UserError(f"checkpoint {p} is damaged ({', '.join(bad[:3])} differ from its index.json): "
                        "use another checkpoint")
    base = adapter_base(p) if is_adapter(p) else None
    if base is not None and (bad := damaged_files(base)):
        raise UserError(f"the base model {base} of LoRA checkpoint {p} is damaged ({', '.join(bad[:3])} differ "
                        "from its index.json): restore it or train again")
    try:
        if base is not None:
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            with peft_quiet():
                model = PeftModel.from_pretrained(model, p).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise UserError(f"cannot load checkpoint {p} ({first_line(e)}): it is incomplete or damaged; "
                        "use another checkpoint") from None
    return model.to(device)


def linear_modules(model) -> dict[str, torch.nn.Module]:
    """The model's linear layers by full name: ``nn.Linear`` and GPT-2's ``Conv1D`` (what LoRA adapts)."""
    from transformers.pytorch_utils import Conv1D

    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}


def is_adapter(path: str | Path) -> bool:
    """A LoRA (PEFT adapter) checkpoint: adapter_config.json and no config.json of its own."""
    p = Path(path)
    return (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def adapter_base(path: str | Path) -> Path:
    """The base checkpoint of a LoRA adapter directory: its ``base_model_name_or_path``, resolved against
    the adapter directory when relative; a one-line error when it is not there (any more)."""
    p = Path(path)
    try:
        raw = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {p / 'adapter_config.json'} ({e.__class__.__name__}): the LoRA checkpoint is "
                        "damaged; use another checkpoint") from None
    if not raw:
        raise UserError(f"LoRA checkpoint {p} names no base model (base_model_name_or_path in adapter_config.json): "
                        "set it to the base checkpoint directory")
    base = Path(raw).expanduser()
    base = (p / base).resolve() if not base.is_absolute() else base
    if not is_checkpoint(base):
        raise UserError(f"the base model of LoRA checkpoint {p} is missing: {base} is not a checkpoint directory; "
                        "move the base back there or set base_model_name_or_path in its adapter_config.json to "
                        "where the base is now")
    return base


def base_reference(base: str | Path, checkpoint: str | Path, run_dir: str | Path | None) -> str:
    """How an adapter at ``checkpoint`` records its ``base``: relative to the checkpoint directory when
    the base lies inside ``run_dir`` (the run moves as one), else the absolute path."""
    base, checkpoint = Path(base).resolve(), Path(checkpoint).resolve()
    if run_dir is not None and base.is_relative_to(Path(run_dir).resolve()):
        return os.path.relpath(base, checkpoint)
    return str(base)


def check_lora_targets(model, lora: LoraConfig) -> None:
    """Refuse LoRA targets of which one matches no linear module of the model (before anything is written).

    A target matches as in PEFT: a module's full name equals it or ends with ``.`` + it.
    """
    from .dist import unwrap_hf

    hf = unwrap_hf(model)
    names = linear_modules(hf)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    body = sorted({n.rsplit(".", 1)[-1] for n, m in names.items() if m is not head})
    if lora.targets == ["all-linear"]:
        if not body:
            raise UserError("lora.targets all-linear: this model has no linear layer besides its output head; "
                            "train it without LoRA (lora.r=0)")
        return
    missing = [t for t in lora.targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(f"lora.targets {', '.join(missing)} match no linear module of this model (it has "
                        f"{', '.join(body)}): set lora.targets to some of those, or to all-linear")


def apply_lora(model, lora: LoraConfig, seed: int = 0):
    """Wrap ``model`` with PEFT LoRA adapters (only adapter weights train), initialised from ``seed``.

    ``all-linear`` (the default) adapts every linear layer except the output head, whatever the
    architecture calls them (q_proj..., qkv_proj, c_attn, query_key_value, fc1...).
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = "all-linear" if lora.targets == ["all-linear"] else list(lora.targets)
    conv1d = any(isinstance(m, Conv1D) for m in model.modules())  # GPT-2 stores its weights transposed
    cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                         bias="none", task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
    with torch.random.fork_rng(devices=[]), peft_quiet():
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, cfg)
        except ValueError as e:
            raise UserError(f"LoRA targets {', '.join(lora.targets)} do not fit this model "
                            f"({str(e).splitlines()[0][:160]}): set lora.targets to its module names") from None


def lora_summary(model) -> dict:
    """What a LoRA model adapts: the adapted modules' short names and its trainable parameters (count, %)."""
    from peft.tuners.lora import LoraLayer

    targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer)})
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    return {"lora_targets": targets, "trainable_parameters": trainable, "parameters": total,
            "trainable_percent": 100.0 * trainable / max(total, 1)}


def save_checkpoint_dir(model, out: str | Path, tokenizer_dir: str | Path | None = None,
                        base_path: str | Path | None = None, meta: dict | None = None,
                        state: dict | None = None, state_dict: dict | None = None,
                        run_dir: str | Path | None = None) -> Path:
    """Write a loadable HF (or PEFT adapter) directory atomically and return its path.

    ``state`` (optimizer, scheduler, RNG, loop position) goes to ``training_state.pt`` in the same
    directory, so weights and state appear together or not at all. ``state_dict`` (full tensors,
    e.g. gathered from an FSDP-sharded model) replaces the model's own parameters when given.
    An adapter records ``base_path`` relative to ``out`` when the base lies inside ``run_dir``.
    """
    quiet_hf()
    out = Path(out)
    tmp = atomic_dir(out)
    kw = {"state_dict": dict(state_dict)} if state_dict is not None else {}  # HF pops from the dict it is given
    try:
        with writing(out):  # safetensors reports a failed write as its own error with the OS's text
            model.save_pretrained(tmp, safe_serialization=True, **kw)
        if hasattr(model, "peft_config"):
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text())
            if base_path:
                cfg["base_model_name_or_path"] = base_reference(base_path, out, run_dir)
            cfg_path.write_text(json.dumps(cfg, indent=2))
        if tokenizer_dir is not None:
            from .tokenizer import copy_tokenizer

            copy_tokenizer(Path(tokenizer_dir), tmp)
        if meta is not None:
            write_json(tmp / "slm_meta.json", meta)
        if state is not None:
            save_torch(state, tmp / "training_state.pt", name=out / "training_state.pt")
        for f in tmp.iterdir():  # safetensors writes 0600 files; a checkpoint's files get the usual mode
            f.chmod(default_mode())
        write_index(tmp)
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class _Recorder(io.RawIOBase):
    """A file torch.save writes through, keeping the OSError of a failed write (torch reports only
    "unexpected pos ...")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj, path: Path, name: Path | None = None) -> None:
    """``torch.save`` to ``path``; a failed write raises the OS's error naming ``name``
    (default ``path``), e.g. ENOSPC on a full disk."""
    with writing(name or path), open(path, "wb") as f:
        rec = _Recorder(f)
        try:
            torch.save(obj, rec)
        except RuntimeError:
            if rec.error is not None:
                raise rec.error from None
            raise


def link_checkpoint_dir(src: str | Path, out: str | Path, meta: dict | None = None,
                        skip: tuple[str, ...] = ("training_state.pt",)) -> Path:
    """Write ``out`` atomically as checkpoint ``src`` without the files in ``skip``, the weights not copied:
    its files are hard links to ``src``'s where the filesystem allows (else copies). An adapter's relative
    base path is rewritten for the new place; ``meta`` replaces slm_meta.json when given."""
    src, out = Path(src), Path(out)
    tmp = atomic_dir(out)
    try:
        own = {"slm_meta.json"} if meta is not None else set()
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in (*skip, *own, INDEX_FILE, "adapter_config.json"):
                try:
                    os.link(f, tmp / f.name)
                except OSError:  # another filesystem, or one without hard links
                    shutil.copy2(f, tmp / f.name)
        if (src / "adapter_config.json").is_file():
            cfg = json.loads((src / "adapter_config.json").read_text())
            base = Path(cfg.get("base_model_name_or_path") or "")
            if cfg.get("base_model_name_or_path") and not base.is_absolute():
                cfg["base_model_name_or_path"] = os.path.relpath((src / base).resolve(), out.resolve())
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
            own.add("adapter_config.json")
        if meta is not None:
            write_json(tmp / "slm_meta.json", meta)
        known = {}
        if (src / INDEX_FILE).is_file():
            known = {k: v for k, v in json.loads((src / INDEX_FILE).read_text())["files"].items() if k not in own}
        write_index(tmp, known)
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


INDEX_FILE = "index.json"


def write_index(directory: Path, known: dict | None = None) -> None:
    """Size and sha256 of every file of a checkpoint directory, written last (the directory's seal).
    ``known``: entries of files whose content is known (linked from a sealed checkpoint), not hashed again."""
    known = known or {}
    files = {f.name: known.get(f.name) or {"size": f.stat().st_size, "sha256": sha256_file(f)}
             for f in sorted(directory.iterdir()) if f.is_file() and f.name != INDEX_FILE}
    write_json(directory / INDEX_FILE, {"files": files})


def damaged_files(directory: str | Path) -> list[str]:
    """Files of a checkpoint that are missing or differ from its index (empty: intact; no index: not checked)."""
    d = Path(directory)
    if not (d / INDEX_FILE).is_file():
        return []
    try:
        files = json.loads((d / INDEX_FILE).read_text())["files"]
    except (ValueError, KeyError):
        return [INDEX_FILE]
    bad = []
    for name, meta in files.items():
        f = d / name
        if not f.is_file() or f.stat().st_size != meta["size"] or sha256_file(f) != meta["sha256"]:
            bad.append(name)
    return bad


def model_fingerprint(path: str | Path) -> str:
    """sha256 over a checkpoint's config and weight files (adapter and its base for LoRA)."""
    p = Path(path)
    h = hashlib.sha256()
    names = ("config.json", "adapter_config.json", "adapter_model.safetensors") + WEIGHT_FILES
    for name in names:
        f = p / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    if is_adapter(p):
        h.update(model_fingerprint(adapter_base(p)).encode())
    return h.hexdigest()


def checkpoint_config(path: str | Path) -> dict:
    """The model config.json of a checkpoint directory (the base's for a LoRA adapter)."""
    p = Path(path)
    cfg_dir = adapter_base(p) if is_adapter(p) else p
    try:
        cfg = json.loads((cfg_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {cfg_dir / 'config.json'} ({e.__class__.__name__}) for checkpoint {p}: "
                        "it is incomplete or its base model moved") from None
    return cfg.get("text_config", cfg) if "vocab_size" not in cfg else cfg


def checkpoint_vocab(path: str | Path) -> tuple[int, str | None]:
    """(vocab_size, tokenizer fingerprint or None) of a checkpoint directory."""
    from .data import tokenizer_fingerprint

    p = Path(path)
    fp = tokenizer_fingerprint(p) if (p / "tokenizer.json").is_file() else None
    return int(checkpoint_config(p)["vocab_size"]), fp


def check_compatible(path: str | Path, dataset, role: str = "model") -> None:
    """Refuse a checkpoint that is not one, whose vocabulary differs from the dataset's tokenizer or
    whose positions are fewer than the dataset's windows."""
    if not is_checkpoint(path):
        raise UserError(f"{role} {path} is not a checkpoint directory (no config.json or adapter_config.json there): "
                        "pass a run's final/ or checkpoint directory, or a local HF model directory")
    vocab, fp = checkpoint_vocab(path)
    positions = checkpoint_config(path).get("max_position_embeddings")
    if positions is not None and positions < dataset.seq_len:
        raise UserError(f"{role} {path} handles {positions} positions but dataset {dataset.path} has windows of "
                        f"{dataset.seq_len} tokens: prepare the data with --seq-len {positions} or less")
    if fp is not None and fp != dataset.manifest["tokenizer_fingerprint"]:
        raise UserError(f"{role} {path} was trained with a different tokenizer than dataset {dataset.path}: "
                        "prepare the data with that model's tokenizer (tokenizer=DIR) or use a matching model")
    if vocab < dataset.vocab_size or (fp is None and vocab != dataset.vocab_size):
        raise UserError(f"{role} {path} has vocabulary size {vocab} but dataset {dataset.path} has "
                        f"{dataset.vocab_size}: use a model trained with the dataset's tokenizer")


# Architectures whose logits are exactly lm_head(last hidden state): no softcapping or scaling.
CHUNKED_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3"}


def _identity(x):
    return x


@contextlib.contextmanager
def _head_bypassed(hf_model):
    """Inside, the model's forward returns its last hidden states where the logits would be.

    The output head is skipped, not removed, so DDP, FSDP2 (whose root keeps the head's parameters
    gathered through backward), torch.compile and PEFT wrappers run unchanged around it.
    """
    head = hf_model.get_output_embeddings()
    own = head.__dict__.get("forward")  # a forward set on the instance (hooks, patches) comes back afterwards
    head.forward = _identity
    try:
        yield head
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def supports_chunked_head(model) -> bool:
    from .dist import unwrap_hf

    hf = unwrap_hf(model)
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    return (getattr(getattr(hf, "config", None), "model_type", "") in CHUNKED_HEAD_TYPES
            and isinstance(head, torch.nn.Linear) and head.bias is None)


def model_token_losses(model, inputs: torch.Tensor, targets: torch.Tensor, chunked: bool = True,
                       sparse_backward: bool = False, entropy: bool = False,
                       **forward_kwargs) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [B, T] of a causal LM on aligned (inputs, targets); ``model`` may be wrapped
    (DDP, FSDP2, torch.compile, PEFT).

    For architectures whose logits are ``lm_head(hidden)`` the loss comes from
    :func:`~selective_lm.loss.head_token_losses`: the [B·T, vocab] logits are never materialised,
    with or without autograd. Other architectures (or ``chunked=False``) take the plain path. With
    ``sparse_backward`` the head's backward skips positions whose gradient is zero (SLM's
    unselected tokens) at the price of one host sync per call. ``forward_kwargs`` (an attention mask,
    position ids) go to the model's forward.

    ``entropy=True`` returns ``(losses, entropies)``: the predictive entropy of every position from the same
    logits (chunked alike), never with a gradient; the losses keep theirs when autograd is on (training with
    score=model-entropy), and under no_grad (scoring, online references) come from the same no-grad pass.
    """
    from .dist import unwrap_hf
    from .loss import head_token_losses, head_token_stats, token_entropy

    if chunked and supports_chunked_head(model):
        with _head_bypassed(unwrap_hf(model)) as head:
            hidden = model(input_ids=inputs, use_cache=False, **forward_kwargs).logits
        if entropy and not torch.is_grad_enabled():
            return head_token_stats(hidden, head.weight, targets)
        return head_token_losses(hidden, head.weight, targets, sparse_backward=sparse_backward, entropy=entropy)
    logits = model(input_ids=inputs, use_cache=False, **forward_kwargs).logits
    if entropy:
        return token_losses(logits, targets), token_entropy(logits, targets)
    return token_losses(logits, targets)


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
