"""Tests for selective_lm.study.collect (study layout v2) on a synthetic study directory.

:func:`build_study` writes a small but complete v2 study (one pipeline per seed, index.json version 2, test and
validation eval dumps, run dirs with metrics.jsonl and weights, provenance labels 0..6); test_report.py reuses it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_study import LABELS, NW, REF_TOKENS, SCORED_WINDOWS, SEQ, TOKENS_PER_CKPT, build_study

from selective_lm.analysis.efficiency import tokens_to_reach
from selective_lm.evaluate import load_token_losses
from selective_lm.files import UserError
from selective_lm.study import stats
from selective_lm.study.collect import RESULT_KEYS, StudyResults, collect


def _errors(obj, path="") -> list[str]:
    if isinstance(obj, dict):
        return ([f"{path}: {obj['error']}"] if "error" in obj else []) + [
            e for k, v in obj.items() for e in _errors(v, f"{path}.{k}")] + (
            [f"{path}: {obj['examples_error']}"] if "examples_error" in obj else [])
    return [e for i, v in enumerate(obj) for e in _errors(v, f"{path}[{i}]")] if isinstance(obj, list) else []


@pytest.fixture(scope="module")
def study(v2_study):
    return v2_study


@pytest.fixture(scope="module")
def res(study):
    return collect(study)


def test_collect_complete(res):
    assert list(res) == list(RESULT_KEYS)
    assert _errors(res) == []
    json.dumps(res, allow_nan=False)
    assert res["config"]["seeds"] == [0, 1, 2] and res["config"]["timings_total"] == pytest.approx(6.0)
    assert {"clm", "hq", "content", "reference", "base", "slm-topk-0.6", "slm-stochastic-0.3"} <= set(res["groups"])
    clm = res["groups"]["clm"]
    assert clm["target_loss"]["n"] == 3 and clm["own_pooled"]["n"] == 600 and len(clm["own_pooled"]["ci95"]) == 2
    curve = res["runs"]["clm-s0"]["curve"]
    assert len(curve) == 11 and curve[0]["tokens"] == 0 and curve[-1]["tokens"] == 10 * TOKENS_PER_CKPT
    assert curve[-1]["val_target_loss"] is not None and curve[-2]["val_target_loss"] is None
    assert [h["group"] for h in res["headline"]][:4] == ["reference", "clm", "hq", "content"]


def test_single_seed_std_is_null_and_not_tested(tmp_path):
    r = collect(build_study(tmp_path, seeds=(0,), ratios=(0.6,), strategies=("topk", "random"), checkpoints=4))
    assert r["groups"]["clm"]["target_loss"]["std"] is None
    a = next(c for c in r["claims"] if c["id"] == "a" and c["metric"] == "test target loss")
    assert a["verdict"] == stats.NOT_TESTED and "1 seed" in a["verdict_text"]


def test_claims_hold_when_slm_better_and_fail_when_worse(res, tmp_path):
    a = {c["metric"]: c for c in res["claims"] if c["id"] == "a"}
    assert a["test target loss"]["verdict"] == stats.HOLDS and a["test target loss"]["a_group"] == "slm-topk-0.6"
    assert a["own multiple-choice accuracy"]["verdict"] == stats.HOLDS == a["own gold-answer NLL"]["verdict"]
    assert a["own exact match"]["verdict"] == stats.HOLDS
    assert "own multiple-choice acc_norm" not in a  # reported, never a verdict of its own
    assert next(c for c in res["claims"] if c["id"] == "b")["verdict"] == stats.HOLDS
    assert all(c["verdict"] == stats.HOLDS for c in res["claims"] if c["id"] == "c")
    worse = collect(build_study(tmp_path, slm_better=False, ratios=(0.6,), strategies=("topk",), checkpoints=4))
    a = {c["metric"]: c for c in worse["claims"] if c["id"] == "a"}
    assert a["test target loss"]["verdict"] == stats.FAILS
    b = next(c for c in worse["claims"] if c["id"] == "b")
    assert b["verdict"] == stats.FAILS and "never reaches" in b["verdict_text"]


def test_best_ratio_chosen_on_validation_not_test(tmp_path):
    # validation says 0.3 is best for top-k, test says 0.6 is best: the report must pick 0.3
    r = collect(build_study(tmp_path, ratios=(0.6, 0.3), strategies=("topk",), checkpoints=4,
                            val_shift={("topk", 0.6): 0.5}, test_shift={("topk", 0.3): 0.3}))
    b = r["best_ratio"]["topk"]
    assert b["ratio"] == 0.3 and b["group"] == "slm-topk-0.3"
    assert b["test"]["0.6"] < b["test"]["0.3"] and b["validation"]["0.3"] < b["validation"]["0.6"]
    assert next(c for c in r["claims"] if c["id"] == "a")["a_group"] == "slm-topk-0.3"


def test_fig6_masks_match_brute_force(study, res):
    st = StudyResults(study)
    for name in ("clm-s1", "topk-r0.3-s1", "hq-s1"):
        rows = res["fig6"]["ratios"]["0.3"]["runs"][name]
        run = next(r for r in st.runs if r["name"] == name)
        ref = np.asarray(load_token_losses(study / "seed-1/evals/reference/step_final/test.noisy.losses.bin"),
                         dtype=np.float64).reshape(-1)
        for row, point in zip(rows, st.curve(run)):
            loss = np.asarray(load_token_losses(point["dir"] / "test.noisy.losses.bin"), dtype=np.float64).reshape(-1)
            k = int(np.floor(0.3 * loss.size + 0.5))
            order = np.argsort(-(loss - ref), kind="stable")
            mask = np.zeros(loss.size, bool)
            mask[order[:k]] = True
            assert row["n_selected"] == k == round(0.3 * NW * SEQ)
            assert row["selected"] == pytest.approx(loss[mask].mean())
            assert row["unselected"] == pytest.approx(loss[~mask].mean())
    corr = res["fig6"]["ratios"]["0.6"]["correlation"]["own_mc_acc"]
    pts = [x for rows in res["fig6"]["ratios"]["0.6"]["runs"].values() for x in rows if not x["is_base"]]
    assert corr["computed"] and corr["n"] == len(pts) == 9 * 3 * 10  # every checkpoint of every arm, base excluded
    assert -1 <= corr["selected"]["r"] <= 1 and corr["selected"]["p"] is not None
    want = stats.pearson([x["own_mc_acc"] for x in pts], [x["selected"] for x in pts])
    assert corr["selected"]["r"] == pytest.approx(want["r"])


def test_accuracy_floor(tmp_path):
    r = collect(build_study(tmp_path, ratios=(0.6,), strategies=("topk",), acc_floor=True, checkpoints=4))
    assert not [c for c in r["claims"] if "exact match" in c["metric"]]  # at floor: no verdict made from it
    exact = next(d for d in r["downstream"] if d["key"] == "own_acc")
    assert exact["status"] == "at floor" and "floor" in exact["reason"]
    assert all(c["verdict"] != stats.NOT_TESTED for c in r["claims"])


def test_efficiency_curve_by_hand(res):
    e = res["data_efficiency"]["runs"]["topk-r0.6-s2"]
    clm, run = res["runs"]["clm-s2"]["curve"], res["runs"]["topk-r0.6-s2"]["curve"]
    t_run, l_run = [p["tokens"] for p in run], [p["target_loss"] for p in run]
    assert len(e["curve"]) == 10
    for p, c in zip(e["curve"], clm[1:]):
        target = c["target_loss"]
        i = next(j for j, v in enumerate(l_run) if v <= target)  # hand interpolation
        need = t_run[i - 1] + (l_run[i - 1] - target) / (l_run[i - 1] - l_run[i]) * (t_run[i] - t_run[i - 1])
        assert p["tokens_run"] == pytest.approx(need) == pytest.approx(tokens_to_reach(t_run, l_run, target))
        assert p["speedup"] == pytest.approx(c["tokens"] / need)
    assert e["reference_tokens"] == REF_TOKENS and e["scored_tokens"] == SCORED_WINDOWS * SEQ
    assert e["tokens_saved_net"] == pytest.approx(e["tokens_saved"] - REF_TOKENS - SCORED_WINDOWS * SEQ)
    assert res["data_efficiency"]["runs"]["hq-s2"]["tokens_saved_net"] is None
    g = res["data_efficiency"]["groups"]["slm-random-0.6"]
    assert g["unreached_final"] == 3 and g["final"] is None and all(b <= 1.0 for b in g["upper_bounds"])
    final = res["data_efficiency"]["groups"]["slm-topk-0.6"]["final"]
    assert final["mean"] > 1 and final["ci95"][0] <= final["mean"] <= final["ci95"][1]


def test_overlap_noise_dynamics(res):
    ov = res["overlap"]["groups"]
    assert ov["slm-topk-0.6"]["overlap"]["mean"] == 1.0 and ov["slm-topk-0.6"]["position"] == pytest.approx(1.0)
    assert ov["slm-stochastic-0.6"]["position"] == pytest.approx(0.5)
    assert "std" in res["overlap"]["definition"] and res["overlap"]["temperature_unit"] == "std"
    hn = res["harder_noise"]
    assert list(hn["reference_loss"]) == list(LABELS.values())
    assert hn["reference_minus_content"]["noise"] > 0  # the reference knows content best (synthetic)
    assert hn["groups"]["slm-topk-0.6"]["content"]["mean"] > hn["groups"]["slm-topk-0.6"]["noise"]["mean"]
    dyn = res["dynamics"]["runs"]["clm-s0"]
    assert dyn["checkpoints"] == 11 and sum(dyn["counts"].values()) == NW * SEQ
    ex = [e for v in dyn["examples"].values() for e in v]
    assert ex and all(e["observed_first"] == e["trajectory"][0] and e["observed_last"] == e["trajectory"][-1]
                      for e in ex)
    d = [c for c in res["claims"] if c["id"] == "d"]
    assert [c["metric"] for c in d] == ["CLM shares from the base", "CLM shares within training"]
    assert set(res["cosine"]["seeds"]) == {"0", "1", "2"} and len(res["cosine"]["names"]) == 9


def test_bad_input_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="index.json"):
        collect(tmp_path)
    (tmp_path / "index.json").write_text("{bad")
    with pytest.raises(UserError, match="not valid JSON"):
        collect(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"runs": [{"name": "x"}], "base": {}}))
    with pytest.raises(UserError, match="v2"):
        collect(tmp_path)


def test_missing_piece_is_reported_not_fatal(tmp_path):
    s = build_study(tmp_path, seeds=(0,), ratios=(0.6,), strategies=("topk",), checkpoints=4)
    for f in s.glob("seed-0/runs/*/final/model.safetensors"):
        f.unlink()
    r = collect(s)
    assert "error" in r["cosine"] and "model.safetensors" in r["cosine"]["error"]
    assert "error" not in r["dynamics"]
