"""How much the selected set depends on the selection scope, on the embedded default data.

Builds (or reuses, in --work) a small version of the study's pipeline with the library: the default corpora
at --scale, one byte-level BPE, the three datasets, the `tiny` base pretrained on prose, the reference (the
base continued on the HQ math) and its scores of the web-math train windows. Then it takes the first
--steps optimizer steps of the web-math train windows in a run's order (data_seed 0), computes every
token's excess loss L_base − L_ref (the selection of the first continual-pretraining step), and selects
with each scope on the same windows:

- ``microstep`` (each micro-batch alone), ``step`` (the whole optimizer step), ``sequence`` (each window alone),
  with --batch windows per step as 1 micro-batch (then microstep = step) and as --accum micro-batches.

A count, not a timing: "differ" is |A Δ B| / (|A| + |B|), the share of the selected positions that one
scope selects and the other does not (|A \\ B| / |A| when both select as many).

    python benchmarks/selection_scope.py --work /tmp/scope-bench [--scale 0.5] [--ratios 0.6,0.3]
"""
from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = {"prose": "prose.jsonl", "hq_math": "hq_math.jsonl", "web_math": "web_math.jsonl"}


def build_pipeline(work: Path, scale: float = 0.5, base_tokens: int = 600_000, reference_epochs: float = 2.0,
                   seq_len: int = 256, batch_size: int = 16, vocab_size: int = 2048) -> dict[str, Path]:
    """The study's pipeline at a small budget, each step skipped when its output exists; the paths."""
    from selective_lm.config import PrepareConfig, ScoreConfig, TrainConfig
    from selective_lm.corpora.default import build_default_corpora
    from selective_lm.data import TokenDataset, prepare
    from selective_lm.scoring import score
    from selective_lm.tokenizer import train_tokenizer_from_inputs
    from selective_lm.train import train

    work.mkdir(parents=True, exist_ok=True)
    corpora = work / "corpora"
    build_default_corpora(corpora, seed=0, scale=scale, progress=False)
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer_from_inputs([str(corpora / f) for f in DATASETS.values()], vocab_size, tok)
    data = {name: work / "data" / name for name in DATASETS}
    for name, file in DATASETS.items():
        if not (data[name] / "manifest.json").is_file():
            prepare(PrepareConfig(inputs=[str(corpora / file)], out=str(data[name]), tokenizer=str(tok),
                                  seq_len=seq_len, val_fraction=0.05, test_fraction=0.05, progress=False,
                                  overwrite=True))
    common = dict(batch_size=batch_size, seed=0, data_seed=0, progress=False, warmup_steps=10, eval_windows=16)
    base, ref, scores = work / "base", work / "reference", work / "scores"
    if not (base / "run.json").is_file():
        train(TrainConfig(data=str(data["prose"]), out=str(base), model="tiny", max_tokens=base_tokens, lr=3e-3,
                          overwrite=True, **common), console=False)
    if not (ref / "run.json").is_file():
        hq = TokenDataset(data["hq_math"])
        tokens = int(reference_epochs * hq.num_windows("train") * hq.seq_len)
        train(TrainConfig(data=str(data["hq_math"]), out=str(ref), model=str(base / "final"), max_tokens=tokens,
                          lr=4e-3, overwrite=True, **common), console=False)
    if not (scores / "manifest.json").is_file():
        score(ScoreConfig(data=str(data["web_math"]), model=str(ref / "final"), out=str(scores), progress=False,
                          overwrite=True))
    return {**data, "base": base / "final", "reference": ref / "final", "scores": scores}


def differ(a, b) -> float:
    return float((a ^ b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="pipeline directory (reused when it holds a finished one)")
    ap.add_argument("--scale", type=float, default=0.5, help="size of the default corpora (the study's is 1.0)")
    ap.add_argument("--ratios", default="0.6,0.3")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps of windows compared")
    ap.add_argument("--batch", type=int, default=16, help="windows per optimizer step (the study's batch_size)")
    ap.add_argument("--accum", type=int, default=4, help="micro-batches per step in the accumulation case")
    args = ap.parse_args()

    import numpy as np
    import torch

    from selective_lm.data import TokenDataset
    from selective_lm.model import load_model, model_token_losses
    from selective_lm.objective import Objective
    from selective_lm.scores import load_scores
    from selective_lm.train import WindowOrder

    paths = build_pipeline(Path(args.work), scale=args.scale)
    ds = TokenDataset(paths["web_math"])
    ref = load_scores(paths["scores"], ds, "train")
    model = load_model(paths["base"]).eval()
    order = WindowOrder(ds.num_windows("train"), 0)
    excess, valid = [], []
    with torch.no_grad():
        for step in range(args.steps):
            idx = order.indices(step * args.batch, args.batch)
            inputs, targets = ds.batch("train", idx)
            tl = model_token_losses(model, inputs, targets).float()
            excess.append(tl - torch.from_numpy(np.asarray(ref[idx], dtype=np.float32)))
            valid.append(targets != -100)
    print(f"{args.steps} steps × {args.batch} windows × {ds.seq_len} tokens of {paths['web_math']} "
          f"(excess = L_base − L_ref)\n")
    print("| ratio | split of a step | microstep vs sequence | step vs sequence | microstep vs step |")
    print("|---:|---|---:|---:|---:|")
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for accum in (1, args.accum):
            diffs = {"ms": [], "ss": [], "mst": []}
            for e, v in zip(excess, valid):
                micro_e, micro_v = list(e.chunk(accum)), list(v.chunk(accum))
                sel = {}
                for scope in ("microstep", "step", "sequence"):
                    obj = Objective("slm", "topk", ratio, scope=scope)
                    if scope == "step":
                        sel[scope] = torch.cat(obj.select(micro_e, micro_v, None))
                    else:
                        sel[scope] = torch.cat([obj.select([x], [y], None)[0] for x, y in zip(micro_e, micro_v)])
                diffs["ms"].append(differ(sel["microstep"], sel["sequence"]))
                diffs["ss"].append(differ(sel["step"], sel["sequence"]))
                diffs["mst"].append(differ(sel["microstep"], sel["step"]))
            m = {k: 100 * float(np.mean(x)) for k, x in diffs.items()}
            split = f"{accum} × {args.batch // accum}"
            print(f"| {ratio:g} | {split} | {m['ms']:.1f}% | {m['ss']:.1f}% | {m['mst']:.1f}% |")


if __name__ == "__main__":
    main()
