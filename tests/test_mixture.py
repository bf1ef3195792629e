"""Mixtures of datasets (`--data a:6,b:3`) and named evaluation datasets during training (`--eval-data`)."""
import json

import numpy as np
import pytest
import torch
from conftest import make_corpus, train_cut_at
from safetensors.torch import load_file

from selective_lm.config import EvalConfig, PrepareConfig, ScoreConfig, TrainConfig
from selective_lm.data import TokenDataset, prepare
from selective_lm.evaluate import evaluate
from selective_lm.files import UserError
from selective_lm.mixture import Mixture, MixtureOrder
from selective_lm.options import parse_data
from selective_lm.reference import RefLosses
from selective_lm.scores import load_scores
from selective_lm.scoring import score
from selective_lm.tracking import scalars
from selective_lm.train import step_windows, train


@pytest.fixture(scope="module")
def second(tiny_data, reference, tmp_path_factory):
    """Another dataset with tiny_data's tokenizer (and its reference scores)."""
    root = tmp_path_factory.mktemp("second")
    make_corpus(root / "c.jsonl", n_docs=120, seed=7)
    prepare(PrepareConfig(inputs=[str(root / "c.jsonl")], out=str(root / "ds2"), tokenizer=str(tiny_data / "tokenizer"),
                          seq_len=32, val_fraction=0.2, progress=False))
    score(ScoreConfig(data=str(root / "ds2"), model=str(reference / "ref" / "final"), out=str(root / "scores2"),
                      progress=False))
    return root


def test_data_spec_parses_weights_and_paths():
    assert parse_data("ds/web") == [("ds/web", None)]
    assert parse_data("ds/web:6,ds/code:3, ds/owm:1") == [("ds/web", 6.0), ("ds/code", 3.0), ("ds/owm", 1.0)]
    assert parse_data("a,b:2") == [("a", 1.0), ("b", 2.0)]
    with pytest.raises(UserError, match="must be a number > 0"):
        parse_data("a:0,b:1")


def test_windows_depend_on_seed_and_step_only(tiny_data, second):
    mix = Mixture([(str(tiny_data), 6.0), (str(second / "ds2"), 3.0), (str(tiny_data), 1.0)])
    B, A = 2, 2
    one = MixtureOrder(mix, seed=4, per_step=4 * B * A)
    two = MixtureOrder(mix, seed=4, per_step=4 * B * A)
    for step in range(6):
        single = step_windows(one, step, 4 * B, A, 1, 0)  # one process, batch 4B
        ranks = [step_windows(two, step, B, A, 4, r) for r in range(4)]  # four ranks, batch B
        for m in range(A):
            assert np.array_equal(single[m], np.concatenate([w[m] for w in ranks]))
    fresh = MixtureOrder(mix, seed=4, per_step=16)  # a resume asks for step 5 first
    assert np.array_equal(fresh.indices(5 * 16, 16), one.indices(5 * 16, 16))
    assert not np.array_equal(MixtureOrder(mix, seed=5, per_step=16).indices(0, 64), one.indices(0, 64))
    counts = MixtureOrder(mix, seed=0, per_step=10).counts(400)
    assert np.allclose(counts / counts.sum(), [0.6, 0.3, 0.1], atol=0.03)
    # a window of the second dataset reads its own rows: tokens, and (below) its own reference scores
    idx = one.indices(0, 16)
    second_rows = idx[(idx >= mix.offsets("train")[1]) & (idx < mix.offsets("train")[2])]
    assert len(second_rows)
    x, _ = mix.batch("train", second_rows)
    local = second_rows - mix.offsets("train")[1]
    assert np.array_equal(x.numpy(), np.asarray(TokenDataset(second / "ds2").windows("train")[local])[:, :-1])


def _cfg(tiny_data, second, reference, out, **kw):
    base = dict(data=f"{tiny_data}:3,{second / 'ds2'}:1", out=str(out), model="tiny", objective="slm", ratio=0.5,
                ref_scores=[str(reference / "scores"), str(second / "scores2")], batch_size=4, max_steps=4, lr=3e-3,
                warmup_steps=1, log_every=1, eval_every=2, eval_windows=6, ckpt_every=2, progress=False,
                eval_data=[f"target={second / 'ds2'}"], lr_schedule="wsd", decay_fraction=0.5)
    return TrainConfig(**{**base, **kw})


