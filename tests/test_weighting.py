"""Token weights instead of a hard mask (soft, dft) and ratio schedules with a CLM warm-up.

Functions on toy tensors first (exact mass, monotonicity, limits, brute force), then the objective
(denominator, at_step), then short trainings: accumulation exactness, the warm-up is CLM, the CLI
end to end, and bad inputs.
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from selective_lm import dft_weights, select_tokens, soft_weights
from selective_lm.cli import main
from selective_lm.config import TrainConfig
from selective_lm.objective import Objective
from selective_lm.train import train


def _toy(seed=0, shape=(4, 33), p_valid=0.8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.rand(*shape, generator=g) < p_valid


# ------------------------------------------------------------------ soft weights
@pytest.mark.parametrize("unit", ["std", "nats"])
@pytest.mark.parametrize("temperature", [1e-4, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.6, 0.95, 1.0])
def test_soft_weights_sum_to_ratio_times_valid(ratio, temperature, unit):
    scores, valid = _toy(seed=int(ratio * 100))
    w = soft_weights(scores * 3, ratio, valid=valid, temperature=temperature, temperature_unit=unit)
    n = int(valid.sum())
    assert w.shape == scores.shape and w.dtype == torch.float32
    assert torch.isfinite(w).all()
    assert float(w.double().sum()) == pytest.approx(ratio * n, rel=1e-6, abs=1e-5)
    assert (w[~valid] == 0).all()
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0
    if ratio == 1.0:
        assert torch.allclose(w[valid], torch.ones(n), atol=1e-6)


def test_soft_weights_are_monotone_in_excess_and_equal_for_ties():
    scores, valid = _toy(seed=3, shape=(200,), p_valid=1.0)
    scores[10] = scores[11] = scores[12]  # a tie
    for t in (0.05, 0.5, 2.0):
        w = soft_weights(scores, 0.4, valid=valid, temperature=t)
        order = torch.argsort(scores)
        assert (w[order].diff() >= -1e-7).all(), t
        assert w[10] == w[11] == w[12]
        assert 0 < float(w.min()) < float(w.max())  # soft: every token gets some weight


def test_soft_weights_tend_to_the_topk_mask_and_to_the_ratio():
    scores, _ = _toy(seed=5, shape=(50,))
    valid = torch.ones(50, dtype=torch.bool)  # 0.4 × 50 = 20: an integer budget, as top-k's
    top = select_tokens(scores, 0.4, "topk", valid=valid).float()
    sharp = soft_weights(scores, 0.4, valid=valid, temperature=1e-3)
    assert torch.allclose(sharp, top, atol=1e-4)
    errs = [float((soft_weights(scores, 0.4, temperature=t) - top).abs().sum()) for t in (2.0, 0.5, 0.1, 0.01)]
    assert errs == sorted(errs, reverse=True)  # closer to top-k as τ falls
    flat = soft_weights(scores, 0.4, temperature=1e4)
    assert torch.allclose(flat, torch.full_like(flat, 0.4), atol=1e-3)


def test_soft_weights_std_unit_is_scale_free_and_extreme_scores_stay_finite():
    scores, valid = _toy(seed=7)
    a = soft_weights(scores, 0.3, valid=valid)
    b = soft_weights(scores * 40 + 7, 0.3, valid=valid)
    assert torch.allclose(a, b, atol=1e-5)
    huge = soft_weights(scores * 1e4, 0.3, valid=valid, temperature_unit="nats")  # exp() would overflow and underflow
    assert torch.isfinite(huge).all() and float(huge.sum()) == pytest.approx(0.3 * int(valid.sum()), rel=1e-5)
    none = soft_weights(scores, 0.3, valid=torch.zeros_like(valid))
    assert (none == 0).all()
    with pytest.raises(ValueError, match="temperature"):
        soft_weights(scores, 0.3, temperature=0.0)
    with pytest.raises(ValueError, match="ratio"):
        soft_weights(scores, 1.5)


# ------------------------------------------------------------------ dft weights
def test_dft_weights_equal_normalised_probabilities():
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(3, 17, generator=g) * 6
    valid = torch.rand(3, 17, generator=g) > 0.25
    w = dft_weights(losses, valid=valid)
    p = torch.exp(-losses.double())
    brute = torch.where(valid, p / p[valid].mean(), torch.zeros_like(p))
    assert torch.allclose(w.double(), brute, rtol=1e-6, atol=1e-7)
    assert float(w[valid].double().mean()) == pytest.approx(1.0, abs=1e-6)
    far = dft_weights(losses.double() + 2000.0, valid=valid)  # exp(−L) underflows; the ratio of probabilities does not
    assert torch.allclose(far, w, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the objective
def test_soft_and_dft_denominators_and_joint_weights():
    valid = [torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)]
    valid[1][0, :3] = False  # 10 and 7 valid tokens
    assert float(Objective("slm", ratio=0.25, weighting="soft").denominator(valid)) == pytest.approx(0.25 * 17)
    assert float(Objective("slm", ratio=0.25, weighting="soft", scope="step").denominator(valid)) == pytest.approx(4.25)
    assert float(Objective("slm", ratio=0.25, weighting="dft").denominator(valid)) == 17
    g = torch.Generator().manual_seed(0)
    excess = [torch.randn(2, 5, generator=g) for _ in range(2)]
    obj = Objective("slm", ratio=0.25, weighting="soft", scope="step", weight_temperature=0.5)
    w = obj.select(excess, valid, None)
    whole = soft_weights(torch.cat(excess), 0.25, valid=torch.cat(valid), temperature=0.5)
    assert torch.equal(torch.cat(w), whole)
    assert float(sum(x.sum() for x in w)) == pytest.approx(float(obj.denominator(valid)), rel=1e-6)
    assert obj.topk_overlap(excess, valid, w) is not None and not obj.sparse_backward
    with pytest.raises(ValueError, match="weighting"):
        Objective("slm", weighting="fuzzy")
    with pytest.raises(ValueError, match="strategy"):
        Objective("slm", "random", weighting="soft")


def test_ratio_schedules_and_warmup():
    lin = Objective("slm", ratio=0.9, ratio_schedule="linear", ratio_end=0.5, total_steps=11)
    assert lin.ratio_at(0) == 0.9 and lin.ratio_at(10) == pytest.approx(0.5) and lin.ratio_at(5) == pytest.approx(0.7)
    cos = Objective("slm", ratio=0.9, ratio_schedule="cosine", ratio_end=0.5, total_steps=11)
    assert cos.ratio_at(0) == pytest.approx(0.9) and cos.ratio_at(10) == pytest.approx(0.5)
    assert cos.ratio_at(5) == pytest.approx(0.7) and cos.ratio_at(2) > lin.ratio_at(2)  # slow start
    warm = Objective("slm", ratio=0.9, ratio_schedule="linear", ratio_end=0.5, clm_warmup=0.2, total_steps=11)
    assert warm.warmup_steps(11) == 2  # round(2.2)
    assert [warm.at_step(s).selective for s in range(4)] == [False, False, True, True]
    assert warm.ratio_at(1) == 1.0 and warm.ratio_at(2) == pytest.approx(0.9) and warm.ratio_at(10) == pytest.approx(0.5)
    assert warm.at_step(1).denominator([torch.ones(3, dtype=torch.bool)]) == 3  # CLM's count
    assert float(warm.at_step(10).denominator([torch.ones(10, dtype=torch.bool)])) == 5
    assert warm.ratio_at(6, 100) == 1.0  # a pure function of (step, total)
    const = Objective("slm", ratio=0.6)
    assert const.at_step(0, 10) is const and const.at_step(9, 10) is const  # the default path is untouched
    assert Objective("slm", ratio=0.6, clm_warmup=0.9).warmup_steps(2) == 1  # at least one selective step


# ------------------------------------------------------------------ training
def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="tiny", batch_size=4, max_steps=3, lr=3e-3, warmup_steps=1,
                log_every=1, eval_windows=4, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _rows(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


@pytest.mark.parametrize("weighting", ["soft", "dft"])
def test_weighted_accumulation_equals_one_big_batch(tiny_data, reference, tmp_path, weighting):
    kw = dict(objective="slm", weighting=weighting, ratio=0.4, weight_temperature=0.5, selection_scope="step")
    if weighting == "soft":
        kw["ref_scores"] = str(reference / "scores")
    train(_cfg(tiny_data, tmp_path / "big", batch_size=8, grad_accum=1, **kw), console=False)
    train(_cfg(tiny_data, tmp_path / "acc", batch_size=4, grad_accum=2, **kw), console=False)
    wa = load_file(str(tmp_path / "big" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "acc" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1.5e-4, rtol=1e-4, msg=k)
    for a, b in zip(_rows(tmp_path / "big"), _rows(tmp_path / "acc")):
        assert a["selected_fraction"] == pytest.approx(0.4 if weighting == "soft" else 1.0, abs=1e-6)
        assert a["loss_selected"] == pytest.approx(b["loss_selected"], abs=1e-4)


def test_clm_warmup_steps_are_clm(tiny_data, reference, tmp_path):
    train(_cfg(tiny_data, tmp_path / "clm", max_steps=4), console=False)
    train(_cfg(tiny_data, tmp_path / "warm", max_steps=4, objective="slm", ratio=0.5, clm_warmup=0.5,
               ref_scores=str(reference / "scores")), console=False)
    clm, warm = _rows(tmp_path / "clm"), _rows(tmp_path / "warm")
    assert [r["ratio"] for r in warm] == [1.0, 1.0, 0.5, 0.5]
    # steps 1-2 train as CLM, so step 3's loss (before its update) is still CLM's too
    assert [r["loss"] for r in warm[:3]] == [r["loss"] for r in clm[:3]]
    assert [r["grad_norm"] for r in warm[:2]] == [r["grad_norm"] for r in clm[:2]]
    assert warm[0]["selected_fraction"] == 1.0 and "excess_mean" not in warm[0]
    assert warm[2]["selected_fraction"] == pytest.approx(0.5, abs=0.01) and "excess_mean" in warm[2]


def test_cli_soft_dft_and_a_scheduled_run(tiny_data, reference, tmp_path):
    def run(name, *overrides):
        return main(["train", "--data", str(tiny_data), "--out", str(tmp_path / name), "--model", "tiny",
                     "--batch-size", "4", "--max-steps", "5", "--log-every", "1", "--eval-windows", "4",
                     "--no-progress", "objective=slm", *overrides])

    scores = f"ref_scores={reference / 'scores'}"
    assert run("soft", scores, "weighting=soft", "ratio=0.3") == 0
    assert run("dft", "weighting=dft") == 0  # no reference at all
    assert run("sched", scores, "ratio=0.9", "ratio_schedule=linear", "ratio_end=0.5", "clm_warmup=0.2") == 0
    soft = _rows(tmp_path / "soft")
    assert all(r["selected_fraction"] == pytest.approx(0.3, abs=1e-6) and r["ratio"] == 0.3 for r in soft)
    assert all(0.3 < r["topk_overlap"] < 1.0 for r in soft)
    dft = _rows(tmp_path / "dft")
    assert all(r["selected_fraction"] == pytest.approx(1.0, abs=1e-6) and "excess_mean" not in r for r in dft)
    sched = _rows(tmp_path / "sched")
    assert [round(r["ratio"], 6) for r in sched] == [1.0, 0.9, round(0.9 - 0.4 / 3, 6), round(0.9 - 0.8 / 3, 6), 0.5]
    for r in sched[1:]:
        assert r["selected_fraction"] == pytest.approx(r["ratio"], abs=0.02)
    assert math.isfinite(json.loads((tmp_path / "dft" / "run.json").read_text())["final_val_loss"])


@pytest.mark.parametrize("args, needle", [
    (["weighting=fuzzy"], "unknown weighting 'fuzzy'"),
    (["ratio_schedule=step"], "unknown ratio_schedule 'step'"),
    (["ratio_schedule=linear", "ratio_end=1.5"], "ratio_end must be in (0, 1]"),
    (["ratio_schedule=linear", "ratio_end=0"], "ratio_end must be in (0, 1]"),
    (["ratio=0"], "ratio must be in (0, 1]"),
    (["clm_warmup=1.0"], "clm_warmup must be in [0, 1)"),
    (["clm_warmup=-0.1"], "clm_warmup must be in [0, 1)"),
    (["weighting=soft", "strategy=random"], "weighting=soft weights every token"),
    (["weighting=soft", "weight_temperature=0"], "weight_temperature must be > 0"),
    (["ratio_schedule=cosine"], "needs ratio_end"),
    (["ratio_end=0.3"], "no effect with ratio_schedule=constant"),
    (["weighting=dft", "ratio_schedule=linear", "ratio_end=0.3"], "weighting=dft has a mean weight of 1"),
    (["objective=clm", "weighting=soft"], "needs objective=slm"),
    (["objective=clm", "clm_warmup=0.1"], "needs objective=slm"),
])
def test_bad_weighting_and_schedule_inputs_are_one_line(tiny_data, reference, tmp_path, capsys, args, needle):
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--no-progress", "objective=slm",
            f"ref_scores={reference / 'scores'}", *args]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not (tmp_path / "run").exists()
