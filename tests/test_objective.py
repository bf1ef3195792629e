"""The SLM objective: scope, seeded draws and normalisation (single process; the multi-rank cases are in test_dist)."""
import pytest
import torch
from safetensors.torch import load_file

import selective_lm.objective as objective_mod
from selective_lm.config import TrainConfig
from selective_lm.objective import Objective
from selective_lm.selection import select_tokens
from selective_lm.train import train


@pytest.mark.parametrize("strategy", ["topk", "random", "stochastic"])
def test_select_over_micro_batches_equals_one_tensor(strategy):
    """A list of micro-batches is selected as their concatenation (micro-batch major), draws included."""
    g = torch.Generator().manual_seed(0)
    excess = [torch.randn(3, 11, generator=g) for _ in range(4)]
    valid = [torch.rand(3, 11, generator=g) > 0.1 for _ in range(4)]
    obj = Objective("slm", strategy, 0.4, temperature=0.5, scope="step", seed=7)
    masks = obj.select(excess, valid, obj.generator(5))
    whole = select_tokens(torch.cat(excess), 0.4, strategy, valid=torch.cat(valid), temperature=0.5,
                          generator=obj.generator(5))
    assert torch.equal(torch.cat(masks), whole)
    assert int(torch.cat(masks).sum()) == round(0.4 * int(torch.cat(valid).sum()))


def test_generator_is_a_function_of_seed_and_step():
    obj = Objective("slm", "random", 0.5, seed=3)
    draw = lambda s, o=obj: torch.rand(5, generator=o.generator(s))  # noqa: E731
    assert torch.equal(draw(4), draw(4)) and not torch.equal(draw(4), draw(5))
    assert not torch.equal(draw(4), torch.rand(5, generator=Objective("slm", "random", 0.5, seed=4).generator(4)))
    assert Objective("slm", "topk", 0.5).generator(1) is None and Objective("clm").generator(1) is None


def test_denominator_per_scope():
    valid = [torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)]
    valid[1][0, :3] = False  # 10 and 7 valid tokens
    assert float(Objective("clm").denominator(valid)) == 17
    # microstep: round(0.25·10) + round(0.25·7) = 3 + 2; step: round(0.25·17) = 4
    assert float(Objective("slm", ratio=0.25, scope="microstep").denominator(valid)) == 5
    assert float(Objective("slm", ratio=0.25, scope="step").denominator(valid)) == 4
    with pytest.raises(ValueError, match="selection scope"):
        Objective("slm", scope="batch")


def test_sequence_scope_denominator_and_selection_per_window():
    valid = [torch.ones(3, 8, dtype=torch.bool), torch.ones(3, 8, dtype=torch.bool)]
    valid[0][1, :5] = False  # windows of 8, 3, 8 | 8, 0, 1 valid tokens
    valid[1][1] = False
    valid[1][2, 1:] = False
    # round(0.3 × n) per window, at least 1 where n > 0: 2 + 1 + 2 + 2 + 0 + 1
    assert float(Objective("slm", ratio=0.3, scope="sequence").denominator(valid)) == 8
    assert float(Objective("slm", ratio=0.3, scope="microstep").denominator(valid)) == 6 + 3  # 19 and 9 valid
    g = torch.Generator().manual_seed(1)
    excess = [torch.randn(3, 8, generator=g) for _ in range(2)]
    for strategy in ("topk", "random", "stochastic"):
        obj = Objective("slm", strategy, 0.3, scope="sequence", seed=3, temperature=0.5)
        masks = obj.select(excess, valid, obj.generator(2))
        assert int(sum(m.sum() for m in masks)) == 8
        whole = select_tokens(torch.cat(excess), 0.3, strategy, valid=torch.cat(valid), temperature=0.5,
                              generator=obj.generator(2), per_row=True)
        assert torch.equal(torch.cat(masks), whole)
        # one call per micro-batch with the step's generator draws what one call over both draws
        gen = obj.generator(2)
        assert torch.equal(torch.cat([obj.select([e], [v], gen)[0] for e, v in zip(excess, valid)]), whole)