def test_mixture_trains_resumes_and_evaluates_the_target(tiny_data, second, reference, tmp_path, monkeypatch):
    cfg = _cfg(tiny_data, second, reference, tmp_path / "run")
    rows = []
    summary = train(cfg, console=False, callbacks=[rows.append])
    mix = Mixture(parse_data(cfg.data))
    counts = MixtureOrder(mix, cfg.data_seed, 4).counts(4)
    assert [m["windows"] for m in summary["mixture"]] == counts.tolist() and counts.sum() == 16
    assert sum(m["share"] for m in summary["mixture"]) == pytest.approx(1.0)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["mixture"][1]["tokens"] == counts[1] * 32
    # every reference score a mixture window gets is its own dataset's
    ref = RefLosses(cfg, mix, torch.device("cpu"))
    idx = MixtureOrder(mix, cfg.data_seed, 4).indices(0, 16)
    rows_ref = ref(idx, *mix.batch("train", idx)).loss.numpy()
    parts = [load_scores(reference / "scores", TokenDataset(tiny_data)), load_scores(second / "scores2",
                                                                                      TokenDataset(second / "ds2"))]
    for i, g in enumerate(idx):
        d = int(g >= mix.offsets("train")[1])
        assert np.array_equal(rows_ref[i], np.asarray(parts[d][g - mix.offsets("train")[d]], dtype=np.float32))
    # each evaluation logs the mixture's datasets and the target, by name
    evals = [r for r in rows if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    names = set(scalars(evals[-1]))
    assert {"eval/loss", "eval/ppl", "eval/target/loss", "eval/target/ppl", "eval/ds/loss", "eval/ds2/loss"} <= names
    w = mix.weights
    assert evals[-1]["loss"] == pytest.approx(w[0] * evals[-1]["ds/loss"] + w[1] * evals[-1]["ds2/loss"])
    direct = evaluate(EvalConfig(model=str(tmp_path / "run" / "final"), data=[str(second / "ds2")], max_windows=6,
                                 progress=False))
    assert evals[-1]["target/loss"] == pytest.approx(direct["datasets"][str(second / "ds2")]["loss"], rel=1e-5)
    assert summary["final_eval"]["target"]["loss"] == evals[-1]["target/loss"]
    # killed as step 3 begins (after the step-2 checkpoint), then resumed: the same run
    train_cut_at(_cfg(tiny_data, second, reference, tmp_path / "cut"), 2, monkeypatch)
    train(_cfg(tiny_data, second, reference, tmp_path / "cut", resume=True), console=False)
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("run", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mixture_and_eval_data_refuse_bad_input(tiny_data, second, reference, tmp_path):
    with pytest.raises(UserError, match="one `slm score` directory per dataset"):
        _cfg(tiny_data, second, reference, tmp_path / "a", ref_scores=[str(reference / "scores")]).validate()
    with pytest.raises(UserError, match="holdout_fraction holds out windows of one dataset"):
        _cfg(tiny_data, second, reference, tmp_path / "a", holdout_fraction=0.2).validate()
    with pytest.raises(UserError, match="save_selection records windows of one dataset"):
        _cfg(tiny_data, second, reference, tmp_path / "a", save_selection=True).validate()
    with pytest.raises(UserError, match="names target twice"):
        _cfg(tiny_data, second, reference, tmp_path / "a", eval_data=["target=x", "target=y"]).validate()
    other = tmp_path / "other"
    make_corpus(tmp_path / "c.jsonl", n_docs=60)
    prepare(PrepareConfig(inputs=[str(tmp_path / "c.jsonl")], out=str(other), tokenizer=str(tiny_data / "tokenizer"),
                          seq_len=16, progress=False))
    with pytest.raises(UserError, match="differ in tokenizer or seq_len"):
        train(_cfg(tiny_data, second, reference, tmp_path / "b", data=f"{tiny_data}:1,{other}:1", ref_scores=None,
                   objective="clm", eval_data=None), console=False)
    prepare(PrepareConfig(inputs=[str(tmp_path / "c.jsonl")], out=str(tmp_path / "own"), vocab_size=300, seq_len=16,
                          progress=False))  # its own tokenizer
    with pytest.raises(UserError, match="was prepared with another tokenizer than --data"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "c"), eval_data=[f"x={tmp_path / 'own'}"],
                          progress=False), console=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
