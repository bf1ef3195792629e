import json

import numpy as np
import pytest

import selective_lm.scoring as scoring
from selective_lm.cli import main
from selective_lm.config import EvalConfig, ScoreConfig, TrainConfig
from selective_lm.evaluate import evaluate, load_token_losses
from selective_lm.train import train


@pytest.fixture(scope="module")
def model_dir(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    train(TrainConfig(data=str(tiny_data), out=str(root / "run"), max_steps=6, batch_size=4, progress=False), console=False)
    return root / "run" / "final"


def test_score_resumes_and_partial_never_looks_complete(tiny_data, model_dir, tmp_path, monkeypatch):
    full = scoring.score(ScoreConfig(data=str(tiny_data), model=str(model_dir), out=str(tmp_path / "a"),
                                     batch_size=8, progress=False))
    monkeypatch.setattr(scoring, "FLUSH_EVERY_S", -1.0)  # write progress after every batch
    calls = {"n": 0}
    real = scoring.model_token_losses

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scoring, "model_token_losses", dying)
    cfg = ScoreConfig(data=str(tiny_data), model=str(model_dir), out=str(tmp_path / "b"), batch_size=8, progress=False)
    with pytest.raises(KeyboardInterrupt):
        scoring.score(cfg)
    assert not (tmp_path / "b" / "manifest.json").exists() and not (tmp_path / "b" / "ref_losses.bin").exists()
    assert np.fromfile(tmp_path / "b" / "done.bin", dtype=np.uint8).sum() == 24  # three batches marked done
    resumed_from = []
    monkeypatch.setattr(scoring, "model_token_losses", lambda *a, **k: (resumed_from.append(1), real(*a, **k))[1])
    m = scoring.score(cfg)
    n_batches = -(-m["windows"] // 8)
    assert len(resumed_from) == n_batches - 3  # the three finished batches were not recomputed
    a = np.fromfile(tmp_path / "a" / "ref_losses.bin", dtype=np.float16)
    b = np.fromfile(tmp_path / "b" / "ref_losses.bin", dtype=np.float16)
    assert np.array_equal(a, b) and m["mean_loss"] == pytest.approx(full["mean_loss"])


def test_eval_perplexity_and_dump(tiny_data, model_dir, tmp_path, capsys):
    r = evaluate(EvalConfig(model=str(model_dir), data=[str(tiny_data)], dump=str(tmp_path / "dump"), progress=False))
    (summary,) = r["datasets"].values()
    losses = load_token_losses(summary["dump"])
    assert losses.dtype == np.float16 and losses.shape[1] == 32
    assert summary["loss"] == pytest.approx(float(np.asarray(losses, dtype=np.float64).mean()), rel=1e-3)
    assert summary["ppl"] == pytest.approx(np.exp(summary["loss"]))
    code = main(["eval", "--model", str(model_dir), "--data", str(tiny_data), "--out", str(tmp_path / "m.json"),
                 "--no-progress"])
    assert code == 0 and "ppl" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["datasets"]


def test_fewshot_exact_match_counts(tiny_data, model_dir, tmp_path):
    from transformers import AutoTokenizer

    from selective_lm.fewshot import extract_answer, fewshot_accuracy

    assert extract_answer(" 2 + 2 = 4.\nAnswer: 4.\n") == "4"
    assert extract_answer("no answer here") is None
    tok = AutoTokenizer.from_pretrained(model_dir)
    from selective_lm.model import load_model
    model = load_model(model_dir)
    qs = [{"question": "What is 2 + 2?", "answer": "4", "family": "add"}] * 3
    ex = [{"question": "What is 1 + 1?", "solution": "1 + 1 = 2.", "answer": "2"}]
    r = fewshot_accuracy(model, tok, qs, ex, shots=1, max_new_tokens=8, device="cpu")
    assert r["n"] == 3 and 0 <= r["correct"] <= 3 and r["accuracy"] == r["correct"] / 3
