"""Data efficiency: how many training tokens a run needs to match the baseline.

The Rho-1 paper reports that selective language modeling reaches the baseline's
final quality with 5-10x fewer tokens. :func:`data_efficiency` measures that ratio
from two eval curves (tokens seen, eval loss).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _curve(
    tokens: Sequence[float], losses: Sequence[float], name: str
) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(tokens, dtype=np.float64)
    ls = np.asarray(losses, dtype=np.float64)
    if t.ndim != 1 or ls.ndim != 1:
        raise ValueError(f"{name}: tokens and losses must be 1-D sequences")
    if t.size == 0:
        raise ValueError(f"{name}: curve is empty")
    if t.size != ls.size:
        raise ValueError(f"{name}: {t.size} token counts but {ls.size} losses")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(ls))):
        raise ValueError(f"{name}: curve contains NaN or infinite values")
    if np.any(np.diff(t) < 0):
        raise ValueError(f"{name}: token counts must be non-decreasing")
    return t, ls


def tokens_to_reach(tokens: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """Tokens at which the eval curve first reaches ``loss <= target``.

    Between the last eval point above the target and the first at or below it the
    curve is interpolated linearly. If the first point already satisfies the target
    its token count is returned.

    Returns:
        The (interpolated) token count, or ``None`` if the curve never reaches it.
    """
    if not math.isfinite(target):
        raise ValueError(f"target must be finite, got {target}")
    t, ls = _curve(tokens, losses, "curve")
    hits = np.flatnonzero(ls <= target)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(t[0])
    t0, t1, l0, l1 = t[i - 1], t[i], ls[i - 1], ls[i]
    # l0 > target >= l1, so l0 - l1 > 0.
    frac = (l0 - target) / (l0 - l1)
    return float(t0 + frac * (t1 - t0))


def data_efficiency(
    baseline_tokens: Sequence[float],
    baseline_losses: Sequence[float],
    run_tokens: Sequence[float],
    run_losses: Sequence[float],
) -> dict:
    """Compare a run's eval curve to the baseline's.

    Returns:
        ``{"target": baseline final loss, "tokens_baseline": baseline final tokens,
        "tokens_run": tokens the run needs to reach target or None,
        "speedup": tokens_baseline / tokens_run or None if not reached}``.
        ``speedup`` is ``inf`` if the run starts at 0 tokens already at the target.
    """
    bt, bl = _curve(baseline_tokens, baseline_losses, "baseline")
    _curve(run_tokens, run_losses, "run")
    target = float(bl[-1])
    tokens_baseline = float(bt[-1])
    tokens_run = tokens_to_reach(run_tokens, run_losses, target)
    if tokens_run is None:
        speedup = None
    elif tokens_run == 0:
        speedup = math.inf
    else:
        speedup = tokens_baseline / tokens_run
    return {
        "target": target,
        "tokens_baseline": tokens_baseline,
        "tokens_run": tokens_run,
        "speedup": speedup,
    }
