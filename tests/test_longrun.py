"""What a long continual-pretraining run needs: learning-rate schedules (resume-exact), the log (banner, elapsed and
ETA, "resumed from step N"), `slm export`, and the TinyLlama recipes."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import train_cut_at
from safetensors.torch import load_file

from selective_lm.cli import main
from selective_lm.config import ExportConfig, LoraConfig, TrainConfig
from selective_lm.export import export
from selective_lm.files import UserError
from selective_lm.model import load_model
from selective_lm.train import train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="tiny", batch_size=4, max_steps=8, lr=1e-2, warmup_steps=2,
                log_every=1, eval_windows=4, progress=False)
    return TrainConfig(**{**base, **kw})


def _rows(run, kind="train"):
    return [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines() if f'"{kind}"' in x]


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_lr_schedules(tiny_data, tmp_path, schedule):
    """The lr of each logged step (after it, as the scheduler left it) against the closed form: a linear warm-up, then
    cosine to min_lr_ratio, or constant until the last decay_fraction of the steps and linear to min_lr_ratio."""
    cfg = _cfg(tiny_data, tmp_path / "r", lr_schedule=schedule, decay_fraction=0.25, min_lr_ratio=0.1, max_steps=12)
    train(cfg, console=False)
    lrs = [r["lr"] / cfg.lr for r in _rows(tmp_path / "r")]

    def expected(s):  # the factor of optimizer step s (0-based), which the row of step s logs as the next one's
        if s < 2:
            return (s + 1) / 2
        if schedule == "constant":
            return 1.0
        if schedule == "wsd":  # 12 - 2 warm-up steps: the last round(0.25 x 10) = 2 decay to 0.1 at the end
            return 1.0 - 0.9 * min(1.0, max(0, s + 1 - 10) / 2)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 10))

    assert lrs == pytest.approx([expected(s) for s in range(1, 13)])
    if schedule == "wsd":
        # the row of step s shows the lr of step s + 1: steps 3-10 at lr, step 11 at 0.55 lr, the last (12) at 0.1 lr
        assert lrs[8] == 1.0 and lrs[9] == pytest.approx(0.55) and lrs[10] == pytest.approx(0.1)


def test_wsd_resumes_exactly_and_the_log_says_where_it_is(tiny_data, reference, tmp_path, monkeypatch, capsys):
    kw = dict(lr_schedule="wsd", decay_fraction=0.5, ckpt_every=4, objective="slm", ratio=0.5,
              ref_scores=[str(reference / "scores")], log_every=2)
    train(_cfg(tiny_data, tmp_path / "whole", **kw), console=True)
    out = capsys.readouterr().out
    banner = out.split("step 2/8")[0]
    for needle in ("parameters", "trainable (100.00%)", "128 tokens per step (batch 4 x accumulation 1 x 1 ranks x "
                   "seq_len 32)", "8 steps, 1,024 tokens", "slm topk ratio 0.5, scope microstep, score excess",
                   "lr 0.01 wsd (warm-up 2), decay 50%", "world size 1"):
        assert needle in banner, (needle, banner)
    steps = [line for line in out.splitlines() if line.startswith("step ") and "/8 " in line]
    assert len(steps) == 4 and all(" elapsed 0:00:" in s and " eta 0:00:" in s for s in steps), steps
    train_cut_at(_cfg(tiny_data, tmp_path / "cut", **kw), 5, monkeypatch)
    capsys.readouterr()
    train(_cfg(tiny_data, tmp_path / "cut", resume=True, **kw), console=True)
    assert f"resumed from step 4 ({tmp_path / 'cut' / 'checkpoints' / 'step_000004'})" in capsys.readouterr().out
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in _rows(tmp_path / "whole")]
    assert strip == [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in _rows(tmp_path / "cut")]


def test_export_merges_lora_into_a_plain_hf_directory(tiny_data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    train(_cfg(tiny_data, tmp_path / "lora", max_steps=2, lora=LoraConfig(r=4, alpha=8)), console=False)
    assert main(["export", "--run", str(tmp_path / "lora"), "--out", str(tmp_path / "x")]) == 2
    assert "pass --merge" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", "--run", str(tmp_path / "lora"), "--out", str(tmp_path / "x"), "--merge"]) == 0
    files = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert "config.json" in files and "model.safetensors" in files and "tokenizer.json" in files
    assert not [f for f in files if f.startswith("adapter")]  # a plain model: nothing for PEFT
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    assert type(plain) is LlamaForCausalLM
    merged = load_model(tmp_path / "lora" / "final")  # the base with the adapter merged, as slm loads it
    ids = torch.tensor([[1, 5, 9, 30, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-5)
        base = load_model(tmp_path / "lora" / "base")
        assert not torch.allclose(base(ids).logits, merged(ids).logits)  # the adapter changed something
    tok = AutoTokenizer.from_pretrained(tmp_path / "x")
    assert tok.decode(tok.encode("the sum of 3 and 4")) == "the sum of 3 and 4"
    # a full run's files are copied as they are; an earlier export is replaced only with --overwrite
    train(_cfg(tiny_data, tmp_path / "full", max_steps=1), console=False)
    with pytest.raises(UserError, match="already holds an export"):
        export(ExportConfig(run=str(tmp_path / "full"), out=str(tmp_path / "x")))
    record = export(ExportConfig(run=str(tmp_path / "full"), out=str(tmp_path / "x"), overwrite=True))
    assert record["merged_lora"] is False
    assert (tmp_path / "x" / "model.safetensors").read_bytes() == \
        (tmp_path / "full" / "final" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="neither a finished run"):
        export(ExportConfig(run=str(tmp_path), out=str(tmp_path / "y")))


def test_tinyllama_recipes(tiny_data, reference, tiny_llama, tmp_path, capsys):
    """The paper's settings resolve as written (1M tokens per step on 8 ranks at seq_len 2048), and both recipes
    train a tiny model of TinyLlama's architecture."""
    cpt, ref = ROOT / "configs" / "cpt-tinyllama.yaml", ROOT / "configs" / "ref-tinyllama.yaml"
    assert main(["train", "--config", str(cpt), "--data", str(tiny_data), "--ref-scores", str(reference / "scores"),
                 "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    c = yaml.safe_load(capsys.readouterr().out)
    assert (c["lr"], c["ratio"], c["strategy"], c["objective"], c["lr_schedule"]) == (8e-5, 0.6, "topk", "slm", "cosine")
    assert c["batch_size"] * c["grad_accum"] * 8 * 2048 == 1_048_576
    assert main(["train", "--config", str(ref), "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    r = yaml.safe_load(capsys.readouterr().out)
    assert (r["lr"], r["epochs"], r["objective"], r["lr_schedule"]) == (5e-5, 3, "clm", "cosine")
    small = ["--model", str(tiny_llama), "batch_size=2", "grad_accum=2", "max_tokens=0", "warmup_steps=1", "eval_every=0",
             "ckpt_every=0", "eval_windows=4", "--no-progress"]
    assert main(["train", "--config", str(ref), "--data", str(tiny_data), "--out", str(tmp_path / "ref"), *small,
                 "epochs=0.05"]) == 0
    assert main(["train", "--config", str(cpt), "--data", str(tiny_data), "--ref-scores", str(reference / "scores"),
                 "--out", str(tmp_path / "cpt"), *small, "max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "128 tokens per step (batch 2 x accumulation 2 x 1 ranks x seq_len 32)" in out
    run = json.loads((tmp_path / "cpt" / "run.json").read_text())
    assert run["steps"] == 2 and run["strategy"] == "topk" and run["selection_scope"] == "step"
    n = json.loads((tiny_data / "manifest.json").read_text())["splits"]["train"]["windows"]
    assert json.loads((tmp_path / "ref" / "run.json").read_text())["steps"] == int(0.05 * n) // 4
