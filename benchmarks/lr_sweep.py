"""Learning-rate sweep for the study's continual-pretraining (or reference) stage, on VALIDATION data only.

Uses a finished study directory (its base, datasets and reference scores) and trains the CLM
baseline (and optionally SLM top-k) at several peak learning rates with the study's budget, then
prints the target-domain (HQ math) and noisy validation loss of each. The study's `cpt_lr` is the
value that minimises the *CLM baseline's* target-domain validation loss: the baseline gets its best
setting, and every arm uses it. The few-shot questions (the test split) are never looked at.

    python benchmarks/lr_sweep.py --study slm-study --lrs 1e-3,2e-3,4e-3 [--arms clm,topk]
    python benchmarks/lr_sweep.py --study slm-study --stage reference --lrs 2e-3,4e-3 --batch-sizes 2,4,16

``--stage reference`` trains the base on the study's HQ share (hq_ratio × cpt_tokens, the windows its reference
uses) for reference_epochs, at each batch size and lr, and reports the HQ-math validation loss.
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
    ap.add_argument("--seed", type=int, default=0, help="the pipeline (seed-N/) of a study whose data and base to use")
    ap.add_argument("--batch-sizes", default="", help="reference stage: batch sizes to try (default: the study's)")
    args = ap.parse_args()

    from selective_lm.config import TrainConfig
    from selective_lm.data import TokenDataset
    from selective_lm.evaluate import dataset_token_losses, loss_summary
    from selective_lm.model import load_model
    from selective_lm.train import train

    from selective_lm.study.config import StudyConfig
    from selective_lm.study.layout import Study
    from selective_lm.study.stages import _hq_holdout

    root = Path(args.study)
    cfg = yaml.safe_load((root / "study.yaml").read_text())
    sc = StudyConfig(**{k: v for k, v in cfg.items() if k in StudyConfig.__dataclass_fields__ and k != "lora"})
    st = Study(sc)
    study = root / f"seed-{args.seed}"
    base = st.base_ckpt(args.seed)
    target, noisy = TokenDataset(study / "data" / "hq_math"), TokenDataset(study / "data" / "web_math")
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [
        cfg.get("reference_batch_size", 2) if args.stage == "reference" else cfg["batch_size"]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms.split(",") if args.stage == "cpt" else ["reference"]:
            for bs in batches:
                for lr in [float(x) for x in args.lrs.split(",")]:
                    kw = dict(objective="slm", strategy="topk", ratio=args.ratio,
                              ref_scores=str(study / "scores" / "web_math")) if arm not in ("clm", "reference") else {}
                    if args.stage == "reference":  # the reference's HQ share, for reference_epochs
                        kw.update(_hq_holdout(st, args.seed, sc.hq_ratio))
                        tokens = int(sc.reference_epochs * st.hq_windows(0) * sc.seq_len)
                    else:
                        tokens = args.tokens or cfg["cpt_tokens"]
                    out = Path(tmp) / f"{arm}-{bs}-{lr:g}"
                    data = noisy.path if args.stage == "cpt" else target.path
                    train(TrainConfig(data=str(data), out=str(out), model=str(base), max_tokens=tokens, lr=lr,
                                      batch_size=bs, warmup_steps=cfg["warmup_steps"], seed=0, data_seed=0,
                                      progress=False, eval_windows=8, **kw), console=False)
                    model = load_model(out / "final").eval()
                    t = loss_summary(dataset_token_losses(model, target, "validation", args.windows))
                    n = loss_summary(dataset_token_losses(model, noisy, "validation", args.windows))
                    rows.append((arm, bs, lr, t["loss"], n["loss"]))
                    print(f"{arm:9s} batch {bs:3d} lr {lr:8.1e}: target val loss {t['loss']:.4f}  noisy val loss "
                          f"{n['loss']:.4f}", flush=True)
    print("\n| arm | batch | lr | target val loss | noisy val loss |\n|---|---:|---:|---:|---:|")
    for arm, bs, lr, t, n in rows:
        print(f"| {arm} | {bs} | {lr:g} | {t:.4f} | {n:.4f} |")


if __name__ == "__main__":
    main()
