"""Tests for selective_lm.analysis.efficiency."""
import math

import pytest

from selective_lm.analysis.efficiency import data_efficiency, tokens_to_reach

TOK = [0, 100, 200, 300]
LOSS = [5.0, 4.0, 3.0, 2.5]


def test_interpolated_crossing():
    assert tokens_to_reach(TOK, LOSS, 3.5) == pytest.approx(150.0)
    assert tokens_to_reach(TOK, LOSS, 2.75) == pytest.approx(250.0)


def test_exact_hit_and_first_point():
    assert tokens_to_reach(TOK, LOSS, 3.0) == pytest.approx(200.0)
    assert tokens_to_reach(TOK, LOSS, 6.0) == 0.0


def test_never_reached():
    assert tokens_to_reach(TOK, LOSS, 2.0) is None


def test_first_crossing_wins_over_later():
    # dips below 3 at 100 tokens, goes back up, then below again
    assert tokens_to_reach([0, 100, 200, 300], [4.0, 2.0, 4.0, 1.0], 3.0) == pytest.approx(50.0)


def test_data_efficiency():
    res = data_efficiency([0, 1000, 2000, 4000], [5.0, 4.0, 3.5, 3.0], [0, 250, 500, 1000], [5.0, 3.5, 2.5, 2.0])
    assert res["target"] == 3.0
    assert res["tokens_baseline"] == 4000.0
    assert res["tokens_run"] == pytest.approx(375.0)
    assert res["speedup"] == pytest.approx(4000 / 375)


def test_data_efficiency_not_reached_and_zero():
    res = data_efficiency([0, 100], [5.0, 3.0], [0, 100], [5.0, 4.0])
    assert res["tokens_run"] is None and res["speedup"] is None
    res = data_efficiency([0, 100], [5.0, 3.0], [0, 100], [2.0, 1.0])
    assert res["tokens_run"] == 0.0 and math.isinf(res["speedup"])


@pytest.mark.parametrize(
    "call",
    [
        lambda: tokens_to_reach([0, 1], [1.0], 0.5),
        lambda: tokens_to_reach([], [], 0.5),
        lambda: tokens_to_reach([1, 0], [2.0, 1.0], 0.5),
        lambda: tokens_to_reach([0, 1], [2.0, float("nan")], 0.5),
        lambda: tokens_to_reach([0, 1], [2.0, 1.0], float("nan")),
    ],
)
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()
