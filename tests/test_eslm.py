"""ESLM's reference-free scores (score=loss, score=model-entropy): the model's own loss or predictive entropy
ranks the tokens; the kept set is the one above the batch's value-at-risk and the loss version's loss is the
empirical CVaR. Brute force on toy tensors, then training (the score is the model's own, accumulation and the
CLI), then bad input. The two-rank equivalence is in test_dist."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import selective_lm.objective as objective_mod
from selective_lm.cli import main
from selective_lm.config import TrainConfig
from selective_lm.data import TokenDataset
from selective_lm.loss import head_token_losses, token_entropy, token_losses
from selective_lm.model import load_model, model_token_losses
from selective_lm.objective import Objective
from selective_lm.reference import token_score
from selective_lm.train import WindowOrder, train


# ------------------------------------------------------------------ the model's own statistics
def test_training_losses_with_entropy_keep_their_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 16, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 50, (2, 7), generator=g)
    targets[1, :2] = -100
    grads = []
    for entropy in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = head_token_losses(h, w, targets, chunk=5, entropy=entropy)
        loss, ent = out if entropy else (out, None)
        (loss * torch.linspace(0.1, 1, 7, dtype=torch.float64)).sum().backward()
        grads.append((loss.detach(), h.grad, w.grad))
        if entropy:
            assert not ent.requires_grad
            logits = hidden @ weight.T
            torch.testing.assert_close(ent.double(), token_entropy(logits, targets).double(), atol=1e-5, rtol=1e-5)
            assert (ent[targets == -100] == 0).all()
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    torch.testing.assert_close(grads[0][0].double(), token_losses(hidden @ weight.T, targets).double())


def test_model_entropy_under_autograd_matches_the_no_grad_pass(tiny_data, reference):
    ds = TokenDataset(tiny_data)
    model = load_model(reference / "ref" / "final")
    inputs, targets = ds.batch("train", np.array([2, 9]))
    with torch.no_grad():
        loss0, ent0 = model_token_losses(model, inputs, targets, entropy=True)
    for chunked in (True, False):
        loss, ent = model_token_losses(model, inputs, targets, chunked=chunked, entropy=True)
        assert loss.requires_grad and not ent.requires_grad
        torch.testing.assert_close(loss.detach(), loss0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ent0, atol=1e-5, rtol=1e-5)


def test_scores_are_the_models_own_loss_and_entropy():
    tl, ent = torch.rand(2, 5), torch.rand(2, 5)
    assert torch.equal(token_score("loss", tl, None), tl)
    assert torch.equal(token_score("model-entropy", tl, None, train_entropy=ent), ent)
    with pytest.raises(ValueError, match="entropy"):
        token_score("model-entropy", tl, None)


# ------------------------------------------------------------------ the threshold and CVaR, by brute force
def test_kept_tokens_are_those_above_the_value_at_risk():
    """ESLM keeps the tokens whose score is at or above the batch's VaR at level α = 1 − ratio (the empirical
    α-quantile: the ⌈α·n⌉-th smallest valid score). Top-k keeps exactly round(ratio · n): every score strictly
    above the VaR, and at most the one at it, so it sits between the strict and the non-strict threshold set."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        shape = (int(rng.integers(1, 4)), int(rng.integers(2, 40)))
        scores = torch.from_numpy(rng.normal(size=shape) * 3).float()
        valid = torch.from_numpy(rng.random(shape) < 0.8)
        valid.view(-1)[0] = True
        ratio = float(rng.choice([0.1, 0.3, 0.5, 0.6, 0.75, 1.0, rng.uniform(0.01, 1)]))
        obj = Objective("slm", "topk", ratio, scope=("microstep", "step")[trial % 2])
        m = obj.select([token_score("loss", scores, None)], [valid], None)[0]
        v = scores[valid].double().numpy()
        var = np.quantile(v, 1 - ratio, method="inverted_cdf")  # VaR_α = inf{s : F(s) ≥ α}
        above, at_or_above = (scores.double() > var) & valid, (scores.double() >= var) & valid
        assert not (above & ~m).any() and not (m & ~at_or_above).any(), (trial, ratio)
        assert int(m.sum()) == max(1, math.floor(ratio * len(v) + 0.5))


