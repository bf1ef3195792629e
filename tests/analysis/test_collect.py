"""Tests for selective_lm.analysis.collect on a synthetic study directory.

:func:`build_study` writes a small but complete study (index.json, eval dumps, run dirs with
metrics.jsonl and safetensors weights, a tiny noisy dataset with provenance); tests/test_report.py
reuses it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from selective_lm.analysis.collect import Study, claims, collect, section_groups, write_selection_html
from selective_lm.data import train_tokenizer
from selective_lm.evaluate import dump_token_losses
from selective_lm.files import UserError, write_json

SEQ, NW, NT = 16, 4, 4  # seq_len, noisy validation windows in the dumps, target windows
STEPS = ((10, 1000.0), (20, 2000.0))
KEYS = ("study", "config", "base", "reference", "runs", "data_efficiency", "groups", "dynamics", "buckets",
        "selected_vs_unselected", "cosine", "selection", "claims")
_TOKENIZER: dict = {}


def _dataset(path: Path, tmp_root: Path, rng, windows: int, provenance: bool) -> None:
    if "dir" not in _TOKENIZER:
        _TOKENIZER["dir"] = tmp_root / "tok"
        text = ["x = 3 + 4 so x = 7. The derivative of x^2 is 2x. Buy now!!! click here"] * 20
        _TOKENIZER["vocab"] = len(train_tokenizer(text, 300, _TOKENIZER["dir"]))
    path.mkdir(parents=True)
    import shutil

    shutil.copytree(_TOKENIZER["dir"], path / "tokenizer")
    rng.integers(1, 20, size=(windows, SEQ + 1)).astype(np.uint16).tofile(path / "validation.bin")
    split = {"file": "validation.bin", "windows": windows, "provenance": None}
    if provenance:
        rng.integers(0, 3, size=(windows, SEQ + 1)).astype(np.uint8).tofile(path / "validation.prov.bin")
        split["provenance"] = "validation.prov.bin"
    write_json(path / "manifest.json", {
        "format_version": 1, "kind": "selective-lm-dataset", "seq_len": SEQ, "window_len": SEQ + 1,
        "dtype": "uint16", "vocab_size": _TOKENIZER["vocab"], "eos_id": 0, "tokenizer": "tokenizer",
        "fingerprint": "synthetic", "splits": {"validation": split},
        "provenance_labels": {"0": "content", "1": "noise", "2": "offtopic"} if provenance else None})


def _eval(d: Path, step: int, tokens: float, target: np.ndarray, noisy: np.ndarray, acc: float | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    dump_token_losses(target.reshape(NT, SEQ), d / "target.losses.bin")
    dump_token_losses(noisy.reshape(NW, SEQ), d / "noisy.losses.bin")
    m = {"step": step, "tokens": tokens}
    for name, arr in (("target", target), ("noisy", noisy)):
        loss = float(arr.astype(np.float16).astype(np.float64).mean())
        m[name] = {"loss": loss, "ppl": math.exp(loss), "tokens": arr.size}
    if acc is not None:
        m["fewshot"] = {"accuracy": acc, "correct": int(acc * 100), "n": 100, "per_family": {}, "examples": []}
    write_json(d / "metrics.json", m)


def build_study(root: Path, *, slm_better: bool = True, seeds=(0,), ratios=(0.6, 0.3), lora: bool = False,
                strategies=("topk", "random"), slm_seed_jitter: float = 0.0, relative: bool = False) -> Path:
    """Write a synthetic finished study under root/study and return its path."""
    rng = np.random.default_rng(0)
    study = root / "study"
    p = (lambda q: str(Path(q).relative_to(study))) if relative else (lambda q: str(q))
    _dataset(study / "data" / "web_math", root, rng, NW + 2, provenance=True)
    _dataset(study / "data" / "hq_math", root, rng, NT, provenance=False)
    n = NW * SEQ
    base_noisy = rng.uniform(1.0, 5.0, n)
    excess = rng.normal(0.0, 1.0, n)
    top = excess >= np.quantile(excess, 0.4)  # roughly the tokens top-k selects
    base_target = rng.uniform(2.5, 3.5, NT * SEQ)
    _eval(study / "evals" / "base" / "step_000000", 0, 5000.0, base_target, base_noisy, 0.1)
    _eval(study / "evals" / "reference" / "step_final", 300, 3000.0, base_target - 0.5, base_noisy - excess, 0.5)
    shapes = {"layer.weight": (4, 4), "layer.bias": (4,), "emb.weight": (8, 4)}
    base_state = {k: torch.randn(*s, generator=torch.Generator().manual_seed(1)) for k, s in shapes.items()}
    (study / "runs" / "base" / "final").mkdir(parents=True)
    save_file(base_state, str(study / "runs" / "base" / "final" / "model.safetensors"))
    (study / "runs" / "base" / "config.yaml").write_text("model: tiny\nmax_tokens: 5000\nlr: 0.001\n")
    drops = {"clm": 0.2, "topk": 0.35 if slm_better else 0.05, "random": 0.15, "stochastic": 0.25}
    accs = {"clm": 0.3, "topk": 0.45 if slm_better else 0.15, "random": 0.28, "stochastic": 0.35}
    runs = []
    shared = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    for seed in seeds:
        arms = [("clm", None, 1.0)] + [("slm", s, r) for r in ratios for s in strategies]
        for arm, strategy, ratio in arms:
            name = f"clm-s{seed}" if arm == "clm" else f"{strategy}-r{ratio:g}-s{seed}"
            key = strategy or "clm"
            jitter = (slm_seed_jitter * (1 if seed % 2 else -1)) if arm == "slm" else 0.0
            run_dir, eval_dir = study / "runs" / name, study / "evals" / name
            for c, (step, tokens) in enumerate(STEPS, 1):
                target = base_target - drops[key] * c - jitter * c + 0.002 * seed
                noisy = base_noisy + np.where(top, -0.4 * c, 0.15 * c) * (1.5 if key == "topk" else 1.0)
                noisy = noisy + rng.normal(0, 0.05, n)
                _eval(eval_dir / f"step_{step:06d}", step, tokens, target, noisy, accs[key] * c / 2 + 0.1)
            final = run_dir / "final"
            final.mkdir(parents=True)
            g = torch.Generator().manual_seed(100 + len(runs))
            if lora:
                save_file({"base_model.model.layer.lora_A.weight": torch.randn(2, 4, generator=g),
                           "base_model.model.layer.lora_B.weight": torch.randn(4, 2, generator=g)},
                          str(final / "adapter_model.safetensors"))
                write_json(final / "adapter_config.json", {"r": 2, "lora_alpha": 4, "peft_type": "LORA"})
            else:
                state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
                state["layer.weight"] = state["layer.weight"] + shared
                save_file(state, str(final / "model.safetensors"))
            rows = [{"type": "train", "step": s, "tokens": s * 100, "loss": 3.0, "noise_share_all": 0.3,
                     **({"noise_share_selected": 0.2 - 0.01 * s} if arm == "slm" else {})} for s in range(1, 21)]
            rows += [{"type": "eval", "step": st, "tokens": t, "loss": 3.0 - drops[key] * c, "ppl": 1.0}
                     for c, (st, t) in enumerate(STEPS, 1)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run_dir / "config.yaml").write_text(f"model: {study / 'runs/base/final'}\nmax_tokens: 2000\n")
            runs.append({"name": name, "arm": arm, "strategy": strategy, "ratio": ratio, "seed": seed,
                         "run_dir": p(run_dir), "eval_dir": p(eval_dir)})
    (study / "study.yaml").write_text("model: tiny\nbase_tokens: 5000\ncontinual_tokens: 2000\n")
    write_json(study / "index.json", {
        "seeds": list(seeds), "ratios": list(ratios), "lora": {"r": 2, "alpha": 4} if lora else None,
        "datasets": {"target": p(study / "data" / "hq_math"), "noisy": p(study / "data" / "web_math")},
        "base": {"run_dir": p(study / "runs/base"), "checkpoint": p(study / "runs/base/final"),
                 "eval_dir": p(study / "evals/base")},
        "reference": {"run_dir": p(study / "runs/reference"), "checkpoint": p(study / "runs/reference/final"),
                      "eval_dir": p(study / "evals/reference")},
        "ref_val_losses": p(study / "evals/reference/step_final/noisy.losses.bin"),
        "runs": runs, "timings": {"base": 1.5, "reference": 0.5, "runs": 3.0}})
    return study


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
    st = Study(better)
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
