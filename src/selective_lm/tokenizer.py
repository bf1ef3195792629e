"""Tokenizers: train a byte-level BPE (HF `tokenizers`) or load a local HF tokenizer; fingerprints."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .files import UserError, atomic_dir, read_json, sha256_json, write_json, writing
from . import shards

EOS_TOKEN = "<|endoftext|>"
_SAFE_CUT = re.compile(r"(?<=[!-~])\n(?=[!-~])")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   clean_up_tokenization_spaces=False)


def _save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """save_pretrained into a fresh directory beside ``out_dir``, then move each file in."""
    out = Path(out_dir)
    tmp = atomic_dir(out)
    try:
        with writing(out):  # tokenizers reports a failed write as a bare Exception with the OS's text
            tokenizer.save_pretrained(str(tmp))
        out.mkdir(parents=True, exist_ok=True)
        pin_tokenizer_class(tmp)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == "tokenizer.json"):  # tokenizer.json last
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template.*|"
                              r"vocab\.(json|txt)|merges\.txt|.*\.model)$")


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy a tokenizer directory's own files (not model weights) into ``dst``, then pin its class.

    tokenizer.json is copied verbatim, so fingerprints match the source; tokenizer_config.json gets
    the keys of :func:`pin_tokenizer_class`. ``dst`` may be a checkpoint whose config.json is written.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and _TOKENIZER_FILES.match(f.name):
            shutil.copyfile(f, dst / f.name)
    pin_tokenizer_class(dst)


# The class that builds a tokenizer from tokenizer.json as it is (TokenizersBackend in transformers 5).
FAST_CLASS = "PreTrainedTokenizerFast"
_PIPELINE = ("normalizer", "pre_tokenizer", "model", "decoder", "post_processor")


def pin_tokenizer_class(directory: Path) -> None:
    """Make ``AutoTokenizer.from_pretrained(directory)`` return the tokenizer we train and tokenize with.

    That is tokenizer.json as saved (what :func:`load_tokenizer` builds). tokenizer_class stops
    transformers from choosing a class by the model type (LlamaTokenizer would impose its own
    pre-tokenizer). In a checkpoint of some model types (qwen2 among them) transformers 5 uses the
    model type's class all the same, and its ``__init__`` rebuilds normalizer and pre-tokenizer from
    its own defaults (Qwen2Tokenizer splits digits one by one): there the key ``trust_remote_code``
    is set too, which makes such a class load tokenizer.json as saved (transformers reads that key of
    tokenizer_config.json nowhere else; no code is run). Checked by loading it both ways.
    """
    path = directory / "tokenizer_config.json"
    cfg = read_json(path) if path.is_file() else {}
    cfg["tokenizer_class"] = FAST_CLASS
    write_json(path, cfg)
    if not (directory / "config.json").is_file() or _auto_is_exact(directory):
        return
    cfg["trust_remote_code"] = True
    write_json(path, cfg)
    if not _auto_is_exact(directory):
        import transformers

        print(f"slm: warning: transformers {transformers.__version__} AutoTokenizer does not load the tokenizer of "
              f"{directory} as saved: load it with PreTrainedTokenizerFast.from_pretrained", file=sys.stderr)


def _auto_is_exact(directory: Path) -> bool:
    """True when AutoTokenizer builds the normalizer, pre-tokenizer, model, decoder and post-processor
    that :func:`load_tokenizer` builds from the same directory."""
    from transformers import AutoTokenizer

    try:
        built = json.loads(AutoTokenizer.from_pretrained(str(directory), local_files_only=True).backend_tokenizer.to_str())
    except Exception:  # noqa: BLE001 - a model type whose tokenizer class cannot read these files
        return False
    ours = json.loads(load_tokenizer(directory).backend_tokenizer.to_str())
    return all(built.get(k) == ours.get(k) for k in _PIPELINE)


def _train_bpe(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise UserError(f"vocab_size must be >= 257 for a byte-level BPE (256 bytes + EOS), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(iter(texts), trainer=trainer)
    return _wrap(tok)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE (full byte alphabet, ``<|endoftext|>`` special) and save it to ``out_dir``."""
    tok = _train_bpe(texts, vocab_size)
    _save_tokenizer(tok, out_dir)
    return tok


