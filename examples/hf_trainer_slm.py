"""Selective Language Modeling inside the Hugging Face Trainer (and TRL), end to end on a CPU.

    python examples/hf_trainer_slm.py                     # ~20 s on 2 CPU cores (measured), writes ./hf-example/
    python examples/hf_trainer_slm.py --steps 2 --ref-steps 4 --scale 0.01 --workdir /tmp/x   # a smoke run

1. the embedded default corpora at a small scale: high-quality math and a noisy web-math corpus;
2. `slm prepare` both with one tokenizer, `slm train` a tiny reference model on the high-quality math;
3. `slm score --hf-out`: the noisy corpus as a Hugging Face dataset with a `ref_loss` column;
4. `SLMTrainer` (a `transformers.Trainer`) trains on it with offline scores, then with the reference
   model online (`ref_model=`);
5. with TRL installed: `SFTTrainer` with the same mixin on prompt/completion pairs, where only completion
   tokens can be selected.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast, TrainingArguments

from selective_lm.columns import SLMCollator, load_scored
from selective_lm.config import PrepareConfig, ScoreConfig, TrainConfig
from selective_lm.corpora.default import build_default_corpora
from selective_lm.data import TokenDataset, prepare
from selective_lm.hf import SLMArguments, SLMTrainer, SLMTrainerMixin
from selective_lm.model import build_model, load_model
from selective_lm.scoring import score
from selective_lm.train import train


def training_args(out: Path, steps: int, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, gradient_accumulation_steps=2,
                             max_steps=steps, learning_rate=2e-3, warmup_steps=2, logging_steps=max(1, steps // 4),
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="hf-example", help="where everything is written")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of each Trainer run")
    ap.add_argument("--scale", type=float, default=0.05, help="size of the generated corpora (1.0 = the study's)")
    ap.add_argument("--ref-steps", type=int, default=60, help="optimizer steps of the reference model")
    a = ap.parse_args()
    work = Path(a.workdir)

    corpora = build_default_corpora(work / "corpora", scale=a.scale, progress=False)
    hq, noisy = work / "ds-hq", work / "ds-noisy"
    if not (hq / "manifest.json").is_file():
        prepare(PrepareConfig(inputs=[str(corpora.hq_math)], out=str(hq), vocab_size=512, seq_len=64, progress=False))
    if not (noisy / "manifest.json").is_file():
        prepare(PrepareConfig(inputs=[str(corpora.web_math)], out=str(noisy), tokenizer=str(hq / "tokenizer"),
                              seq_len=64, progress=False))
    ref = work / "reference"
    if not (ref / "final").is_dir():  # a reference is a trained model: here, a few epochs' worth on the HQ math
        train(TrainConfig(data=str(hq), out=str(ref), model="tiny", batch_size=16, max_steps=a.ref_steps,
                          lr=3e-3, warmup_steps=2, progress=False), console=False)
    scored = work / "noisy-scored"
    if not scored.is_dir():
        score(ScoreConfig(data=str(noisy), model=str(ref / "final"), out=str(work / "scores"), hf_out=str(scored),
                          progress=False))

    ds = TokenDataset(noisy)
    data = load_scored(scored)
    split = data.train_test_split(test_size=0.1, seed=0)
    results = {}
    for name, extra in (("offline", {}), ("online", {"ref_model": load_model(ref / "final")})):
        train_set = split["train"] if name == "offline" else split["train"].remove_columns(["ref_loss"])
        model = build_model("tiny", ds.vocab_size, ds.seq_len, seed=0, eos_id=ds.eos_id)
        trainer = SLMTrainer(model=model, args=training_args(work / f"hf-{name}", a.steps), train_dataset=train_set,
                             eval_dataset=split["test"], data_collator=SLMCollator(pad_id=ds.eos_id),
                             slm_args=SLMArguments(ratio=0.6), **extra)
        trainer.train()
        last = [r for r in trainer.state.log_history if "selected_fraction" in r][-1]
        results[name] = {"eval_loss": trainer.evaluate()["eval_loss"], "loss_selected": last["loss_selected"],
                         "loss": last["loss"], "selected_fraction": last["selected_fraction"]}
        print(f"SLMTrainer ({name} reference losses): {json.dumps(results[name])}")

    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        print("TRL is not installed (pip install trl): skipped the SFTTrainer example")
        return
    import datasets

    class SLMSFTTrainer(SLMTrainerMixin, SFTTrainer):
        """TRL's SFTTrainer with SLM: its completion-only labels decide which tokens can be selected."""

    rows = [json.loads(line) for line in corpora.fewshot_exemplars.read_text().splitlines()] * 16
    pairs = datasets.Dataset.from_list([{"prompt": f"Problem: {r['question']}\nSolution:",
                                         "completion": f" {r['solution']}\nAnswer: {r['answer']}\n"} for r in rows])
    tok = PreTrainedTokenizerFast(tokenizer_file=str(hq / "tokenizer" / "tokenizer.json"))
    tok.pad_token = tok.eos_token = tok.convert_ids_to_tokens(ds.eos_id)
    cfg = SFTConfig(output_dir=str(work / "hf-sft"), per_device_train_batch_size=8, max_steps=max(2, a.steps // 5),
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                    disable_tqdm=True, max_length=ds.seq_len, completion_only_loss=True)
    sft = SLMSFTTrainer(model=load_model(ref / "final"), args=cfg, train_dataset=pairs, processing_class=tok,
                        ref_model=load_model(ref / "final"), slm_args=SLMArguments(ratio=0.5))
    sft.train()
    last = [r for r in sft.state.log_history if "selected_fraction" in r][-1]
    results["sft"] = {k: last[k] for k in ("loss_selected", "loss", "selected_fraction")}
    print(f"SLMSFTTrainer (TRL, completion-only, online reference): {json.dumps(results['sft'])}")
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
