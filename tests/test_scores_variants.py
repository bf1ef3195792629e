"""Scores beyond the excess loss (reference, entropy, excess+entropy, self) and several references."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import selective_lm.objective as objective_mod
import selective_lm.scoring as scoring
from selective_lm.cli import main
from selective_lm.config import ScoreConfig, TrainConfig
from selective_lm.data import TokenDataset
from selective_lm.model import load_model, model_token_losses, save_checkpoint_dir
from selective_lm.objective import Objective
from selective_lm.reference import RefLosses, RefStats, combine, token_score
from selective_lm.scores import load_entropy, load_scores
from selective_lm.train import train


def _f32(m, idx):
    return np.asarray(m[idx], dtype=np.float32)


@pytest.fixture(scope="module")
def small_ref(tiny_data, tmp_path_factory):
    """A reference of another size than the tiny preset (hidden 64, 2 layers) and its scores of tiny_data."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ds = TokenDataset(tiny_data)
    root = tmp_path_factory.mktemp("small")
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=ds.vocab_size, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=128, tie_word_embeddings=False))
    save_checkpoint_dir(model, root / "model", ds.tokenizer_dir)
    scoring.score(ScoreConfig(data=str(tiny_data), model=str(root / "model"), out=str(root / "scores"), progress=False))
    return root


def _run(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="tiny", objective="slm", ratio=0.5, batch_size=4, max_steps=3,
                lr=3e-3, warmup_steps=1, log_every=1, eval_windows=4, progress=False)
    return train(TrainConfig(**{**base, **kw}), console=False)


# --------------------------------------------------------------------------- entropy
def test_entropy_equals_brute_force_float64(tiny_data, reference):
    ds = TokenDataset(tiny_data)
    model = load_model(reference / "ref" / "final").eval()
    idx = np.array([3, 0, ds.num_windows("train") - 1])
    inputs, targets = ds.batch("train", idx)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=inputs).logits.double(), -1)
        brute = -(logp.exp() * logp).sum(-1)
        plain = model_token_losses(model, inputs, targets)
        for chunked in (True, False):
            loss, ent = model_token_losses(model, inputs, targets, chunked=chunked, entropy=True)
            torch.testing.assert_close(ent.double(), brute, atol=1e-4, rtol=1e-5)
            if chunked:  # the losses do not change when the entropy comes along
                assert torch.equal(loss, plain)
    # the scored file: the same positions as the losses, float16
    m = json.loads((reference / "scores" / "manifest.json").read_text())
    assert m["entropy_file"] == "ref_entropy.bin" and m["shape"] == [ds.num_windows("train"), ds.seq_len]
    stored = load_entropy(reference / "scores", ds)
    assert stored.shape == load_scores(reference / "scores", ds).shape
    np.testing.assert_allclose(_f32(stored, idx), brute.numpy(), atol=2e-2, rtol=2e-3)
    assert m["mean_entropy"] == pytest.approx(float(np.asarray(stored, dtype=np.float64).mean()), rel=1e-6)
    assert 0 < m["mean_entropy"] < np.log(ds.vocab_size)


def test_no_entropy_scores_have_the_same_losses_and_refuse_entropy_scores(tiny_data, reference, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["score", "--data", str(tiny_data), "--model", str(reference / "ref" / "final"), "--out", str(out),
                 "--no-entropy", "--no-progress"]) == 0
    assert "mean entropy" not in capsys.readouterr().out
    assert not (out / "ref_entropy.bin").exists() and "entropy_file" not in json.loads((out / "manifest.json").read_text())
    assert (out / "ref_losses.bin").read_bytes() == (reference / "scores" / "ref_losses.bin").read_bytes()
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--objective", "slm",
                 "--ref-scores", str(out), "--score", "entropy", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "no predictive entropy" in err and "--entropy" in err


def test_resumed_scoring_gives_identical_entropy(tiny_data, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "FLUSH_EVERY_S", -1.0)
    calls, real = {"n": 0}, scoring.model_token_losses

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scoring, "model_token_losses", dying)
    cfg = ScoreConfig(data=str(tiny_data), model=str(reference / "ref" / "final"), out=str(tmp_path / "s"),
                      batch_size=16, progress=False)
    with pytest.raises(KeyboardInterrupt):
        scoring.score(cfg)
    assert (tmp_path / "s" / "ref_entropy.bin.partial").is_file() and not (tmp_path / "s" / "manifest.json").exists()
    monkeypatch.setattr(scoring, "model_token_losses", real)
    m = scoring.score(cfg)
    for f in ("ref_losses.bin", "ref_entropy.bin"):
        assert (tmp_path / "s" / f).read_bytes() == (reference / "scores" / f).read_bytes(), f
    assert m["entropy_sha256"] == json.loads((reference / "scores" / "manifest.json").read_text())["entropy_sha256"]


