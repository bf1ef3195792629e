"""Why the dft variant diverges: CLM, DFT as published and the normalised DFT from the same base, side by side.

Uses the small pipeline of ``selection_scope.py`` (--work; built when missing) and trains from its base on the
web-math windows with the study's continual-pretraining settings (lr 6e-3, batch 16, --tokens): CLM,
``weighting=dft`` (w = p = exp(−L), the loss the mean of sg(p)·L: DFT's and TRL's) and ``dft-norm``, the earlier
form w = p / mean(p) (``dft_weights(normalise=True)`` patched into the objective for that arm; no longer a
training option). Every optimizer step's token weights are recorded (max weight, mean p);
every checkpoint is evaluated on the HQ-math validation windows: loss, perplexity, the model's mean predictive
entropy and the share of target tokens it gives p < 1e-3.

    python benchmarks/dft_divergence.py --work /tmp/scope-bench [--tokens 450000] [--arms clm,dft,dft-norm]
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="pipeline directory of selection_scope.py (built when missing)")
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--tokens", type=int, default=450_000, help="continual-pretraining budget (the study's)")
    ap.add_argument("--lr", type=float, default=6e-3, help="the study's cpt_lr")
    ap.add_argument("--arms", default="clm,dft,dft-norm")
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--windows", type=int, default=64, help="HQ-math validation windows per evaluation")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()

    import torch
    from selection_scope import build_pipeline

    import selective_lm.objective as objective_mod
    from selective_lm.checkpoint import checkpoint_dirs, checkpoint_step
    from selective_lm.config import TrainConfig
    from selective_lm.data import TokenDataset
    from selective_lm.model import load_model, model_token_losses
    from selective_lm.selection import dft_weights
    from selective_lm.train import train

    paths = build_pipeline(Path(args.work), scale=args.scale)
    hq = TokenDataset(paths["hq_math"])
    n_windows = min(args.windows, hq.num_windows("validation"))
    steps = max(1, args.tokens // (16 * hq.seq_len))
    every = max(1, steps // args.checkpoints)
    rows, weights = [], {}
    real = objective_mod.Objective.select
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms.split(","):
            rec = weights.setdefault(arm, [])

            def select(self, excess, valid, generator, rec=rec):
                masks = real(self, excess, valid, generator)
                if self.selective and masks[0].dtype != torch.bool:
                    w = torch.cat([m.reshape(-1) for m in masks])
                    v = torch.cat([x.reshape(-1) for x in valid])
                    p = torch.exp(-torch.cat([e.reshape(-1) for e in excess]))[v]
                    rec.append((float(w.max()), float(p.mean())))
                return masks

            objective_mod.Objective.select = select
            if arm == "dft-norm":
                objective_mod.dft_weights = functools.partial(dft_weights, normalise=True)
            kw = {} if arm == "clm" else dict(objective="slm", weighting="dft")
            out = Path(tmp) / arm
            try:
                train(TrainConfig(data=str(paths["web_math"]), out=str(out), model=str(paths["base"]),
                                  max_tokens=args.tokens, lr=args.lr, batch_size=16, warmup_steps=10, seed=0,
                                  data_seed=0, ckpt_every=every, eval_windows=16, progress=False, **kw), console=False)
            finally:
                objective_mod.Objective.select, objective_mod.dft_weights = real, dft_weights
            grad = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            grad = [r for r in grad if r["type"] == "train"]
            for d in [paths["base"], *checkpoint_dirs(out)]:
                step = 0 if d == paths["base"] else checkpoint_step(d)
                model = load_model(d).eval()
                tot = ent = low = n = 0.0
                with torch.no_grad():
                    for i in range(0, n_windows, 16):
                        inputs, targets = hq.batch("validation", list(range(i, min(i + 16, n_windows))))
                        loss, h = model_token_losses(model, inputs, targets, entropy=True)
                        v = targets != -100
                        tot, ent = tot + float(loss[v].sum()), ent + float(h[v].sum())
                        low, n = low + float((loss[v] > math.log(1e3)).sum()), n + float(v.sum())
                w = weights[arm][step - 1] if 0 < step <= len(weights[arm]) else (None, None)
                g = next((r["grad_norm"] for r in grad if r["step"] == step), None)
                rows.append(dict(arm=arm, step=step, loss=tot / n, ppl=math.exp(tot / n), entropy=ent / n,
                                 p_below_1e3=low / n, max_weight=w[0], mean_p=w[1], grad_norm=g))
                r = rows[-1]
                print(f"{arm:8s} step {step:4d}: HQ val loss {r['loss']:.3f} ppl {r['ppl']:10.1f} entropy "
                      f"{r['entropy']:.3f} p<1e-3 {100 * r['p_below_1e3']:5.1f}%  max w "
                      f"{r['max_weight'] if r['max_weight'] is None else round(r['max_weight'], 2)}  mean p "
                      f"{r['mean_p'] if r['mean_p'] is None else round(r['mean_p'], 3)}", flush=True)
    print("\n| arm | step | HQ val loss | ppl | mean entropy (nats) | targets with p < 1e-3 | max weight | mean p |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mw = "—" if r["max_weight"] is None else f"{r['max_weight']:.2f}"
        mp = "—" if r["mean_p"] is None else f"{r['mean_p']:.3f}"
        print(f"| {r['arm']} | {r['step']} | {r['loss']:.3f} | {r['ppl']:.1f} | {r['entropy']:.3f} | "
              f"{100 * r['p_below_1e3']:.1f}% | {mw} | {mp} |")
    early = {a: w[:20] for a, w in weights.items() if w}
    for a, w in early.items():
        print(f"{a}: first steps max weight {max(x[0] for x in w):.2f}, mean p {min(x[1] for x in w):.3f}–"
              f"{max(x[1] for x in w):.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "weights": weights}, indent=1))


if __name__ == "__main__":
    main()
