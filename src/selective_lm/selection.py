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

``per_row=True`` selects within each row instead (the last dimension is one sequence): k_r =
round(ratio × the row's valid positions), at least 1 in a row with any valid position, and the std
of ``temperature_unit="std"`` is the row's (``selection_scope: sequence`` of training).

``soft_weights`` and ``dft_weights`` give every valid position a weight instead of a 0/1 mask
(``weighting: soft`` and ``dft`` of training): see their docstrings for the exact formulas.

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
    """Sample standard deviation of ``flat`` over the ``ok`` positions of each row (the last dimension), as a
    device tensor with that dimension kept (no host sync); a floor of 1e-6 keeps a constant score set finite."""
    w = ok.to(flat.dtype)
    n = w.sum(-1, keepdim=True)
    mean = (flat * w).sum(-1, keepdim=True) / n.clamp(min=1.0)
    var = ((flat - mean).square() * w).sum(-1, keepdim=True) / (n - 1.0).clamp(min=1.0)
    return var.sqrt().clamp(min=1e-6)


def _rows(t: torch.Tensor, per_row: bool) -> torch.Tensor:
    """[R, N]: one row per selection set (every row of the last dimension, or the whole tensor as one)."""
    return t.reshape(-1, t.shape[-1] if t.dim() else 1) if per_row else t.reshape(1, -1)


def _ranks(keys: torch.Tensor) -> torch.Tensor:
    """The 0-based descending rank of every key within its row (ties: the earlier position first)."""
    order = torch.argsort(keys, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(keys.shape[-1], device=keys.device).expand_as(order))
    return rank


def select_tokens(scores: torch.Tensor, ratio: float, strategy: str = "topk", *,
                  valid: torch.Tensor | None = None, temperature: float = 1.0,
                  generator: torch.Generator | None = None, temperature_unit: str = "std",
                  per_row: bool = False) -> torch.Tensor:
    """Boolean mask of the selected positions, same shape as ``scores``.

    Selection runs over all valid positions of ``scores`` (``per_row``: within each row of its last
    dimension, k per row). To select over a batch split across micro-batches or ranks (as the paper's
    "tokens in a batch"), use :class:`selective_lm.objective.Objective`.
    """
    _check(scores, ratio, strategy, valid, temperature, temperature_unit)
    flat = _rows(scores.detach().float(), per_row)
    ok = torch.ones_like(flat, dtype=torch.bool) if valid is None else _rows(valid, per_row).bool()
    if strategy == "topk":
        keys = flat
    elif strategy == "random":  # one draw per position of the whole tensor, in its order
        keys = _uniform(flat.shape, flat.device, generator)
    else:  # stochastic: Gumbel-top-k == sampling without replacement ∝ exp(score / τ)
        u = _uniform(flat.shape, flat.device, generator).clamp_(min=1e-20, max=1.0 - 1e-7)
        tau = temperature * score_std(flat, ok) if temperature_unit == "std" else temperature
        keys = torch.where(ok, flat, torch.zeros_like(flat)) / tau - torch.log(-torch.log(u))
    keys = torch.where(ok, keys, torch.full_like(keys, float("-inf")))
    k = num_selected(ok.sum(-1, keepdim=True), ratio)
    return ((_ranks(keys) < k) & ok).reshape(scores.shape)


def soft_weights(scores: torch.Tensor, ratio: float, *, valid: torch.Tensor | None = None, temperature: float = 1.0,
                 temperature_unit: str = "std", per_row: bool = False) -> torch.Tensor:
    """Soft selection: a weight in [0, 1] per position whose sum over the valid ones is exactly ratio × n_valid.

    w_i = min(1, c · exp(s_i / τ)) over the valid positions (0 elsewhere), where c > 0 is the one constant
    that makes Σ w_i = k = ratio × n_valid (no rounding): a softmax of the scores scaled to a total mass
    of k, with the weights that would exceed 1 capped at 1 and their surplus spread over the others in
    proportion to their own softmax weight (the projection onto {0 ≤ w ≤ 1, Σ w = k} along the softmax).
    The weights are monotone in the score; τ → 0 gives the top-k mask (the top ⌊k⌋ get 1, the next one
    k − ⌊k⌋); τ → ∞ gives every valid position the weight ratio; ratio 1 gives every valid position 1.
    τ is in units of the standard deviation of the valid scores (``temperature_unit="std"``, as for
    stochastic selection) or in raw nats (``"nats"``). ``per_row``: each row of the last dimension is its
    own set (its own c, mass ratio × its valid positions, and std).

    Exact solution, no iteration and no host sync: with the valid scores sorted in descending order, the
    number j of capped positions is the first j with (k − j) · e_(j) ≤ Σ_{i≥j} e_(i) (computed in log space,
    float64), and c = (k − j) / Σ_{i≥j} e_(i).
    """
    _check(scores, ratio, "topk", valid, 1.0, temperature_unit)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat = _rows(scores.detach().double(), per_row)
    ok = torch.ones_like(flat, dtype=torch.bool) if valid is None else _rows(valid, per_row).bool()
    tau = temperature * score_std(flat, ok) if temperature_unit == "std" else temperature
    s = torch.where(ok, flat / tau, torch.full_like(flat, float("-inf")))
    s_sorted, order = torch.sort(s, dim=-1, descending=True, stable=True)
    # tail[j] = log Σ_{i≥j} exp(s_(i)): a reversed cumulative logsumexp
    tail = torch.logcumsumexp(s_sorted.flip(-1), -1).flip(-1)
    k = ok.sum(-1, keepdim=True).double() * ratio
    j = torch.arange(flat.shape[-1], device=flat.device, dtype=torch.float64)
    # the first j whose largest uncapped weight c · e_(j) is ≤ 1; invalid positions (s = −inf) always qualify,
    # and one with j ≤ ⌊k⌋ ≤ n_valid exists, so a sentinel at the end is never the answer unless all are valid
    fits = (j <= k) & (torch.log((k - j).clamp(min=0.0)) + s_sorted <= tail)
    fits = torch.cat([fits, fits.new_ones(fits.shape[0], 1)], -1)
    n_cap = fits.to(torch.int8).argmax(-1, keepdim=True)
    tail = torch.cat([tail, tail.new_full((tail.shape[0], 1), float("-inf"))], -1)
    log_c = torch.log((k - n_cap).clamp(min=0.0)) - tail.gather(-1, n_cap)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    w = torch.where(rank < n_cap, torch.ones_like(s), torch.exp(log_c + s).nan_to_num(0.0).clamp(max=1.0))
    return torch.where(ok, w, torch.zeros_like(w)).float().reshape(scores.shape)


def dft_weights(losses: torch.Tensor, *, valid: torch.Tensor | None = None, normalise: bool = False) -> torch.Tensor:
    """Reference-free weights of Dynamic Fine-Tuning (DFT, arXiv 2508.05629): w_i = p_i over the valid positions,
    0 elsewhere, with p_i = exp(−L_i) the model's own (detached) probability of the target token.

    With the valid count as the denominator (training's ``weighting: dft``) the loss is DFT's and TRL's
    ``loss_type="dft"``: the mean over valid tokens of sg(p)·L. ``normalise=True`` gives the earlier form
    w_i = p_i / mean(p): mean weight 1, each weight at most 1 / mean(p) (``benchmarks/dft_divergence.py``
    compares the two in training; both diverge, so training offers the published one). Both are
    computed in float64 (the normalised one as exp(−L + log n − logsumexp(−L)), so no underflow when every
    p is tiny).
    """
    if valid is not None and valid.shape != losses.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)} but losses have {tuple(losses.shape)}")
    flat = losses.detach().reshape(-1).double()
    ok = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.reshape(-1).bool()
    neg = torch.where(ok, -flat, torch.full_like(flat, float("-inf")))
    if normalise:  # p / mean(p)
        neg = neg + torch.log(ok.sum().double().clamp(min=1.0)) - torch.logsumexp(neg, 0)
    w = torch.exp(neg).nan_to_num(0.0)
    return torch.where(ok, w, torch.zeros_like(w)).float().reshape(losses.shape)