# --------------------------------------------------------------------------- scores
def _top(score, ratio=0.5):
    return Objective("slm", "topk", ratio).select([score], [torch.ones_like(score, dtype=torch.bool)], None)[0]


def test_scores_rank_as_documented():
    tl = torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    ref = RefStats(loss=torch.tensor([[3.0, 0.5, 2.0, 0.1]]), entropy=torch.tensor([[0.2, 3.0, 1.0, 0.1]]))
    # reference: −L_ref, the tokens the reference predicts best
    assert _top(token_score("reference", tl, ref)).tolist() == [[False, True, False, True]]
    # entropy: −H_ref, the tokens the reference is most confident on
    assert _top(token_score("entropy", tl, ref)).tolist() == [[True, False, False, True]]
    assert torch.equal(token_score("excess", tl, ref), tl - ref.loss)
    assert torch.equal(token_score("self", tl, ref), tl - ref.loss)
    assert torch.equal(token_score("excess+entropy", tl, ref, 0.5), tl - ref.loss - 0.5 * ref.entropy)
    # excess [1, 3.5, 2, 3.9] - 1.0 * entropy = [0.8, 0.5, 1.0, 3.8]: the confident excess wins over the unsure one
    assert _top(token_score("excess+entropy", tl, ref)).tolist() == [[False, False, True, True]]
    assert _top(token_score("excess", tl, ref)).tolist() == [[False, True, False, True]]


def test_combine_equals_hand_computation(tiny_data, reference, small_ref):
    ds = TokenDataset(tiny_data)
    dirs = [str(reference / "scores"), str(small_ref / "scores")]
    idx = np.array([7, 2, 11])
    loss = np.stack([_f32(load_scores(d, ds), idx) for d in dirs])
    ent = np.stack([_f32(load_entropy(d, ds), idx) for d in dirs])
    hand = {"min": lambda x: x.min(0), "mean": lambda x: (x[0] + x[1]) / 2,
            "weighted": lambda x: (3 * x[0].astype(np.float64) + 1 * x[1]) / 4}
    for how, fn in hand.items():
        cfg = TrainConfig(data=str(tiny_data), out="unused", objective="slm", ref_scores=dirs, ref_combine=how,
                          ref_weights=[3.0, 1.0] if how == "weighted" else None, score="excess+entropy")
        r = RefLosses(cfg, ds, torch.device("cpu"))(idx, None, None)
        np.testing.assert_allclose(r.loss.numpy(), fn(loss), rtol=1e-6, atol=1e-6, err_msg=how)
        np.testing.assert_allclose(r.entropy.numpy(), fn(ent), rtol=1e-6, atol=1e-6, err_msg=how)
    x = [torch.randn(2, 5) for _ in range(3)]
    assert torch.equal(combine(x[:1], "min"), x[0]) and torch.equal(combine([x[0], x[0]], "mean"), x[0])
    torch.testing.assert_close(combine(x, "weighted", [1, 1, 2]), (x[0] + x[1] + 2 * x[2]) / 4)


def test_online_reference_entropy_matches_offline(tiny_data, reference):
    ds = TokenDataset(tiny_data)
    idx = np.array([1, 5, 9])
    inputs, targets = ds.batch("train", idx)
    common = dict(data=str(tiny_data), out="unused", objective="slm", score="entropy")
    on = RefLosses(TrainConfig(ref_model=str(reference / "ref" / "final"), **common), ds, torch.device("cpu"))
    off = RefLosses(TrainConfig(ref_scores=str(reference / "scores"), **common), ds, torch.device("cpu"))
    a, b = on(idx, inputs, targets), off(idx, inputs, targets)
    torch.testing.assert_close(a.entropy, b.entropy, atol=2e-2, rtol=2e-3)
    torch.testing.assert_close(a.loss, b.loss, atol=2e-2, rtol=2e-3)


