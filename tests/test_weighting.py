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


def test_soft_weights_per_row_are_each_window_alone():
    scores, valid = _toy(seed=8, shape=(5, 21))
    valid[2] = False  # no valid token: all zero
    w = soft_weights(scores, 0.3, valid=valid, temperature=0.7, per_row=True)
    for r in range(5):
        n = int(valid[r].sum())
        assert float(w[r].double().sum()) == pytest.approx(0.3 * n, rel=1e-6, abs=1e-6)
        torch.testing.assert_close(w[r], soft_weights(scores[r], 0.3, valid=valid[r], temperature=0.7))


# ------------------------------------------------------------------ dft weights
def test_dft_weights_are_the_probabilities_and_dft_norm_divides_by_their_mean():
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(3, 17, generator=g) * 6
    valid = torch.rand(3, 17, generator=g) > 0.25
    p = torch.exp(-losses.double())
    w = dft_weights(losses, valid=valid)  # published DFT: w = p
    assert torch.allclose(w.double(), torch.where(valid, p, torch.zeros_like(p)), rtol=1e-6, atol=1e-7)
    norm = dft_weights(losses, valid=valid, normalise=True)
    brute = torch.where(valid, p / p[valid].mean(), torch.zeros_like(p))
    assert torch.allclose(norm.double(), brute, rtol=1e-6, atol=1e-7)
    assert float(norm[valid].double().mean()) == pytest.approx(1.0, abs=1e-6)
    far = dft_weights(losses.double() + 2000.0, valid=valid, normalise=True)  # exp(−L) underflows; p / mean(p) not
    assert torch.allclose(far, norm, rtol=1e-5, atol=1e-6)


def test_dft_loss_is_the_mean_of_p_times_loss_as_in_trl():
    """weighting=dft through the objective: Σ p·L / valid tokens (the gradient too), TRL's `loss_type="dft"`."""
    g = torch.Generator().manual_seed(2)
    losses = (torch.rand(2, 3, 9, generator=g) * 5).requires_grad_()
    valid = [torch.rand(3, 9, generator=g) > 0.2 for _ in range(2)]
    obj = Objective("slm", ratio=0.3, weighting="dft")
    denom = obj.denominator(valid)
    w = obj.select([x.detach() for x in losses], valid, None)
    loss = sum(obj.loss(losses[m], w[m], denom) for m in range(2))
    loss.backward()
    v = torch.stack(valid)
    ref = losses.detach().clone().requires_grad_()
    brute = (torch.exp(-ref.detach()) * ref * v).sum() / v.sum()  # sg(p)·L over the valid tokens
    brute.backward()
    assert float(loss.detach()) == pytest.approx(float(brute.detach()), rel=1e-6)
    assert torch.allclose(losses.grad, ref.grad, rtol=1e-5, atol=1e-7)


def test_dft_gradient_is_the_target_probabilitys_so_it_favours_a_point_mass():
    """Why dft diverges in perplexity (benchmarks/dft_divergence.py): ∇ sg(p)·(−log p) = −∇p, so DFT maximises the
    mean probability of the targets, a linear score that a point mass on the most likely token maximises; the
    true distribution (log loss's optimum) scores less, and every other target's p is pushed to 0."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 11, (6,), generator=g)
    logp = torch.log_softmax(z, -1).gather(1, y[:, None]).squeeze(1)
    (dft_weights(-logp.detach()).double() * -logp).sum().backward()
    dft_grad, z.grad = z.grad.clone(), None
    (-torch.log_softmax(z, -1).gather(1, y[:, None]).exp()).sum().backward()
    assert torch.allclose(dft_grad, z.grad, atol=1e-12)
    q = torch.softmax(torch.randn(11, generator=g, dtype=torch.float64), 0)  # the targets' distribution
    point = torch.nn.functional.one_hot(q.argmax(), 11).double()
    others = torch.distributions.Dirichlet(torch.ones(11, dtype=torch.float64)).sample((500,))
    assert float(q @ point) > float(q @ q) and float(q @ point) >= float((others @ q).max())


# ------------------------------------------------------------------ the objective
def test_soft_and_dft_denominators_and_joint_weights():
    valid = [torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)]
    valid[1][0, :3] = False  # 10 and 7 valid tokens
    assert float(Objective("slm", ratio=0.25, weighting="soft").denominator(valid)) == pytest.approx(0.25 * 17)
    assert float(Objective("slm", ratio=0.25, weighting="soft", scope="step").denominator(valid)) == pytest.approx(4.25)
    assert float(Objective("slm", ratio=0.25, weighting="dft").denominator(valid)) == 17
    assert float(Objective("slm", ratio=0.25, weighting="dft", scope="sequence").denominator(valid)) == 17
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
        if weighting == "soft":  # dft: the mean weight is the mean probability of the targets
            assert a["selected_fraction"] == pytest.approx(0.4, abs=1e-6)
        assert 0 < a["selected_fraction"] == pytest.approx(b["selected_fraction"], abs=1e-6)
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
    dft = _rows(tmp_path / "dft")  # the mean weight is the mean probability of the targets: ≥ exp(−mean loss) (Jensen)
    assert all(math.exp(-r["loss"]) - 1e-6 <= r["selected_fraction"] < 1 and "excess_mean" not in r for r in dft)
    assert all(r["ratio"] == 1.0 for r in dft)
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
    (["weighting=dft", "ratio_schedule=linear", "ratio_end=0.3"], "weighting=dft weighs every token and has no ratio"),
    (["weighting=dft-norm"], "unknown weighting 'dft-norm'"),
    (["weighting=dft", "score=entropy"], "weighting=dft weighs every token by the model's own probability"),
    (["objective=clm", "weighting=soft"], "needs objective=slm"),
    (["objective=clm", "clm_warmup=0.1"], "needs objective=slm"),
])
def test_bad_weighting_and_schedule_inputs_are_one_line(tiny_data, reference, tmp_path, capsys, args, needle):
    objective = [] if any(a.startswith("objective=") for a in args) else ["objective=slm"]
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--no-progress", *objective,
            f"ref_scores={reference / 'scores'}", *args]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not (tmp_path / "run").exists()
