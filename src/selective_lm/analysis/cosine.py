"""Cosine similarity between the weight-update directions of different runs.

An update is ``theta_final - theta_base`` (:func:`full_delta`) for full fine-tuning or
the LoRA product ``B @ A * scaling`` (:func:`lora_delta`) for adapters. Updates are
flattened in sorted-key order (:func:`flatten_delta`) and compared pairwise
(:func:`cosine_matrix`). All arithmetic is float64.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ..files import UserError, read_json

_PEFT_PREFIX = "base_model.model."
_LINEAR_RE = re.compile(r"^(?P<mod>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_EMBED_RE = re.compile(
    r"^(?P<mod>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))?$"
)


def full_delta(
    base_state: Mapping[str, Tensor], run_state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Return ``run - base`` (float64) for every floating-point tensor present in both.

    Raises:
        ValueError: no common floating-point keys, or a common key's shapes differ.
    """
    common = sorted(set(base_state) & set(run_state))
    out: dict[str, Tensor] = {}
    for key in common:
        base, run = base_state[key], run_state[key]
        if not (torch.is_floating_point(base) and torch.is_floating_point(run)):
            continue
        if base.shape != run.shape:
            raise ValueError(
                f"shape mismatch for {key!r}: base {tuple(base.shape)} vs run {tuple(run.shape)}"
            )
        out[key] = run.detach().to("cpu", torch.float64) - base.detach().to("cpu", torch.float64)
    if not out:
        raise ValueError("base_state and run_state share no floating-point parameters")
    return out


def _module_name(raw: str) -> str:
    return raw[len(_PEFT_PREFIX) :] if raw.startswith(_PEFT_PREFIX) else raw


def lora_delta(
    adapter_state: Mapping[str, Tensor], alpha: float, r: int, *, use_rslora: bool = False
) -> dict[str, Tensor]:
    """Return the dense update ``Delta W = B @ A * scaling`` of each LoRA-adapted module.

    Accepts PEFT state-dict keys with or without the adapter name
    (``...q_proj.lora_A.weight`` or ``...q_proj.lora_A.default.weight``) and LoRA
    embeddings (``lora_embedding_A``/``lora_embedding_B``, whose update is
    ``(B @ A).T``). Other keys (e.g. ``modules_to_save``) are ignored.

    Args:
        adapter_state: PEFT adapter state dict.
        alpha: ``lora_alpha``.
        r: LoRA rank; must match every ``A``'s first dimension.
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.

    Returns:
        Module name (the ``base_model.model.`` prefix removed, e.g.
        ``"model.layers.0.self_attn.q_proj"``) -> float64 update with the shape of
        that module's ``weight``.
    """
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"r must be a positive int, got {r!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    scaling = alpha / math.sqrt(r) if use_rslora else alpha / r

    parts: dict[str, dict[str, Tensor]] = {}
    adapters: set[str | None] = set()
    for key, value in adapter_state.items():
        if "lora_magnitude_vector" in key:
            raise ValueError(f"DoRA adapters are not supported (found {key!r})")
        m = _LINEAR_RE.match(key) or _EMBED_RE.match(key)
        if m is None:
            continue
        adapters.add(m["adapter"])
        slot = parts.setdefault(_module_name(m["mod"]), {})
        kind = m["kind"]
        if kind in slot:
            raise ValueError(f"duplicate {kind} for module {m['mod']!r}")
        slot[kind] = value
    if not parts:
        raise ValueError("adapter_state contains no LoRA A/B weights")
    if len(adapters) > 1:
        names = sorted(str(a) for a in adapters)
        raise ValueError(f"adapter_state mixes several adapter names: {names}")

    out: dict[str, Tensor] = {}
    for name in sorted(parts):
        slot = parts[name]
        embed = "lora_embedding_A" in slot or "lora_embedding_B" in slot
        ka, kb = ("lora_embedding_A", "lora_embedding_B") if embed else ("lora_A", "lora_B")
        if ka not in slot or kb not in slot:
            raise ValueError(f"module {name!r} lacks {ka if ka not in slot else kb}")
        a = slot[ka].detach().to("cpu", torch.float64)
        b = slot[kb].detach().to("cpu", torch.float64)
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"module {name!r}: only 2-D LoRA factors are supported")
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(
                f"module {name!r}: factor shapes A{tuple(a.shape)} B{tuple(b.shape)} "
                f"do not match r={r}"
            )
        delta = (b @ a) * scaling
        out[name] = delta.T.contiguous() if embed else delta
    return out


