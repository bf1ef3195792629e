"""Token loss dynamics across checkpoints (Rho-1 paper, section 2.1 and appendix B.1).

Each token's loss over checkpoints ``x = 0..n`` is summarised by a least-squares
line ``l(x) ~ a*x + b``.  With ``L_start = b``, ``L_end = a*n + b`` and
``delta = L_end - L_start`` a token is

* ``"H→L"`` when ``delta < -threshold`` (the token is being learned),
* ``"L→H"`` when ``delta > threshold`` (the loss goes up),
* otherwise ``"L→L"`` when its actual loss at the last checkpoint is at most the
  mean loss of all tokens at the last checkpoint, else ``"H→H"``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CATEGORIES: tuple[str, str, str, str] = ("H→H", "L→H", "H→L", "L→L")
"""Category names; the integer code of a category is its index in this tuple."""

HH, LH, HL, LL = 0, 1, 2, 3


@dataclass
class DynamicsResult:
    """Outcome of :func:`classify_dynamics`.

    Attributes:
        categories: int8 array ``[N]`` of codes into :data:`CATEGORIES`.
        shares: category name -> fraction of tokens (sums to 1).
        counts: category name -> number of tokens.
        l_start: fitted loss at the first checkpoint, ``[N]``.
        l_end: fitted loss at the last checkpoint, ``[N]``.
        delta: ``l_end - l_start``, ``[N]``.
        losses: the input losses as float64, ``[C, N]``.
        last_mean: mean actual loss over all tokens at the last checkpoint.
        threshold: the threshold used.
    """

    categories: np.ndarray
    shares: dict[str, float]
    counts: dict[str, int]
    l_start: np.ndarray
    l_end: np.ndarray
    delta: np.ndarray
    losses: np.ndarray
    last_mean: float
    threshold: float


def _fit_lines(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised least-squares slope ``a`` and intercept ``b`` for every column."""
    c = losses.shape[0]
    x = np.arange(c, dtype=np.float64)
    xc = x - x.mean()
    mean_l = losses.mean(axis=0)
    slope = (xc @ (losses - mean_l)) / float(xc @ xc)
    intercept = mean_l - slope * x.mean()
    return slope, intercept


def classify_dynamics(losses: np.ndarray, threshold: float = 0.2) -> DynamicsResult:
    """Classify every token's loss trajectory into one of :data:`CATEGORIES`.

    Args:
        losses: array ``[C, N]`` of per-token losses at ``C >= 2`` checkpoints.
        threshold: non-negative margin on the fitted loss change ``delta``.

    Returns:
        A :class:`DynamicsResult`.
    """
    arr = np.asarray(losses, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"losses must be 2-D [checkpoints, tokens], got shape {arr.shape}")
    c, n_tok = arr.shape
    if c < 2:
        raise ValueError(f"need at least 2 checkpoints, got {c}")
    if n_tok < 1:
        raise ValueError("losses has no tokens")
    if not np.all(np.isfinite(arr)):
        raise ValueError("losses contains NaN or infinite values")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")

    slope, intercept = _fit_lines(arr)
    l_start = intercept
    l_end = slope * (c - 1) + intercept
    delta = l_end - l_start

    last = arr[-1]
    last_mean = float(last.mean())
    cats = np.where(last <= last_mean, LL, HH).astype(np.int8)
    cats[delta > threshold] = LH
    cats[delta < -threshold] = HL

    raw_counts = np.bincount(cats, minlength=len(CATEGORIES))
    counts = {name: int(raw_counts[i]) for i, name in enumerate(CATEGORIES)}
    shares = {name: counts[name] / n_tok for name in CATEGORIES}
    return DynamicsResult(
        categories=cats,
        shares=shares,
        counts=counts,
        l_start=l_start,
        l_end=l_end,
        delta=delta,
        losses=arr,
        last_mean=last_mean,
        threshold=float(threshold),
    )


def dynamics_examples(
    result: DynamicsResult,
    token_strings: Sequence[str],
    k: int = 5,
    rng_seed: int = 0,
    context: int = 8,
) -> dict[str, list[dict]]:
    """Pick up to ``k`` random example tokens per category.

    Args:
        result: output of :func:`classify_dynamics`.
        token_strings: the ``N`` decoded tokens, in the same order as the columns.
        k: examples per category (fewer if a category is smaller).
        rng_seed: seed for the reproducible random choice.
        context: number of neighbouring tokens on each side shown in ``"context"``.

    Returns:
        category name -> list of dicts with keys ``index`` (token position),
        ``token``, ``context`` (surrounding text, the token wrapped in ``[[ ]]``),
        ``l_start``, ``l_end``, ``delta`` (fitted) and ``trajectory`` (actual
        losses at every checkpoint). Examples are sorted by index.
    """
    n_tok = result.categories.shape[0]
    if len(token_strings) != n_tok:
        raise ValueError(f"token_strings has {len(token_strings)} entries, expected {n_tok}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    rng = np.random.default_rng(rng_seed)
    out: dict[str, list[dict]] = {}
    for code, name in enumerate(CATEGORIES):
        idx = np.flatnonzero(result.categories == code)
        if len(idx) > k:
            idx = np.sort(rng.choice(idx, size=k, replace=False))
        examples = []
        for i in idx.tolist():
            lo, hi = max(0, i - context), min(n_tok, i + context + 1)
            ctx = "".join(token_strings[lo:i]) + "[[" + token_strings[i] + "]]"
            ctx += "".join(token_strings[i + 1 : hi])
            examples.append(
                {
                    "index": int(i),
                    "token": token_strings[i],
                    "context": ctx,
                    "l_start": float(result.l_start[i]),
                    "l_end": float(result.l_end[i]),
                    "delta": float(result.delta[i]),
                    "trajectory": [float(v) for v in result.losses[:, i]],
                }
            )
        out[name] = examples
    return out
