"""What SLM costs inside the Hugging Face Trainer: tokens/s of the Trainer's own CLM loss against
SLMTrainer with offline scores (the dataset column), an online reference, and the step scope.

Prints a table. Modes run round-robin (``--rounds``) in one process, each from the same fresh model, and
the clock runs from the end of the first optimizer step to the end of the last, so start-up, data
loading set-up and the first step's allocations are left out. Target: SLMTrainer offline >= 0.95x the
Trainer's CLM tokens/s (the plain Trainer materialises [tokens, vocab] logits; SLM's chunked loss does not).

    python benchmarks/hf_trainer.py [--preset tiny] [--seq-len 128] [--batch-size 16] [--grad-accum 2]
                                    [--steps 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from selective_lm.columns import SLMCollator, load_scored
from selective_lm.config import PrepareConfig, ScoreConfig, TrainConfig
from selective_lm.corpora.default import build_default_corpora
from selective_lm.data import TokenDataset, prepare
from selective_lm.hf import SLMArguments, SLMTrainer
from selective_lm.model import build_model, load_model
from selective_lm.scoring import score
from selective_lm.train import train

MODES = ("trainer-clm", "slm-offline", "slm-offline-step", "slm-online")


class Clock(TrainerCallback):
    """Seconds from the end of optimizer step 1 to the end of the last step."""

    def __init__(self):
        self.t0 = self.t1 = None

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        if state.global_step == 1:
            self.t0 = now
        self.t1 = now


def setup(root: Path, seq_len: int) -> tuple[Path, Path, Path]:
    corpora = build_default_corpora(root / "corpora", scale=0.05, progress=False)
    hq, noisy = root / "hq", root / "noisy"
    prepare(PrepareConfig(inputs=[str(corpora.hq_math)], out=str(hq), vocab_size=2048, seq_len=seq_len,
                          progress=False))
    prepare(PrepareConfig(inputs=[str(corpora.web_math)], out=str(noisy), tokenizer=str(hq / "tokenizer"),
                          seq_len=seq_len, progress=False))
    train(TrainConfig(data=str(hq), out=str(root / "ref"), model="tiny", batch_size=16, max_steps=20, lr=3e-3,
                      progress=False), console=False)
    score(ScoreConfig(data=str(noisy), model=str(root / "ref" / "final"), out=str(root / "scores"),
                      hf_out=str(root / "scored"), progress=False))
    return noisy, root / "scored", root / "ref" / "final"


def run(mode: str, a, noisy: Path, scored: Path, ref: Path, out: Path) -> float:
    ds = TokenDataset(noisy)
    data = load_scored(scored, verify=False)
    model = build_model(a.preset, ds.vocab_size, ds.seq_len, seed=0, eos_id=ds.eos_id)
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=a.batch_size // a.grad_accum,
                             gradient_accumulation_steps=a.grad_accum, max_steps=a.steps, learning_rate=1e-3,
                             save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, logging_steps=a.steps, train_sampling_strategy="sequential")
    clock = Clock()
    common = dict(model=model, args=args, data_collator=SLMCollator(pad_id=ds.eos_id), callbacks=[clock])
    if mode == "trainer-clm":
        tr = Trainer(train_dataset=data.remove_columns(["ref_loss"]), **common)
    elif mode == "slm-online":
        tr = SLMTrainer(train_dataset=data.remove_columns(["ref_loss"]), ref_model=load_model(ref), **common)
    else:
        scope = "step" if mode.endswith("-step") else "microstep"
        tr = SLMTrainer(train_dataset=data, slm_args=SLMArguments(ratio=0.6, selection_scope=scope), **common)
    tr.train()
    return (a.steps - 1) * a.batch_size * ds.seq_len / (clock.t1 - clock.t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="windows per optimizer step")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        noisy, scored, ref = setup(root, a.seq_len)
        rates = {m: [] for m in MODES}
        for r in range(a.rounds):
            for m in MODES:
                rates[m].append(run(m, a, noisy, scored, ref, root / f"{m}-{r}"))
    base = statistics.median(rates["trainer-clm"])
    print(f"\n{'mode':<18} {'tokens/s (median)':>18} {'spread':>8} {'vs Trainer CLM':>15}")
    for m in MODES:
        med = statistics.median(rates[m])
        spread = (max(rates[m]) - min(rates[m])) / med
        print(f"{m:<18} {med:>18.0f} {spread:>7.1%} {med / base:>14.2f}x")


if __name__ == "__main__":
    main()
