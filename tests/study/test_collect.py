"""Tests for selective_lm.study.collect on a synthetic study directory.

:func:`build_study` writes a small but complete study (index.json, eval dumps, run dirs with
metrics.jsonl and safetensors weights, a tiny noisy dataset with provenance); tests/study/test_report.py
reuses it.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synthetic_study import KEYS, NT, NW, SEQ, STEPS, build_study  # noqa: F401

from selective_lm.study.collect import StudyResults, claims, collect, section_groups, write_selection_html
from selective_lm.files import UserError

def _walk_numbers(obj, path="") -> list:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _walk_numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _walk_numbers(v, f"{path}[{i}]")]
    return [(path, obj)] if isinstance(obj, float) else []


def _errors(obj, path="") -> list[str]:
    if isinstance(obj, dict):
        return ([f"{path}: {obj['error']}"] if "error" in obj else []) + [
            e for k, v in obj.items() for e in _errors(v, f"{path}.{k}")] + (
            [f"{path}: {obj['examples_error']}"] if "examples_error" in obj else [])
    return [e for i, v in enumerate(obj) for e in _errors(v, f"{path}[{i}]")] if isinstance(obj, list) else []


@pytest.fixture()
def better(tmp_path):
    return build_study(tmp_path)


def test_collect_complete_and_finite(better):
    res = collect(better)
    assert set(KEYS) <= set(res)
    assert _errors(res) == []
    json.dumps(res, allow_nan=False)  # JSON-serialisable, no NaN/inf
    assert all(math.isfinite(v) for _, v in _walk_numbers(res))
    assert res["config"]["seeds"] == [0] and res["config"]["ratios"] == [0.6, 0.3]
    assert res["config"]["train"]["base"]["model"] == "tiny" and res["config"]["study"]["base_tokens"] == 5000
    assert set(res["runs"]) == {"clm-s0", "topk-r0.6-s0", "random-r0.6-s0", "topk-r0.3-s0", "random-r0.3-s0"}
    curve = res["runs"]["clm-s0"]["curve"]
    assert [p["tokens"] for p in curve] == [0.0, 1000.0, 2000.0] and curve[0]["accuracy"] == 0.1
    assert res["runs"]["clm-s0"]["final"]["target_ppl"] == pytest.approx(math.exp(curve[-1]["target_loss"]))
    assert set(res["groups"]) == {"clm", "slm-topk-0.6", "slm-random-0.6", "slm-topk-0.3", "slm-random-0.3"}
    assert res["groups"]["clm"]["target_ppl"]["std"] == 0.0 and "n=1" in res["groups"]["clm"]["note"]
    assert res["reference"]["step"] == 300


def test_sections_values(better):
    res = collect(better)
    de = res["data_efficiency"]["runs"]["topk-r0.6-s0"]
    assert de["baseline"] == "clm-s0" and de["speedup"] > 1.5
    dyn = res["dynamics"]["runs"]["clm-s0"]
    assert dyn["checkpoints"] == 3 and dyn["n_tokens"] == NW * SEQ
    assert sum(dyn["counts"].values()) == NW * SEQ and sum(dyn["shares"].values()) == pytest.approx(1.0)
    ex = [e for v in dyn["examples"].values() for e in v]
    assert ex and all(isinstance(e["token"], str) and "[[" in e["context"] for e in ex)
    b = res["buckets"]["runs"]["topk-r0.6-s0"]
    assert sum(b["vs_base"]["counts"].values()) == NW * SEQ and "vs_clm" in b
    assert "vs_clm" not in res["buckets"]["runs"]["clm-s0"]
    sv = res["selected_vs_unselected"]
    assert "base-model loss" in sv["definition"] and sv["ratios"]["0.6"]["n_selected"] == round(0.6 * NW * SEQ)
    rows = sv["ratios"]["0.6"]["runs"]["topk-r0.6-s0"]
    assert rows[-1]["selected"] < rows[0]["selected"] and rows[-1]["unselected"] > rows[0]["unselected"]
    assert rows[0]["tokens"] == 0 and rows[-1]["accuracy"] is not None
    corr = sv["ratios"]["0.6"]["correlation"]
    assert -1 <= corr["accuracy_vs_selected"] <= 1 and corr["n_points"] == 1 + 5 * 2
    cos = res["cosine"]
    assert cos["names"][0] == "clm-s0" and set(cos["kinds"].values()) == {"full"}
    m = np.array(cos["matrix"])
    assert np.allclose(np.diag(m), 1.0) and np.allclose(m, m.T) and (m[np.triu_indices(5, 1)] > 0.3).all()
    sel = res["selection"]
    tr = sel["runs"]["topk-r0.6-s0"]["training"]
    assert tr["noise_share_selected"]["first"] == pytest.approx(0.19)
    assert tr["noise_share_selected"]["last"] == pytest.approx(0.0)
    assert tr["noise_share_all"]["mean"] == pytest.approx(0.3)
    assert set(sel["runs"]["clm-s0"]["training"]) == {"noise_share_all", "curve"}
    val = sel["runs"]["topk-r0.6-s0"]["validation"]
    assert val["provenance"]["n_selected"] == round(0.6 * NW * SEQ) and val["tokens"]["most"]
    assert sel["runs"]["topk-r0.3-s0"]["validation_ratio"] == "0.3"


def test_fixed_mask_is_topk_of_base_minus_reference(better):
    st = StudyResults(better)
    excess, masks = st.masks()
    base = st.noisy(st.base_point())
    k = int(masks[0.6].sum())
    assert k == round(0.6 * base.size)
    assert excess[masks[0.6]].min() >= excess[~masks[0.6]].max()


def test_claims_hold_when_slm_is_better(better):
    res = collect(better)
    c = {x["claim"]: x for x in res["claims"]}
    assert len(c) == 4 and all({"claim", "holds", "evidence"} <= set(x) for x in res["claims"])
    assert c["SLM beats CLM on target-domain quality at equal tokens"]["holds"] is True
    assert "slm-topk" in c["SLM beats CLM on target-domain quality at equal tokens"]["evidence"]
    assert c["SLM reaches CLM's final target-domain loss with fewer tokens"]["holds"] is True
    assert c["top-k beats random at the same ratio"]["holds"] is True
    dyn = c["token loss dynamics shares resemble the paper's 11/12/26/51%"]
    assert isinstance(dyn["holds"], bool) and "paper 51%" in dyn["evidence"]


def test_claims_fail_when_slm_is_worse(tmp_path):
    res = collect(build_study(tmp_path, slm_better=False))
    c = {x["claim"]: x for x in res["claims"]}
    assert c["SLM beats CLM on target-domain quality at equal tokens"]["holds"] is False
    assert "does not beat" in c["SLM beats CLM on target-domain quality at equal tokens"]["evidence"]
    assert c["SLM reaches CLM's final target-domain loss with fewer tokens"]["holds"] is False
    assert "never reaches" in c["SLM reaches CLM's final target-domain loss with fewer tokens"]["evidence"]
    assert c["top-k beats random at the same ratio"]["holds"] is False


def test_claims_with_seeds_need_difference_beyond_pooled_std(tmp_path):
    res = collect(build_study(tmp_path, seeds=(0, 1), ratios=(0.6,), strategies=("topk",), slm_seed_jitter=0.3))
    g = res["groups"]["slm-topk-0.6"]
    assert g["target_ppl"]["n"] == 2 and g["target_ppl"]["std"] > 0
    c1 = res["claims"][0]
    assert c1["holds"] is False and "pooled std" in c1["evidence"]
    assert res["claims"][2]["holds"] is None  # no random arm
    quiet = collect(build_study(tmp_path / "q", seeds=(0, 1), ratios=(0.6,), strategies=("topk",)))
    assert quiet["claims"][0]["holds"] is True and "pooled std" in quiet["claims"][0]["evidence"]


def test_claims_undetermined_without_groups():
    out = claims({"groups": {}, "config": {"ratios": [0.6]}})
    assert [c["holds"] for c in out] == [None, None, None, None]
    runs = {"a": {"arm": "clm", "strategy": None, "ratio": 1.0, "seed": 0, "group": "clm",
                  "final": {"target_ppl": 3.0, "noisy_ppl": 5.0, "accuracy": None, "target_loss": 1.1, "tokens": 9}}}
    g = section_groups(runs)
    assert g["clm"]["accuracy"] == {"mean": None, "std": None, "n": 0}


def test_lora_cosine_and_relative_paths(tmp_path):
    res = collect(build_study(tmp_path, lora=True, relative=True))
    assert _errors(res) == []
    assert set(res["cosine"]["kinds"].values()) == {"lora"}
    assert np.allclose(np.diag(np.array(res["cosine"]["matrix"])), 1.0)
    assert res["config"]["lora"] == {"r": 2, "alpha": 4}


def test_selection_html(better, tmp_path):
    out = write_selection_html(better, tmp_path / "sel.html", max_windows=2)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "window 1" in page and "window 2" not in page
    assert 'class="t s' in page and "noise" in page


def test_bad_input_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="index.json"):
        collect(tmp_path)
    with pytest.raises(UserError, match="not found|index.json"):
        collect(tmp_path / "missing")
    (tmp_path / "index.json").write_text("{bad")
    with pytest.raises(UserError, match="not valid JSON"):
        collect(tmp_path)


def test_missing_piece_is_reported_not_fatal(better):
    for f in (better / "runs").glob("*/final/model.safetensors"):
        f.unlink()
    res = collect(better)
    assert "error" in res["cosine"] and "model.safetensors" in res["cosine"]["error"]
    assert "error" not in res["dynamics"]
