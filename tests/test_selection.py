import math

import pytest
import torch

from selective_lm import num_selected, select_tokens


@pytest.mark.parametrize("strategy", ["topk", "random", "stochastic"])
@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.5, 0.6, 1.0])
def test_exact_k(strategy, ratio):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 33, generator=g)
    valid = torch.rand(4, 33, generator=g) > 0.2
    sel = select_tokens(scores, ratio, strategy, valid=valid, generator=g)
    n = int(valid.sum())
    assert sel.shape == scores.shape and sel.dtype == torch.bool
    assert int(sel.sum()) == max(1, math.floor(ratio * n + 0.5))
    assert not (sel & ~valid).any()


def test_num_selected_rounding_and_minimum():
    assert int(num_selected(10, 0.25)) == 3  # 2.5 rounds half up
    assert int(num_selected(3, 0.01)) == 1  # at least one
    assert int(num_selected(0, 0.5)) == 0


def test_topk_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        scores = torch.randn(3, 17, generator=g)
        valid = torch.rand(3, 17, generator=g) > 0.3
        sel = select_tokens(scores, 0.4, "topk", valid=valid)
        flat = [(s, i) for i, (s, v) in enumerate(zip(scores.flatten().tolist(), valid.flatten().tolist())) if v]
        k = max(1, math.floor(0.4 * len(flat) + 0.5))
        expect = {i for _, i in sorted(flat, reverse=True)[:k]}
        assert set(torch.nonzero(sel.flatten()).flatten().tolist()) == expect


def test_random_is_uniform():
    g = torch.Generator().manual_seed(2)
    scores = torch.arange(20, dtype=torch.float32)  # must be ignored
    counts = torch.zeros(20)
    trials = 4000
    for _ in range(trials):
        counts += select_tokens(scores, 0.25, "random", generator=g).float()
    expected = trials * 5 / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # chi-square, 19 dof, p = 0.001


@pytest.mark.parametrize("unit", ["nats", "std"])
def test_stochastic_single_draw_follows_softmax(unit):
    # With k = 1 Gumbel-top-k is exactly one draw from softmax(score / tau); tau in units of the
    # scores' sample std with temperature_unit="std" (the default).
    g = torch.Generator().manual_seed(3)
    scores = torch.tensor([0.0, 1.0, 2.0, 0.5, -1.0])
    tau = 0.7
    p = torch.softmax(scores / (tau * (scores.std() if unit == "std" else 1.0)), 0)
    counts = torch.zeros(5)
    trials = 20000
    for _ in range(trials):
        counts += select_tokens(scores, 0.2, "stochastic", temperature=tau, generator=g, temperature_unit=unit).float()
    expected = p * trials
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.5  # 4 dof, p = 0.001


def test_stochastic_without_replacement_inclusion():
    # k = 2 of 3 items: P(i included) = 1 - P(i is the one left out), computable exactly.
    g = torch.Generator().manual_seed(4)
    scores = torch.tensor([0.0, 1.0, 2.0])
    w = scores.exp()
    def p_first(i, rest):
        return w[i] / w[rest].sum()
    incl = []
    for i in range(3):
        others = [j for j in range(3) if j != i]
        # i excluded iff both others drawn first
        p_excl = sum(p_first(a, [0, 1, 2]) * p_first(b, [x for x in range(3) if x != a])
                     for a in others for b in others if a != b)
        incl.append(1 - float(p_excl))
    counts = torch.zeros(3)
    trials = 20000
    for _ in range(trials):
        counts += select_tokens(scores, 2 / 3, "stochastic", generator=g).float()
    freq = counts / trials
    assert torch.allclose(freq, torch.tensor(incl), atol=0.015)


