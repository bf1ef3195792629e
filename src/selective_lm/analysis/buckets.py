"""High/low loss bucket transitions between two models on the same tokens.

A token is *high* when its loss is strictly greater than a threshold, usually the
70% quantile of the causal-LM baseline's per-token losses
(:func:`high_low_threshold`). :func:`bucket_transitions` counts how tokens move
between the buckets from a ``before`` model to an ``after`` model.
"""
from __future__ import annotations

import numpy as np

TRANSITIONS: tuple[str, str, str, str] = ("H→H", "L→H", "H→L", "L→L")
"""Transition names: first letter is the bucket before, second the bucket after."""


def _finite_array(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def high_low_threshold(baseline_losses: np.ndarray, quantile: float = 0.7) -> float:
    """Return the ``quantile`` of the baseline's per-token losses (linear interpolation).

    Args:
        baseline_losses: per-token losses of the baseline model, any shape.
        quantile: in ``[0, 1]``; the default 0.7 marks the top 30% as high loss.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    arr = _finite_array(baseline_losses, "baseline_losses")
    return float(np.quantile(arr.ravel(), quantile))


def bucket_transitions(before: np.ndarray, after: np.ndarray, threshold: float) -> dict:
    """Count tokens moving between the high (loss > threshold) and low buckets.

    Args:
        before: per-token losses of the first model.
        after: per-token losses of the second model on the same tokens (same shape).
        threshold: bucket boundary; a loss equal to it counts as low.

    Returns:
        ``{"n": int, "threshold": float, "counts": {name: int},
        "shares": {name: float}}`` with names from :data:`TRANSITIONS`
        (``"H→L"``: before > threshold and after <= threshold, etc.).
    """
    b = _finite_array(before, "before")
    a = _finite_array(after, "after")
    if b.shape != a.shape:
        raise ValueError(f"before and after shapes differ: {b.shape} vs {a.shape}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    hb = b > threshold
    ha = a > threshold
    counts = {
        "H→H": int(np.count_nonzero(hb & ha)),
        "L→H": int(np.count_nonzero(~hb & ha)),
        "H→L": int(np.count_nonzero(hb & ~ha)),
        "L→L": int(np.count_nonzero(~hb & ~ha)),
    }
    n = int(b.size)
    return {
        "n": n,
        "threshold": float(threshold),
        "counts": counts,
        "shares": {name: counts[name] / n for name in TRANSITIONS},
    }
