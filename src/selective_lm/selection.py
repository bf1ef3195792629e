"""Token selection for Selective Language Modeling.

``select_tokens`` picks exactly k = round(ratio × n_valid) positions (round half up, at least 1
when any position is valid) among the valid ones of the tensor it is given:

- ``topk``: the k highest scores (excess losses);
- ``random``: k positions uniformly at random (the control);
- ``stochastic``: k positions sampled without replacement with probability ∝ exp(score / τ),
  via the Gumbel-top-k trick (exact for sequential sampling without replacement). With
  ``temperature_unit="std"`` (the default) τ is in units of the standard deviation of the valid
  scores of the selection set, so τ = 1 means the same sharpness whatever the loss scale; with
  ``"nats"`` it is in raw nats.

Everything stays on the device: k is a tensor, and selection is a rank comparison, so there is
no host synchronisation.
"""
from __future__ import annotations

import torch

from .config import STRATEGIES, TEMPERATURE_UNITS


def num_selected(n_valid: torch.Tensor | int, ratio: float) -> torch.Tensor:
    """k = round(ratio × n_valid), rounding halves up, at least 1 when n_valid > 0."""
    n = torch.as_tensor(n_valid)
    k = torch.floor(n.to(torch.float64) * ratio + 0.5).to(torch.long)
    return torch.where(n > 0, k.clamp(min=1), torch.zeros_like(k))


def _check(scores: torch.Tensor, ratio: float, strategy: str, valid: torch.Tensor | None,
           temperature: float, temperature_unit: str = "std") -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if valid is not None and valid.shape != scores.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)} but scores have {tuple(scores.shape)}")
    if strategy == "stochastic" and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature_unit not in TEMPERATURE_UNITS:
        raise ValueError(f"unknown temperature_unit {temperature_unit!r}: choose one of {', '.join(TEMPERATURE_UNITS)}")


def _uniform(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device.type != device.type:
        u = torch.rand(shape, generator=generator, dtype=torch.float32)
        return u.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else u.to(device)
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)


def score_std(flat: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation of ``flat`` over the ``ok`` positions, as a device scalar (no host sync);
    a floor of 1e-6 keeps a constant score set finite."""
    w = ok.to(flat.dtype)
    n = w.sum()
    mean = (flat * w).sum() / n.clamp(min=1.0)
    var = ((flat - mean).square() * w).sum() / (n - 1.0).clamp(min=1.0)
    return var.sqrt().clamp(min=1e-6)


def select_tokens(scores: torch.Tensor, ratio: float, strategy: str = "topk", *,
                  valid: torch.Tensor | None = None, temperature: float = 1.0,
                  generator: torch.Generator | None = None, temperature_unit: str = "std") -> torch.Tensor:
    """Boolean mask of the selected positions, same shape as ``scores``.

    Selection runs over all valid positions of ``scores``. To select over a batch split across
    micro-batches or ranks (as the paper's "tokens in a batch"), use :class:`selective_lm.objective.Objective`.
    """
    _check(scores, ratio, strategy, valid, temperature, temperature_unit)
    flat = scores.detach().reshape(-1).float()
    ok = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.reshape(-1).bool()
    if strategy == "topk":
        keys = flat
    elif strategy == "random":
        keys = _uniform(flat.shape, flat.device, generator)
    else:  # stochastic: Gumbel-top-k == sampling without replacement ∝ exp(score / τ)
        u = _uniform(flat.shape, flat.device, generator).clamp_(min=1e-20, max=1.0 - 1e-7)
        tau = temperature * score_std(flat, ok) if temperature_unit == "std" else temperature
        keys = torch.where(ok, flat, torch.zeros_like(flat)) / tau - torch.log(-torch.log(u))
    keys = torch.where(ok, keys, torch.full_like(keys, float("-inf")))
    order = torch.argsort(keys, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    k = num_selected(ok.sum(), ratio)
    return ((rank < k) & ok).reshape(scores.shape)
