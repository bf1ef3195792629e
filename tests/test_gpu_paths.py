"""The GPU paths, exercised on CPU before a GPU is lent: `--compile` (inductor's CPU backend) against eager, and bf16
end to end (`--precision bf16`: scoring, CLM and SLM training, evaluation) against fp32.

The compile test compiles a one-layer model of TinyLlama's architecture (grouped-query attention): about 30 s the
first time on 2 CPU cores, a few seconds once inductor's cache (TORCHINDUCTOR_CACHE_DIR, /tmp by default) holds it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_corpus

from selective_lm.config import EvalConfig, PrepareConfig, ScoreConfig, TrainConfig
from selective_lm.data import TokenDataset, prepare
from selective_lm.evaluate import evaluate
from selective_lm.scores import load_scores
from selective_lm.scoring import score
from selective_lm.train import train


def _rows(run):
    return [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), batch_size=4, max_steps=3, lr=3e-3, warmup_steps=1, log_every=1,
                eval_windows=4, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_compiled_training_matches_eager(tiny_data, reference, tiny_llama, tmp_path):
    """SLM (top-k, the chunked head with its sparse backward) through torch.compile equals eager within 1e-4 in
    every logged loss and in the final weights: the same selections, fp32 reassociation noise only."""
    slm = dict(model=str(tiny_llama), objective="slm", ratio=0.5, ref_scores=[str(reference / "scores")])
    train(_cfg(tiny_data, tmp_path / "eager", **slm), console=False)
    train(_cfg(tiny_data, tmp_path / "compiled", compile=True, **slm), console=False)
    eager, compiled = _rows(tmp_path / "eager"), _rows(tmp_path / "compiled")
    assert [r["step"] for r in eager] == [r["step"] for r in compiled]
    for a, b in zip(eager, compiled):
        for key in ("loss", "loss_selected", "selected_fraction", "excess_mean"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    wa, wb = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("eager", "compiled"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-4, msg=k)


def test_bf16_end_to_end(tiny_data, reference, tmp_path):
    """bf16 autocast on CPU through scoring, CLM and SLM training and evaluation: it runs, it is not fp32 (the numbers
    differ), and it stays within bf16's precision of fp32 (8 bits of mantissa: ~1% on a loss of ~5 nats)."""
    make_corpus(tmp_path / "c.jsonl", n_docs=40, seed=9)
    data = tmp_path / "ds"
    prepare(PrepareConfig(inputs=[str(tmp_path / "c.jsonl")], out=str(data), tokenizer=str(tiny_data / "tokenizer"),
                          seq_len=32, val_fraction=0.2, progress=False))
    ref, ds = str(reference / "ref" / "final"), TokenDataset(data)
    for p in ("bf16", "fp32"):
        score(ScoreConfig(data=str(data), model=ref, out=str(tmp_path / p), precision=p, progress=False))
    a, b = (np.asarray(load_scores(tmp_path / p, ds), dtype=np.float64) for p in ("bf16", "fp32"))
    assert not np.array_equal(a, b) and abs(a.mean() - b.mean()) < 0.01 * b.mean()
    for name, kw in (("clm", {}), ("slm", dict(objective="slm", ratio=0.5, ref_scores=[str(tmp_path / "bf16")]))):
        train(_cfg(data, tmp_path / f"{name}16", precision="bf16", **kw), console=False)
        train(_cfg(data, tmp_path / f"{name}32", precision="fp32", **kw), console=False)
        r16, r32 = _rows(tmp_path / f"{name}16"), _rows(tmp_path / f"{name}32")
        assert all(np.isfinite(r["loss"]) for r in r16)
        assert r16[0]["loss"] != r32[0]["loss"] and r16[0]["loss"] == pytest.approx(r32[0]["loss"], rel=0.01)
        assert r16[-1]["loss"] == pytest.approx(r32[-1]["loss"], rel=0.03)  # after 3 updates in bf16
    e16, e32 = (evaluate(EvalConfig(model=str(tmp_path / "slm16" / "final"), data=[str(data)], precision=p,
                                    progress=False))["datasets"][str(data)]["loss"] for p in ("bf16", "fp32"))
    assert e16 != e32 and e16 == pytest.approx(e32, rel=0.01)
