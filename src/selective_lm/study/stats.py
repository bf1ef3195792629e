"""Statistics of the study report: group summaries over seeds, Welch tests, effect sizes, Wilson intervals, verdicts.

Each seed is a whole pipeline (corpus sample, base, reference, arms), so the unit of replication is the seed:
a group (arm kind + strategy + ratio) holds one final value per seed. Rules (the report states them):

* a claim **holds** only if the one-sided Welch p (in the claimed direction) is < :data:`ALPHA` and every
  group has at least :data:`MIN_SEEDS` seeds;
* with fewer seeds the verdict is **not tested (n seeds)**, whatever the numbers;
* a difference significant in the *opposite* direction (one-sided p < ALPHA the other way) **does not hold**;
* otherwise **not significant (p = ...)**.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
MIN_SEEDS = 3
FLOOR = 0.05  # accuracy below this (upper Wilson bound of CLM, or every arm's mean) cannot test a claim

HOLDS, FAILS, NOT_SIG, NOT_TESTED = "holds", "does not hold", "not significant", "not tested"
RULES = (f"A comparison holds only if the one-sided Welch t-test (unequal variances, seeds as samples) in the "
         f"claimed direction gives p < {ALPHA:g} and both groups have at least {MIN_SEEDS} seeds; with fewer seeds "
         f"it is 'not tested'; a difference significant (p < {ALPHA:g}) in the opposite direction 'does not hold'; "
         "otherwise 'not significant'. Effect size: Hedges' g (bias-corrected Cohen's d, pooled std). Mean "
         "difference with a two-sided 95% Welch confidence interval. Accuracy is a share of n questions with a "
         f"Wilson 95% interval; below {FLOOR:.0%} accuracy cannot test a claim.")


def finite(values) -> list[float]:
    return [float(x) for x in values if x is not None and isinstance(x, (int, float)) and math.isfinite(x)]


def summary(values) -> dict:
    """Mean, sample std (None for n < 2: no variance estimate, never 0) and n of the finite values."""
    v = finite(values)
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n": len(v), "values": v}


def hedges_g(a, b) -> float | None:
    """Hedges' g of a - b (pooled sample std, small-sample correction); None when undefined."""
    a, b = np.asarray(finite(a)), np.asarray(finite(b))
    n1, n2 = a.size, b.size
    if n1 < 2 or n2 < 2:
        return None
    sp = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    if sp == 0:
        return None
    return float((a.mean() - b.mean()) / sp * (1 - 3 / (4 * (n1 + n2) - 9)))


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: scipy warns and returns nan, we report None
        return fn(*args, **kw)