def flatten_delta(delta: Mapping[str, Tensor], keys: Sequence[str] | None = None) -> Tensor:
    """Concatenate the flattened tensors of ``delta`` in sorted-key order (float64).

    Args:
        delta: name -> tensor.
        keys: subset of names to include (sorted before use); default all.
    """
    names = sorted(delta) if keys is None else sorted(keys)
    if not names:
        raise ValueError("nothing to flatten: no keys")
    missing = [k for k in names if k not in delta]
    if missing:
        raise ValueError(f"keys missing from delta: {missing[:5]}")
    return torch.cat([delta[k].detach().to("cpu", torch.float64).reshape(-1) for k in names])


def cosine_matrix(
    deltas: Mapping[str, Mapping[str, Tensor] | Tensor],
) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarity between the update vectors of several runs.

    Args:
        deltas: run name -> either a delta dict (all runs must have the same key set
            and per-key shapes) or an already flattened 1-D tensor (all of equal length).

    Returns:
        ``(names, matrix)`` with names in input order and ``matrix[i, j]`` the cosine
        between run ``i`` and run ``j`` (float64, clipped to ``[-1, 1]``).

    Raises:
        ValueError: no runs, mismatched key sets/shapes/lengths, or a zero vector.
    """
    names = list(deltas)
    if not names:
        raise ValueError("cosine_matrix needs at least one run")
    first = deltas[names[0]]
    vectors: list[Tensor] = []
    if isinstance(first, Mapping):
        ref_keys = set(first)
        for name in names:
            d = deltas[name]
            if not isinstance(d, Mapping):
                raise ValueError(f"run {name!r} is a tensor but {names[0]!r} is a delta dict")
            if set(d) != ref_keys:
                only_ref = sorted(ref_keys - set(d))[:3]
                only_run = sorted(set(d) - ref_keys)[:3]
                raise ValueError(
                    f"key mismatch between {names[0]!r} and {name!r}: "
                    f"only in {names[0]!r} {only_ref}, only in {name!r} {only_run}"
                )
            for key in ref_keys:
                if tuple(d[key].shape) != tuple(first[key].shape):
                    raise ValueError(f"shape mismatch for {key!r} between {names[0]!r} and {name!r}")
            vectors.append(flatten_delta(d))
    else:
        for name in names:
            d = deltas[name]
            if isinstance(d, Mapping):
                raise ValueError(f"run {name!r} is a delta dict but {names[0]!r} is a tensor")
            vectors.append(torch.as_tensor(d).detach().to("cpu", torch.float64).reshape(-1))
        lengths = {v.numel() for v in vectors}
        if len(lengths) != 1:
            raise ValueError(f"flattened update vectors have different lengths: {sorted(lengths)}")

    mat = torch.stack(vectors)
    norms = torch.linalg.vector_norm(mat, dim=1)
    for name, norm in zip(names, norms.tolist()):
        if norm == 0.0 or not math.isfinite(norm):
            raise ValueError(f"update vector of run {name!r} has zero or non-finite norm")
    unit = mat / norms[:, None]
    sims = (unit @ unit.T).clamp(-1.0, 1.0).numpy()
    return names, sims


def read_state(ckpt) -> dict:
    files = sorted(Path(ckpt).glob("model*.safetensors"))
    if not files:
        raise UserError(f"no model.safetensors in {ckpt}: pass a full checkpoint directory (HF save_pretrained)")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def checkpoint_delta(ckpt, base_state=None) -> tuple[torch.Tensor, str]:
    """Flattened update of a checkpoint dir: B·A·α/r for a PEFT adapter, else weights - ``base_state``."""
    d = Path(ckpt)
    if not d.is_dir():
        raise UserError(f"checkpoint directory not found: {d}: pass a run's final/ or checkpoints/step_N/ dir")
    if (d / "adapter_model.safetensors").is_file():
        if not (d / "adapter_config.json").is_file():
            raise UserError(f"{d / 'adapter_config.json'} is missing: a LoRA adapter dir needs it")
        cfg = read_json(d / "adapter_config.json")
        delta = lora_delta(load_file(str(d / "adapter_model.safetensors")), float(cfg.get("lora_alpha", cfg["r"])),
                           int(cfg["r"]), use_rslora=bool(cfg.get("use_rslora", False)))
        return flatten_delta(delta).float(), "lora"
    if base_state is None:
        raise UserError(f"{d} is a full checkpoint: pass the base checkpoint it started from (--base DIR)")
    return flatten_delta(full_delta(base_state, read_state(d))).float(), "full"