# --------------------------------------------------------------------------- training
def test_min_of_identical_references_is_one_reference(tiny_data, reference, tmp_path):
    s = str(reference / "scores")
    _run(tiny_data, tmp_path / "one", ref_scores=s, max_steps=2)
    _run(tiny_data, tmp_path / "two", ref_scores=[s, s], ref_combine="min", max_steps=2)
    wa, wb = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("one", "two"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_excess_entropy_and_two_references(tiny_data, reference, small_ref, tmp_path):
    common = ["train", "--data", str(tiny_data), "--objective", "slm", "--ratio", "0.5", "--batch-size", "4",
              "--max-steps", "2", "--eval-windows", "4", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "ent"), "--ref-scores", str(reference / "scores"),
                          "--score", "excess+entropy", "--entropy-weight", "0.5"]) == 0
    run = json.loads((tmp_path / "ent" / "run.json").read_text())
    assert run["score"] == "excess+entropy" and run["entropy_weight"] == 0.5 and not run["self_reference"]
    two = f"{reference / 'scores'},{small_ref / 'scores'}"
    assert main(common + ["--out", str(tmp_path / "two"), "--ref-scores", two, "--ref-combine", "weighted",
                          "--ref-weights", "2,1"]) == 0
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert len(run["reference_models"]) == 2 and run["ref_combine"] == "weighted" and run["ref_weights"] == [2.0, 1.0]
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["selected_fraction"] == pytest.approx(0.5, abs=0.01)


def test_weak_reference_guides_a_larger_model_as_self_reference(tiny_data, small_ref, tmp_path):
    """Scores are per token whatever the reference's size: a 2-layer reference guides the 4-layer tiny preset."""
    s = _run(tiny_data, tmp_path / "w2s", ref_scores=str(small_ref / "scores"), score="self", max_steps=2)
    assert s["self_reference"] and s["score"] == "self"
    assert s["reference_models"] == [str((small_ref / "model").resolve())]
    rows = [json.loads(x) for x in (tmp_path / "w2s" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["selected_fraction"] == pytest.approx(0.5, abs=0.01) for r in rows if r["type"] == "train")


def test_step_scope_accumulation_exact_with_entropy_score_and_two_references(tiny_data, reference, small_ref,
                                                                             tmp_path, monkeypatch):
    common = dict(strategy="topk", ratio=0.4, selection_scope="step", score="excess+entropy", ref_combine="min",
                  ref_scores=[str(reference / "scores"), str(small_ref / "scores")], max_steps=2)
    masks = {}
    real = objective_mod.Objective.select
    for name, bs, acc in (("big", 8, 1), ("acc", 2, 4)):
        calls = []

        def select(self, excess, valid, generator, calls=calls):
            out = real(self, excess, valid, generator)
            calls.append(torch.cat([m.reshape(-1) for m in out]))
            return out

        monkeypatch.setattr(objective_mod.Objective, "select", select)
        _run(tiny_data, tmp_path / name, batch_size=bs, grad_accum=acc, **common)
        masks[name] = calls
        monkeypatch.undo()
    assert len(masks["big"]) == len(masks["acc"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(masks["big"], masks["acc"]))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra, words", [
    (["--score", "surprise"], "unknown score 'surprise'"),
    (["--score", "excess+entropy", "--entropy-weight", "-1"], "entropy_weight must be >= 0"),
    (["--ref-combine", "weighted", "--ref-weights", "1,2,3"], "one weight per ref_scores directory"),
    (["--ref-weights", "1"], "ref_weights are used by ref_combine=weighted only"),
    (["--ref-combine", "median"], "unknown ref_combine"),
])
def test_bad_score_options_exit_2_with_one_line(tiny_data, reference, tmp_path, capsys, extra, words):
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--objective", "slm",
                 "--ref-scores", f"{reference / 'scores'},{reference / 'scores'}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and words in err, err


def test_self_without_scores_and_references_of_another_dataset_are_refused(tiny_data, reference, tmp_path, capsys):
    ref_model = str(reference / "ref" / "final")
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--objective", "slm",
                 "--ref-model", ref_model, "--score", "self"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "score=self needs" in err
    other = tmp_path / "other"  # scores of another dataset with the same shape: only the fingerprint tells
    shutil.copytree(reference / "scores", other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**m, "dataset_fingerprint": "0" * 16}))
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--objective", "slm",
                 "--ref-scores", f"{reference / 'scores'},{other}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "belong to another dataset" in err and str(other) in err