def test_loss_version_is_the_empirical_cvar():
    """Σ selected loss / k is the Rockafellar–Uryasev CVaR at level 1 − k/n: min over t of t + Σ (L − t)₊ / k."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(3, 60))
        losses = torch.from_numpy(rng.exponential(2.0, size=(1, n))).float()
        ratio = float(rng.uniform(0.05, 1.0))
        obj = Objective("slm", "topk", ratio)
        valid = [torch.ones_like(losses, dtype=torch.bool)]
        mask = obj.select([losses], valid, None)[0]
        ours = float(obj.loss(losses.double(), mask, obj.denominator(valid).double()))
        k = float(obj.denominator(valid))
        x = losses.double().numpy().ravel()
        cvar = min(t + np.maximum(x - t, 0).sum() / k for t in x)  # the minimum lies at a sample point
        assert ours == pytest.approx(cvar, rel=1e-9)


# ------------------------------------------------------------------ training
def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="tiny", objective="slm", ratio=0.4, batch_size=4, max_steps=3,
                lr=3e-3, warmup_steps=1, log_every=1, eval_windows=4, progress=False)
    return TrainConfig(**{**base, **kw})


def _recording(monkeypatch):
    calls, real = [], objective_mod.Objective.select

    def select(self, excess, valid, generator):
        out = real(self, excess, valid, generator)
        calls.append((torch.cat([e.reshape(-1) for e in excess]), torch.cat([m.reshape(-1) for m in out])))
        return out

    monkeypatch.setattr(objective_mod.Objective, "select", select)
    return calls


@pytest.mark.parametrize("score", ["loss", "model-entropy"])
def test_first_step_selects_the_top_of_the_models_own_statistic(tiny_data, reference, tmp_path, monkeypatch, score):
    """Continuing a checkpoint: step 1 keeps the top 40% of that checkpoint's own losses (entropies) of its windows."""
    calls = _recording(monkeypatch)
    start = reference / "ref" / "final"
    train(_cfg(tiny_data, tmp_path / "r", model=str(start), score=score, max_steps=1), console=False)
    ds = TokenDataset(tiny_data)
    idx = WindowOrder(ds.num_windows("train"), 0).indices(0, 4)
    inputs, targets = ds.batch("train", idx)
    with torch.no_grad():
        loss, ent = model_token_losses(load_model(start), inputs, targets, entropy=True)
    own = (loss if score == "loss" else ent).reshape(-1)
    (seen, mask), = calls
    torch.testing.assert_close(seen, own, atol=1e-5, rtol=1e-5)
    k = round(0.4 * own.numel())
    assert int(mask.sum()) == k and set(torch.topk(own, k).indices.tolist()) == set(mask.nonzero().flatten().tolist())


def test_model_entropy_step_scope_accumulation_equals_one_big_batch(tiny_data, tmp_path, monkeypatch):
    common = dict(score="model-entropy", selection_scope="step", max_steps=2)
    masks = {}
    for name, bs, acc in (("big", 8, 1), ("acc", 2, 4)):
        calls = _recording(monkeypatch)
        train(_cfg(tiny_data, tmp_path / name, batch_size=bs, grad_accum=acc, **common), console=False)
        masks[name] = [m for _, m in calls]
        monkeypatch.undo()
    assert len(masks["big"]) == len(masks["acc"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(masks["big"], masks["acc"]))
    wa, wb = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("big", "acc"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1.5e-4, rtol=1e-4, msg=k)


def test_cli_runs_both_scores_without_a_reference(tiny_data, tmp_path):
    for score in ("loss", "model-entropy"):
        out = tmp_path / score
        assert main(["train", "--data", str(tiny_data), "--out", str(out), "--objective", "slm", "--score", score,
                     "--ratio", "0.3", "--batch-size", "4", "--max-steps", "3", "--log-every", "1",
                     "--eval-windows", "4", "--no-progress"]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["score"] == score and run["reference_models"] == [] and math.isfinite(run["final_val_loss"])
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["type"] == "train"]
        assert all(r["selected_fraction"] == pytest.approx(0.3, abs=0.01) for r in rows)
        if score == "loss":  # the score is the loss: its mean over the valid tokens is the row's loss
            assert all(r["excess_mean"] == pytest.approx(r["loss"], rel=1e-5) for r in rows)
            assert all(r["excess_selected_mean"] == pytest.approx(r["loss_selected"], rel=1e-5) for r in rows)


@pytest.mark.parametrize("extra, words", [
    (["--score", "loss", "--ref-scores", "{scores}"], "score=loss ranks tokens by the training model's own loss"),
    (["--score", "model-entropy", "--ref-model", "{model}"], "reads no reference: drop ref_scores/ref_model"),
    (["--score", "loss", "--weighting", "dft"], "weighting=dft weighs every token"),
    ([], "score=loss or score=model-entropy (ESLM)"),
    (["--selection-scope", "window"], "unknown selection_scope 'window'"),
])
def test_bad_reference_free_options_exit_2_with_one_line(tiny_data, reference, tmp_path, capsys, extra, words):
    extra = [x.format(scores=reference / "scores", model=reference / "ref" / "final") for x in extra]
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--objective", "slm", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err and words in err, err
    assert not (tmp_path / "r").exists()
