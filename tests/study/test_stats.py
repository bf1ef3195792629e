"""selective_lm.study.stats on toy numbers, against scipy and hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from selective_lm.study import stats


def test_summary_std_is_none_for_one_value():
    assert stats.summary([2.0]) == {"mean": 2.0, "std": None, "n": 1, "values": [2.0]}
    s = stats.summary([1.0, 2.0, 3.0, None, float("nan")])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert stats.summary([]) == {"mean": None, "std": None, "n": 0, "values": []}


def test_welch_p_matches_hand_computation():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    c = stats.compare(a, b, lower_is_better=True)
    # by hand: var a = 1, var b = 4, se = sqrt(1/3 + 4/3), t = (2 - 6) / se, Welch df
    se = math.sqrt(1 / 3 + 4 / 3)
    t = -4 / se
    df = (1 / 3 + 4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    assert c["p"] == pytest.approx(sps.t.cdf(t, df))
    assert c["p_two_sided"] == pytest.approx(2 * sps.t.cdf(t, df))
    assert c["p"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    assert c["diff"] == -4.0
    half = sps.t.ppf(0.975, df) * se
    assert c["ci95"] == pytest.approx([-4 - half, -4 + half])
    sp = math.sqrt((2 * 1 + 2 * 4) / 4)
    assert c["effect_size"] == pytest.approx(-4 / sp * (1 - 3 / (4 * 6 - 9)))
    assert c["verdict"] == stats.HOLDS


def test_verdict_rules():
    one = stats.compare([1.0], [2.0], True)
    assert one["verdict"] == stats.NOT_TESTED and "1 seed" in one["verdict_text"] and one["a"]["std"] is None
    two = stats.compare([1.0, 1.1], [2.0, 2.1], True)
    assert two["verdict"] == stats.NOT_TESTED and "2 seeds" in two["verdict_text"] and two["p"] is not None
    sig = stats.compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], True)
    assert sig["verdict"] == stats.HOLDS and sig["p"] < 0.05
    wrong = stats.compare([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], True)
    assert wrong["verdict"] == stats.FAILS and "opposite" in wrong["verdict_text"]
    noise = stats.compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], True)
    assert noise["verdict"] == stats.NOT_SIG and f"p = {noise['p']:.3g}" in noise["verdict_text"]
    higher = stats.compare([0.5, 0.52, 0.51], [0.3, 0.31, 0.29], False)
    assert higher["verdict"] == stats.HOLDS and higher["direction"] == "a > b"


def test_one_sample_speedup():
    s = stats.one_sample([1.5, 1.6, 1.7], 1.0)
    ref = sps.ttest_1samp([1.5, 1.6, 1.7], 1.0, alternative="greater")
    assert s["p"] == pytest.approx(ref.pvalue) and s["verdict"] == stats.HOLDS
    ci = sps.ttest_1samp([1.5, 1.6, 1.7], 1.0).confidence_interval(0.95)
    assert s["ci95"] == pytest.approx([ci.low, ci.high])
    assert stats.one_sample([1.5], 1.0)["verdict"] == stats.NOT_TESTED
    assert stats.one_sample([0.5, 0.6, 0.55], 1.0)["verdict"] == stats.FAILS


def test_wilson_and_floor():
    w = stats.wilson(3, 200)
    ci = sps.binomtest(3, 200).proportion_ci(method="wilson")
    assert w["accuracy"] == 0.015 and w["n"] == 200 and w["ci95"] == pytest.approx([ci.low, ci.high])
    p = stats.pooled_accuracy([{"correct": 1, "n": 100}, {"correct": 2, "n": 100}])
    assert p["correct"] == 3 and p["n"] == 200
    floor, why = stats.at_floor({"clm": stats.wilson(1, 400), "slm": stats.wilson(200, 400)})
    assert floor and "CLM" in why
    floor, why = stats.at_floor({"clm": stats.wilson(8, 200), "slm": stats.wilson(9, 200)})
    assert floor and "below 5%" in why
    assert stats.at_floor({"clm": stats.wilson(60, 200), "slm": stats.wilson(90, 200)}) == (False, "")


def test_pearson():
    x, y = [1, 2, 3, 4], [2.0, 4.1, 5.9, 8.2]
    r = stats.pearson(x, y)
    ref = sps.pearsonr(x, y)
    assert r["r"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue) and r["n"] == 4
    assert stats.pearson([1, 2], [1, 2])["r"] is None  # < 3 points
    assert stats.pearson([1, 1, 1], [1, 2, 3])["r"] is None  # constant side
    assert np.isclose(stats.pearson([1, 2, None, 3], [1, 2, 5, 3])["r"], 1.0)