def test_std_temperature_is_scale_free_and_ignores_invalid_positions():
    """τ in std units: scaling every score (a different loss scale) or filling invalid positions with
    anything leaves the stochastic draw unchanged; in nats it does not."""
    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 2.5 + 1.0
    valid = torch.rand(4, 50, generator=torch.Generator().manual_seed(1)) > 0.2
    def draw(x, unit):
        return select_tokens(x, 0.3, "stochastic", valid=valid, generator=torch.Generator().manual_seed(7),
                             temperature_unit=unit)
    junk = torch.where(valid, scores, torch.full_like(scores, 1e4))
    assert torch.equal(draw(scores, "std"), draw(scores * 10 - 3, "std"))
    assert torch.equal(draw(scores, "std"), draw(junk, "std"))
    assert not torch.equal(draw(scores, "nats"), draw(scores * 10, "nats"))
    with pytest.raises(ValueError, match="temperature_unit"):
        select_tokens(scores, 0.3, "stochastic", temperature_unit="kelvin")


def test_bad_arguments():
    s = torch.zeros(2, 3)
    for ratio in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            select_tokens(s, ratio, "topk")
    with pytest.raises(ValueError, match="strategy"):
        select_tokens(s, 0.5, "best")
    with pytest.raises(ValueError, match="shape"):
        select_tokens(s, 0.5, "topk", valid=torch.ones(3, 2, dtype=torch.bool))


# ------------------------------------------------------------------ per-row (selection_scope=sequence)
@pytest.mark.parametrize("strategy", ["topk", "random", "stochastic"])
@pytest.mark.parametrize("ratio", [0.01, 0.3, 0.6, 1.0])
def test_per_row_exact_k_in_every_row(strategy, ratio):
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 5, 23, generator=g)
    valid = torch.rand(2, 5, 23, generator=g) > torch.linspace(0, 0.9, 5).view(1, 5, 1)  # rows from full to sparse
    valid[1, 3] = False  # a window with no valid token selects none
    sel = select_tokens(scores, ratio, strategy, valid=valid, generator=g, per_row=True)
    assert sel.shape == scores.shape and not (sel & ~valid).any()
    for row, ok in zip(sel.reshape(-1, 23), valid.reshape(-1, 23)):
        n = int(ok.sum())
        assert int(row.sum()) == (max(1, math.floor(ratio * n + 0.5)) if n else 0)


def test_per_row_topk_is_each_window_alone_by_brute_force():
    g = torch.Generator().manual_seed(6)
    for _ in range(10):
        scores = torch.randn(4, 19, generator=g)
        scores[0, :5] = scores[0, 5]  # ties: the earlier position first
        valid = torch.rand(4, 19, generator=g) > 0.3
        sel = select_tokens(scores, 0.4, "topk", valid=valid, per_row=True)
        for r in range(4):
            flat = [(s, -i) for i, (s, v) in enumerate(zip(scores[r].tolist(), valid[r].tolist())) if v]
            k = max(1, math.floor(0.4 * len(flat) + 0.5)) if flat else 0
            assert set(torch.nonzero(sel[r]).flatten().tolist()) == {-i for _, i in sorted(flat, reverse=True)[:k]}
            assert torch.equal(sel[r], select_tokens(scores[r], 0.4, "topk", valid=valid[r]))


def test_per_row_draws_are_the_whole_tensors_and_tau_is_each_rows_std():
    """random keys one uniform per position of the whole tensor (so a split into micro-batches draws the same);
    stochastic's τ is in units of each row's own std (a row scaled by 50 keeps its draw)."""
    scores = torch.randn(3, 40, generator=torch.Generator().manual_seed(7))
    rows = [select_tokens(scores, 0.3, "random", generator=torch.Generator().manual_seed(1), per_row=True)]
    g = torch.Generator().manual_seed(1)
    rows.append(torch.cat([select_tokens(scores[:1], 0.3, "random", generator=g, per_row=True),
                           select_tokens(scores[1:], 0.3, "random", generator=g, per_row=True)]))
    assert torch.equal(*rows)
    scaled = scores.clone()
    scaled[1] = scaled[1] * 50 + 3
    a, b = (select_tokens(x, 0.3, "stochastic", generator=torch.Generator().manual_seed(2), per_row=True)
            for x in (scores, scaled))
    assert torch.equal(a, b)