def train_tokenizer_from_inputs(inputs: list[str], vocab_size: int, out_dir: str | Path,
                                text_field: str = "text", progress: bool = False, sample: int = 200_000_000,
                                seed: int = 0):
    """Train one byte-level BPE on the documents of ``inputs`` (to share across several datasets); documents
    whose ``split`` field names validation or test are left out, so held-out text shapes no merge. ``sample``:
    about that many characters, an equal share from every unit of the input (:func:`selective_lm.shards.sample_texts`,
    visiting order from ``seed``); 0 = every document."""
    from .runtime import progress as progress_bar

    job = shards.plan(inputs)
    job["fields"] = {"text": text_field, "spans": "spans", "split": "split"}
    stats = {"documents": 0}

    def keep(text: str, split: str | None) -> bool:
        stats["documents"] += 1
        return split in (None, "train")

    bar = progress_bar(shards.sample_texts(job, sample, seed, keep), desc="train tokenizer", unit="doc",
                       enabled=progress, delay=0.5)
    tok = _train_bpe(bar, vocab_size)
    if stats["documents"] == 0:
        raise UserError(f"no documents in {', '.join(inputs)} (all inputs are empty): add text")
    _save_tokenizer(tok, out_dir)
    return tok


def _encode_batch(backend, texts: list[str], with_offsets: bool):
    fast = getattr(backend, "encode_batch_fast", None)
    if with_offsets or fast is None:
        return backend.encode_batch(texts, add_special_tokens=False)
    return fast(texts, add_special_tokens=False)


def can_chunk(tokenizer) -> bool:
    """True when cutting a text after "x\\ny" newlines leaves its tokens unchanged.

    Holds for GPT-2-style byte-level BPE (no normalizer, ByteLevel regex pre-tokenizer without
    prefix space): no pre-token spans such a newline and none looks behind, so long documents can
    be encoded in pieces, in parallel, with exactly the tokens of the whole.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = state.get("pre_tokenizer") or {}
    return (state.get("normalizer") is None and pre.get("type") == "ByteLevel"
            and not pre.get("add_prefix_space") and pre.get("use_regex", True))


def split_long(text: str, size: int) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` chars, each cut just after a newline between printable ASCII."""
    pieces, start = [], 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def load_tokenizer(path: str | Path):
    """Load a local HF fast tokenizer directory (UserError if missing or unreadable)."""
    from transformers import PreTrainedTokenizerFast

    p = Path(path)
    if not p.is_dir():
        raise UserError(f"tokenizer directory not found: {p} (pass a local HF tokenizer directory, "
                        "or leave tokenizer unset to train one)")
    if not (p / "tokenizer.json").is_file():
        raise UserError(f"{p} holds no tokenizer.json: save a fast tokenizer there with save_pretrained")
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for broken files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read the tokenizer in {p} ({msg}): re-save it with save_pretrained") from None
    return tok


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself starts an encoded text with its BOS token (``add_special_tokens=True``)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer.encode("a", add_special_tokens=True)
    return bool(ids) and ids[0] == bos


def resolve_bos(tokenizer, choice: str, where: str) -> int | None:
    """The BOS id each document starts with under ``bos=choice`` (auto, true, false), or None."""
    if choice == "false":
        return None
    if choice == "true":
        if tokenizer.bos_token_id is None:
            raise UserError(f"bos=true but tokenizer {where} has no BOS token: set bos_token in its "
                            "tokenizer_config.json (e.g. \"<s>\"), or pass bos=auto or bos=false")
        return int(tokenizer.bos_token_id)
    return int(tokenizer.bos_token_id) if adds_bos(tokenizer) else None


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 of the canonical tokenizer.json content (sorted keys; truncation/padding settings ignored)."""
    p = Path(tokenizer_dir) / "tokenizer.json"
    try:
        content = read_json(p)
    except (OSError, ValueError):
        raise UserError(f"cannot read {p}: pass a tokenizer directory saved with save_pretrained") from None
    if isinstance(content, dict):
        content = {k: v for k, v in content.items() if k not in ("truncation", "padding")}
    return sha256_json(content)


# --------------------------------------------------------------------------- provenance labels per token
_WS_CODEPOINTS = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


def char_labels(text: str, spans) -> np.ndarray:
    lab = np.zeros(len(text), dtype=np.uint8)
    for start, end, label in spans:
        lab[start:end] = label
    return lab


def token_labels(text: str, spans, offsets) -> np.ndarray:
    """Label per token: the label of its first non-whitespace character (else its start character).

    Byte-level BPE tokens usually carry their leading space (" word"); skipping it gives the token
    the label of the word it spells rather than that of the space before it.
    """
    n = len(text)
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if n == 0 or len(offs) == 0:
        return np.zeros(len(offs), dtype=np.uint8)
    lab = char_labels(text, spans)
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    idx = np.where(np.isin(cps, _WS_CODEPOINTS), n, np.arange(n))
    nxt = np.minimum.accumulate(idx[::-1])[::-1]  # next non-whitespace index at or after i
    start = np.clip(offs[:, 0], 0, n - 1)
    first = nxt[start]
    pos = np.where(first < np.maximum(offs[:, 1], offs[:, 0] + 1), first, start)
    return lab[np.clip(pos, 0, n - 1)]