def _num(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def verdict(p_claim: float | None, p_other: float | None, n_min: int) -> tuple[str, str]:
    """(code, text) from the one-sided p in the claimed direction, the one the other way and the smaller n."""
    if n_min < MIN_SEEDS:
        return NOT_TESTED, f"not tested ({n_min} seed{'s' if n_min != 1 else ''}; needs ≥ {MIN_SEEDS})"
    if p_claim is None:
        return NOT_SIG, "not significant (p undefined: no variance in either group)"
    if p_claim < ALPHA:
        return HOLDS, "holds"
    if p_other is not None and p_other < ALPHA:
        return FAILS, f"does not hold (significant in the opposite direction, p = {p_other:.3g})"
    return NOT_SIG, f"not significant (p = {p_claim:.3g})"


def compare(a, b, lower_is_better: bool) -> dict:
    """Claim "a is better than b" over seeds: Welch one-sided p, Hedges' g, mean difference a - b with 95% CI."""
    sa, sb = summary(a), summary(b)
    out = {"a": sa, "b": sb, "direction": "a < b" if lower_is_better else "a > b", "p": None, "p_opposite": None,
           "p_two_sided": None, "effect_size": hedges_g(a, b), "effect_size_kind": "Hedges' g (a - b)",
           "diff": None, "ci95": None}
    if sa["n"] and sb["n"]:
        out["diff"] = sa["mean"] - sb["mean"]
    if sa["n"] >= 2 and sb["n"] >= 2:
        claim, other = ("less", "greater") if lower_is_better else ("greater", "less")
        out["p"] = _num(_quiet(sps.ttest_ind, sa["values"], sb["values"], equal_var=False, alternative=claim).pvalue)
        out["p_opposite"] = _num(_quiet(sps.ttest_ind, sa["values"], sb["values"], equal_var=False,
                                        alternative=other).pvalue)
        two = _quiet(sps.ttest_ind, sa["values"], sb["values"], equal_var=False)
        out["p_two_sided"] = _num(two.pvalue)
        ci = _quiet(two.confidence_interval, 0.95)
        out["ci95"] = [_num(ci.low), _num(ci.high)] if _num(ci.low) is not None else None
    out["verdict"], out["verdict_text"] = verdict(out["p"], out["p_opposite"], min(sa["n"], sb["n"]))
    return out


def holm(ps: list) -> list:
    """Holm–Bonferroni adjusted p-values (None stays None; m = the number of p-values given)."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    out, run = [None] * len(ps), 0.0
    for rank, i in enumerate(idx):
        run = max(run, min(1.0, (len(idx) - rank) * ps[i]))
        out[i] = run
    return out


def one_sample(values, null: float, greater: bool = True) -> dict:
    """Claim "mean > null" (or < null) over seeds: one-sample t-test, 95% CI of the mean, Cohen's d."""
    s = summary(values)
    out = {**s, "null": null, "p": None, "p_opposite": None, "ci95": None, "effect_size": None,
           "effect_size_kind": f"Cohen's d (mean - {null:g}) / std"}
    if s["n"] >= 2:
        t = _quiet(sps.ttest_1samp, s["values"], null, alternative="greater" if greater else "less")
        o = _quiet(sps.ttest_1samp, s["values"], null, alternative="less" if greater else "greater")
        out["p"], out["p_opposite"] = _num(t.pvalue), _num(o.pvalue)
        ci = _quiet(_quiet(sps.ttest_1samp, s["values"], null).confidence_interval, 0.95)
        out["ci95"] = [_num(ci.low), _num(ci.high)] if _num(ci.low) is not None else None
        out["effect_size"] = (s["mean"] - null) / s["std"] if s["std"] else None
    out["verdict"], out["verdict_text"] = verdict(out["p"], out["p_opposite"], s["n"])
    return out


def wilson(correct: int | None, n: int | None) -> dict:
    """Share correct / n with its Wilson 95% interval (None when n is 0 or unknown)."""
    if not n or correct is None:
        return {"accuracy": None, "correct": correct, "n": n or 0, "ci95": None}
    ci = sps.binomtest(int(correct), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return {"accuracy": correct / n, "correct": int(correct), "n": int(n), "ci95": [float(ci.low), float(ci.high)]}


def pooled_accuracy(points) -> dict:
    """Accuracy over all questions of several evaluations ({correct, n} each): pooled counts, Wilson 95%."""
    pts = [p for p in points if p and p.get("n")]
    return wilson(sum(int(p["correct"]) for p in pts), sum(int(p["n"]) for p in pts)) if pts else wilson(None, 0)


def at_floor(accs: dict[str, dict], baseline: str = "clm") -> tuple[bool, str]:
    """Accuracy at floor: the baseline's upper Wilson bound < FLOOR, or every group's accuracy < FLOOR."""
    base = accs.get(baseline) or {}
    if base.get("ci95") and base["ci95"][1] < FLOOR:
        return True, f"CLM's accuracy is at floor (upper 95% bound {base['ci95'][1]:.1%} < {FLOOR:.0%})"
    vals = [a["accuracy"] for a in accs.values() if a and a.get("accuracy") is not None]
    if vals and max(vals) < FLOOR:
        return True, f"every arm's accuracy is below {FLOOR:.0%}"
    return (False, "") if vals else (True, "no accuracy measured")


def pearson(x, y) -> dict:
    """Pearson r with its two-sided p over the pairs where both are present; None with < 3 pairs or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    out = {"r": None, "p": None, "n": len(pairs)}
    if len(pairs) >= 3:
        a, b = np.array(pairs, dtype=float).T
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            res = sps.pearsonr(a, b)
            out.update(r=_num(res.statistic), p=_num(res.pvalue))
    return out


def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p >= 1e-4 else "< 1e-4")


def detectable(a, b, power: float = 0.8) -> dict:
    """The smallest difference of means a one-sided Welch test over these seeds can call significant, from the
    groups' own spread: ``at_p05`` = t(0.95, ν)·SE (an observed difference must exceed it for p < ALPHA) and
    ``at_power`` = (t(0.95, ν) + t(power, ν))·SE (a true difference this large is found with that power);
    SE = sqrt(s_a²/n_a + s_b²/n_b), ν the Welch–Satterthwaite degrees of freedom."""
    sa, sb = summary(a), summary(b)
    out = {"se": None, "df": None, "at_p05": None, "at_power": None, "power": power, "n": [sa["n"], sb["n"]]}
    if sa["n"] < 2 or sb["n"] < 2:
        return out
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    se = math.sqrt(va + vb)
    if se == 0:
        return out
    df = (va + vb) ** 2 / (va ** 2 / (sa["n"] - 1) + vb ** 2 / (sb["n"] - 1))
    t_alpha = float(sps.t.ppf(1 - ALPHA, df))
    out.update(se=se, df=df, at_p05=t_alpha * se, at_power=(t_alpha + float(sps.t.ppf(power, df))) * se)
    return out
