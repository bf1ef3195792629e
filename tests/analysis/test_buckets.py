"""Tests for selective_lm.analysis.buckets."""
import numpy as np
import pytest

from selective_lm.analysis.buckets import bucket_transitions, high_low_threshold


def test_threshold_quantile():
    assert high_low_threshold(np.arange(11.0)) == pytest.approx(7.0)
    assert high_low_threshold(np.array([[0.0, 10.0]])) == pytest.approx(7.0)
    assert high_low_threshold(np.arange(11.0), quantile=0.5) == pytest.approx(5.0)


def test_transitions_hand_counted():
    before = np.array([1.0, 5.0, 5.0, 1.0, 3.0, 4.0])
    after = np.array([1.0, 1.0, 5.0, 5.0, 3.0, 2.0])
    # threshold 3 (3 itself is low): L→L, H→L, H→H, L→H, L→L, H→L
    res = bucket_transitions(before, after, 3.0)
    assert res["n"] == 6
    assert res["counts"] == {"H→H": 1, "L→H": 1, "H→L": 2, "L→L": 2}
    assert res["shares"] == pytest.approx({"H→H": 1 / 6, "L→H": 1 / 6, "H→L": 1 / 3, "L→L": 1 / 3})


def test_transitions_2d():
    before = np.array([[4.0, 0.0], [4.0, 0.0]])
    after = np.array([[0.0, 0.0], [4.0, 4.0]])
    res = bucket_transitions(before, after, 1.0)
    assert res["counts"] == {"H→H": 1, "L→H": 1, "H→L": 1, "L→L": 1}


@pytest.mark.parametrize(
    "call",
    [
        lambda: bucket_transitions(np.ones(3), np.ones(4), 1.0),
        lambda: bucket_transitions(np.array([]), np.array([]), 1.0),
        lambda: bucket_transitions(np.array([np.nan]), np.ones(1), 1.0),
        lambda: bucket_transitions(np.ones(2), np.ones(2), float("nan")),
        lambda: high_low_threshold(np.ones(3), quantile=1.5),
        lambda: high_low_threshold(np.array([])),
    ],
)
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()
