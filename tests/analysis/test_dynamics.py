"""Tests for selective_lm.analysis.dynamics against hand-computed trajectories."""
import numpy as np
import pytest

from selective_lm.analysis.dynamics import CATEGORIES, classify_dynamics, dynamics_examples

# columns = tokens, rows = checkpoints x = 0..3
LOSSES = np.array(
    [
        [5.0, 1.0, 6.0, 1.0, 3.0],
        [4.0, 2.0, 6.0, 1.0, 3.1],
        [3.0, 3.0, 6.0, 1.0, 2.9],
        [2.0, 4.0, 6.0, 1.0, 3.0],
    ]
)
# token 0: falling -> H→L; token 1: rising -> L→H; token 2: flat 6 > last-mean 3.2 -> H→H;
# token 3: flat 1 -> L→L; token 4: fluctuating, slope -0.02, delta -0.06, last 3 <= 3.2 -> L→L


def test_categories_hand_computed():
    res = classify_dynamics(LOSSES)
    names = [CATEGORIES[c] for c in res.categories]
    assert names == ["H→L", "L→H", "H→H", "L→L", "L→L"]
    assert res.categories.dtype == np.int8
    assert res.counts == {"H→H": 1, "L→H": 1, "H→L": 1, "L→L": 2}
    assert res.shares == pytest.approx({"H→H": 0.2, "L→H": 0.2, "H→L": 0.2, "L→L": 0.4})
    assert res.last_mean == pytest.approx(3.2)


def test_fitted_line_values():
    res = classify_dynamics(LOSSES)
    assert res.l_start[0] == pytest.approx(5.0)
    assert res.l_end[0] == pytest.approx(2.0)
    assert res.delta[0] == pytest.approx(-3.0)
    assert res.delta[1] == pytest.approx(3.0)
    assert res.delta[2] == pytest.approx(0.0)
    assert res.delta[4] == pytest.approx(-0.06)
    assert res.l_start[4] == pytest.approx(3.03)


def test_threshold_changes_fluctuating_token():
    res = classify_dynamics(LOSSES, threshold=0.05)
    assert CATEGORIES[res.categories[4]] == "H→L"


def test_token_at_mean_is_low():
    losses = np.array([[2.0, 4.0], [2.0, 4.0]])  # last mean 3: token 0 L→L, token 1 H→H
    res = classify_dynamics(np.c_[losses, [3.0, 3.0]])  # third token exactly at mean 3
    assert [CATEGORIES[c] for c in res.categories] == ["L→L", "H→H", "L→L"]


def test_matches_polyfit_on_random_data():
    rng = np.random.default_rng(1)
    losses = rng.gamma(2.0, 1.5, size=(6, 500))
    res = classify_dynamics(losses)
    for j in (0, 17, 499):
        a, b = np.polyfit(np.arange(6), losses[:, j], 1)
        assert res.l_start[j] == pytest.approx(b)
        assert res.l_end[j] == pytest.approx(a * 5 + b)
    assert sum(res.counts.values()) == 500
    assert sum(res.shares.values()) == pytest.approx(1.0)


def test_two_checkpoints_fit_is_exact():
    res = classify_dynamics(np.array([[3.0, 1.0], [1.0, 1.1]]))
    assert res.l_start.tolist() == pytest.approx([3.0, 1.0])
    assert res.l_end.tolist() == pytest.approx([1.0, 1.1])


@pytest.mark.parametrize(
    "bad,kw",
    [
        (np.ones(4), {}),
        (np.ones((1, 4)), {}),
        (np.ones((3, 0)), {}),
        (np.array([[1.0, np.nan], [1.0, 1.0]]), {}),
        (np.ones((3, 2)), {"threshold": -0.1}),
    ],
)
def test_bad_input(bad, kw):
    with pytest.raises(ValueError):
        classify_dynamics(bad, **kw)


def test_examples():
    res = classify_dynamics(LOSSES)
    toks = ["a", "b", "c", "d", "e"]
    ex = dynamics_examples(res, toks, k=1, rng_seed=0, context=1)
    assert set(ex) == set(CATEGORIES)
    assert len(ex["L→L"]) == 1 and ex["L→L"][0]["index"] in (3, 4)
    hl = ex["H→L"][0]
    assert hl["token"] == "a" and hl["index"] == 0
    assert hl["context"] == "[[a]]b"
    assert hl["trajectory"] == [5.0, 4.0, 3.0, 2.0]
    assert hl["l_start"] == pytest.approx(5.0) and hl["l_end"] == pytest.approx(2.0)
    again = dynamics_examples(res, toks, k=1, rng_seed=0, context=1)
    assert again == ex
    full = dynamics_examples(res, toks, k=5)
    assert [e["index"] for e in full["L→L"]] == [3, 4]
    with pytest.raises(ValueError):
        dynamics_examples(res, toks[:3])
