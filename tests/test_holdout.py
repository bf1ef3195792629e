"""A held-out share of the train windows (the self-reference recipe): the draw, the two sides of it, the
run's window order on each side, the CLI end to end and bad inputs."""
import json

import numpy as np
import pytest

from selective_lm.cli import main
from selective_lm.config import TrainConfig
from selective_lm.train import WindowOrder, held_out, step_windows, window_pool


@pytest.mark.parametrize("n,fraction", [(10, 0.2), (101, 0.5), (7, 0.01), (1000, 0.95)])
def test_held_out_share_is_exact_seeded_and_the_sides_partition_the_windows(n, fraction):
    mask = held_out(n, fraction, seed=3)
    assert mask.sum() == round(fraction * n)
    assert np.array_equal(mask, held_out(n, fraction, seed=3))
    if 0 < mask.sum() < n:
        assert not np.array_equal(mask, held_out(n, fraction, seed=4))
    kw = dict(data="d", out="o", holdout_fraction=fraction, holdout_seed=3)
    only = window_pool(TrainConfig(**kw, holdout="only"), n) if mask.any() else np.array([], dtype=np.int64)
    rest = window_pool(TrainConfig(**kw, holdout="exclude"), n)
    assert np.array_equal(np.sort(np.concatenate([only, rest])), np.arange(n))
    assert np.array_equal(only, np.flatnonzero(mask))


def test_no_holdout_keeps_the_old_order_and_a_pool_permutes_only_its_windows():
    assert window_pool(TrainConfig(data="d", out="o"), 50) is None
    plain = WindowOrder(50, seed=7).indices(0, 120)
    # the order of earlier versions: epoch e is default_rng([seed, e]).permutation(n)
    expect = np.concatenate([np.random.default_rng([7, e]).permutation(50) for e in range(3)])[:120]
    assert np.array_equal(plain, expect)
    pool = window_pool(TrainConfig(data="d", out="o", holdout_fraction=0.3, holdout="exclude"), 50)
    order = WindowOrder(50, seed=7, pool=pool)
    first_epoch = np.concatenate(step_windows(order, 0, batch_size=len(pool), grad_accum=1, world=1, rank=0))
    assert sorted(first_epoch.tolist()) == pool.tolist()  # one epoch = each pooled window once
    two_ranks = [np.concatenate(step_windows(order, s, 4, 2, 2, r)) for s in range(3) for r in range(2)]
    assert set(np.concatenate(two_ranks).tolist()) <= set(pool.tolist())


def test_cli_self_reference_recipe(tiny_data, tmp_path):
    """holdout=only trains on the held-out share, holdout=exclude on the rest; the runs record it."""
    def run(name, *overrides):
        return main(["train", "--data", str(tiny_data), "--out", str(tmp_path / name), "--model", "tiny",
                     "--batch-size", "4", "--max-steps", "3", "--eval-windows", "4", "--no-progress",
                     "holdout_fraction=0.25", "holdout_seed=1", *overrides])

    assert run("ref", "holdout=only") == 0
    assert run("arm", "holdout=exclude") == 0
    metas = {k: json.loads((tmp_path / k / "final" / "slm_meta.json").read_text()) for k in ("ref", "arm")}
    from selective_lm.data import TokenDataset

    n = TokenDataset(tiny_data).num_windows("train")
    h = {k: m["holdout"] for k, m in metas.items()}
    assert h["ref"]["side"] == "only" and h["arm"]["side"] == "exclude"
    assert h["ref"]["windows"] + h["arm"]["windows"] == n and h["ref"]["windows"] == round(0.25 * n)


@pytest.mark.parametrize("args, needle", [
    (["holdout_fraction=1.0"], "holdout_fraction must be in [0, 1)"),
    (["holdout_fraction=-0.1"], "holdout_fraction must be in [0, 1)"),
    (["holdout=both", "holdout_fraction=0.2"], "holdout"),
    (["holdout=only"], "set holdout_fraction > 0"),
    (["holdout=only", "holdout_fraction=0.001"], "holdout_fraction=0.001"),  # no window, or too few for a step
])
def test_bad_holdout_inputs_are_one_line(tiny_data, tmp_path, capsys, args, needle):
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--no-progress",
                 "--batch-size", "4", *args])
    err = capsys.readouterr().err
    assert code == 2 and len([x for x in err.splitlines() if x.strip()]) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not (tmp_path / "run").exists()
