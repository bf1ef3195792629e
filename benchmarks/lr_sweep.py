"""Learning-rate sweep for the study's continual-pretraining (or reference) stage, on VALIDATION data only.

Uses a finished study directory (its base, datasets and reference scores) and trains the CLM
baseline (and optionally SLM top-k) at several peak learning rates with the study's budget, then
prints the target-domain (HQ math) and noisy validation loss of each. The study's `cpt_lr` is the
value that minimises the *CLM baseline's* target-domain validation loss: the baseline gets its best
setting, and every arm uses it. The few-shot questions (the test split) are never looked at.

    python benchmarks/lr_sweep.py --study slm-study --lrs 1e-3,2e-3,4e-3 [--arms clm,topk]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--lrs", default="1e-3,2e-3,4e-3")
    ap.add_argument("--arms", default="clm")
    ap.add_argument("--stage", choices=("cpt", "reference"), default="cpt",
                    help="cpt: continual pretraining on web math; reference: the base continued on HQ math")
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--windows", type=int, default=96, help="validation windows per dataset")
    ap.add_argument("--tokens", type=int, default=0, help="token budget (default: the study's cpt_tokens)")
    ap.add_argument("--seed", type=int, default=0, help="the pipeline (seed-N/) of a v2 study whose data and base to use")
    args = ap.parse_args()

    from selective_lm.config import TrainConfig
    from selective_lm.data import TokenDataset
    from selective_lm.evaluate import dataset_token_losses, loss_summary
    from selective_lm.model import load_model
    from selective_lm.train import train

    root = Path(args.study)
    cfg = yaml.safe_load((root / "study.yaml").read_text())
    study = root / f"seed-{args.seed}" if (root / f"seed-{args.seed}").is_dir() else root  # v2: one pipeline per seed
    target, noisy = TokenDataset(study / "data" / "hq_math"), TokenDataset(study / "data" / "web_math")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms.split(","):
            for lr in [float(x) for x in args.lrs.split(",")]:
                kw = dict(objective="slm", strategy="topk", ratio=args.ratio, ref_scores=str(study / "scores" / "web_math")) \
                    if arm != "clm" else {}
                out = Path(tmp) / f"{arm}-{lr:g}"
                data = noisy.path if args.stage == "cpt" else target.path
                train(TrainConfig(data=str(data), out=str(out), model=str(study / "runs" / "base" / "final"),
                                  max_tokens=args.tokens or cfg["cpt_tokens"], lr=lr, batch_size=cfg["batch_size"],
                                  warmup_steps=cfg["warmup_steps"], seed=0, data_seed=0, progress=False,
                                  eval_windows=8, **kw), console=False)
                model = load_model(out / "final").eval()
                t = loss_summary(dataset_token_losses(model, target, "validation", args.windows))
                n = loss_summary(dataset_token_losses(model, noisy, "validation", args.windows))
                rows.append((arm, lr, t["loss"], n["loss"]))
                print(f"{arm:5s} lr {lr:8.1e}: target val loss {t['loss']:.4f}  noisy val loss {n['loss']:.4f}", flush=True)
    print("\n| arm | lr | target val loss | noisy val loss |\n|---|---:|---:|---:|")
    for arm, lr, t, n in rows:
        print(f"| {arm} | {lr:g} | {t:.4f} | {n:.4f} |")


if __name__ == "__main__":
    main()