def test_loss_is_selected_sum_over_step_count():
    tl = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True, False]])
    loss = Objective.loss(tl, mask, torch.tensor(4.0))
    loss.backward()
    assert float(loss.detach()) == 1.0 and tl.grad.tolist() == [[0.25, 0.0, 0.25, 0.0]]


def _record(monkeypatch):
    calls, real = [], objective_mod.Objective.select

    def select(self, excess, valid, generator):
        masks = real(self, excess, valid, generator)
        calls.append(torch.cat([m.reshape(-1) for m in masks]))
        return masks

    monkeypatch.setattr(objective_mod.Objective, "select", select)
    return calls


@pytest.mark.parametrize("strategy", ["topk", "stochastic"])
def test_step_scope_accumulation_equals_one_big_batch(tiny_data, reference, tmp_path, monkeypatch, strategy):
    common = dict(data=str(tiny_data), model="tiny", objective="slm", strategy=strategy, ratio=0.4,
                  selection_scope="step", ref_scores=str(reference / "scores"), max_steps=3, lr=3e-3,
                  warmup_steps=1, log_every=1, eval_windows=4, progress=False)
    masks = {}
    for name, bs, acc in (("big", 8, 1), ("acc", 2, 4)):
        calls = _record(monkeypatch)
        train(TrainConfig(out=str(tmp_path / name), batch_size=bs, grad_accum=acc, **common), console=False)
        masks[name] = calls
        monkeypatch.undo()
    assert len(masks["big"]) == len(masks["acc"]) == 3  # one selection per optimizer step
    for a, b in zip(masks["big"], masks["acc"]):
        assert torch.equal(a, b)
    wa = load_file(str(tmp_path / "big" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "acc" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1.5e-4, rtol=1e-4, msg=k)


@pytest.mark.parametrize("strategy", ["topk", "stochastic"])
def test_sequence_scope_is_exact_per_window_and_under_accumulation(tiny_data, reference, tmp_path, monkeypatch,
                                                                   strategy):
    """selection_scope=sequence: round(ratio × 32) tokens of every window, the same masks and weights whether a
    step's 8 windows come as 1 × 8 or 4 × 2 (draws included)."""
    common = dict(data=str(tiny_data), model="tiny", objective="slm", strategy=strategy, ratio=0.3,
                  selection_scope="sequence", ref_scores=str(reference / "scores"), max_steps=3, lr=3e-3,
                  warmup_steps=1, log_every=1, eval_windows=4, progress=False)
    masks = {}
    for name, bs, acc in (("big", 8, 1), ("acc", 2, 4)):
        calls = _record(monkeypatch)
        train(TrainConfig(out=str(tmp_path / name), batch_size=bs, grad_accum=acc, **common), console=False)
        masks[name] = torch.cat(calls).view(3, 8, 32)  # steps × windows × positions
        monkeypatch.undo()
    assert torch.equal(masks["big"], masks["acc"])
    assert (masks["big"].sum(-1) == round(0.3 * 32)).all()  # the tiny windows have no ignored target
    wa = load_file(str(tmp_path / "big" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "acc" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1.5e-4, rtol=1e-4, msg=k)


def test_microstep_scope_with_accumulation_selects_per_micro_batch(tiny_data, reference, tmp_path, monkeypatch):
    """The default scope keeps each micro-batch's exact share: k = round(ratio × its tokens)."""
    calls = _record(monkeypatch)
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "m"), model="tiny", objective="slm", ratio=0.3,
                      ref_scores=str(reference / "scores"), batch_size=2, grad_accum=3, max_steps=2, log_every=1,
                      eval_windows=4, progress=False), console=False)
    assert len(calls) == 6 and all(int(c.sum()) == round(0.3 * c.numel()) for c in calls)


def test_activation_checkpointing_gives_the_same_run(tiny_data, reference, tmp_path):
    common = dict(data=str(tiny_data), model="tiny", objective="slm", ratio=0.5, ref_scores=str(reference / "scores"),
                  batch_size=4, max_steps=3, warmup_steps=1, log_every=1, eval_windows=4, progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), **common), console=False)
    train(TrainConfig(out=str(tmp_path / "b"), activation_checkpointing=True, **common), console=False)
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-5, msg=k)
