"""Training and scoring throughput: CLM vs SLM (offline scores) vs SLM (online reference), and scoring.

Prints a table. Each mode runs in its own subprocess so its peak memory is its own.
Targets (issue #2, CPU, tiny preset): SLM-offline >= 0.97x CLM tokens/s; SLM-online >= 0.70x;
scoring >= 2.5x training tokens/s.

    python benchmarks/throughput.py [--preset tiny] [--seq-len 256] [--batch-size 16] [--steps 40] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(mode: str, args: argparse.Namespace, root: Path) -> dict:
    """Runs inside the subprocess: one mode, returns tokens/s and peak memory."""
    import resource

    import torch

    from selective_lm.config import ScoreConfig, TrainConfig
    from selective_lm.scoring import score
    from selective_lm.train import train

    common = dict(data=str(root / "ds"), model=args.preset, batch_size=args.batch_size, max_steps=args.steps,
                  log_every=5, warmup_steps=2, progress=False, device=args.device, eval_windows=4)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if mode == "score":
        m = score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(root / "scores"),
                              batch_size=args.batch_size * 2, progress=False, overwrite=True, device=args.device))
        # The scoring loop's own time (as training's tokens/s, it excludes model loading and hashing).
        tok_s = m["windows"] * m["seq_len"] / m["seconds"]
    else:
        kw = {}
        if mode == "slm-offline":
            kw = dict(objective="slm", ref_scores=str(root / "scores"))
        elif mode == "slm-online":
            kw = dict(objective="slm", ref_model=str(root / "ref" / "final"))
        out = root / f"run-{mode}"
        train(TrainConfig(out=str(out), overwrite=True, **common, **kw), console=False)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in rows if r["type"] == "train"][1:]  # drop the warm-up interval
        tok_s = statistics.median(rates)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"mode": mode, "tokens_per_s": tok_s, "peak_rss_mib": peak_rss, "peak_gpu_mib": gpu}


def setup(args: argparse.Namespace, root: Path) -> None:
    """A synthetic corpus, a dataset, a briefly trained reference and its scores."""
    import random

    from selective_lm.config import PrepareConfig, ScoreConfig, TrainConfig
    from selective_lm.data import prepare
    from selective_lm.scoring import score
    from selective_lm.train import train

    r = random.Random(0)
    words = [("".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 8)))) for _ in range(3000)]
    n_tokens_needed = args.batch_size * args.steps * (args.seq_len + 1) * 1.3
    with open(root / "corpus.txt", "w") as f:
        f.write(" ".join(r.choice(words) for _ in range(int(n_tokens_needed))))
    prepare(PrepareConfig(inputs=[str(root / "corpus.txt")], out=str(root / "ds"), vocab_size=args.vocab_size,
                          seq_len=args.seq_len, val_fraction=0.0, progress=False))
    train(TrainConfig(data=str(root / "ds"), out=str(root / "ref"), model=args.preset, max_steps=5,
                      batch_size=args.batch_size, progress=False, device=args.device), console=False)
    score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(root / "scores"),
                      progress=False, device=args.device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of every mode (median reported)")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args, Path(args.root))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(args, root)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.rounds):  # round-robin, so a slow minute on the machine hits every mode alike
            for mode in ("clm", "slm-offline", "slm-online", "score"):
                cmd = [sys.executable, __file__, "--child", mode, "--root", str(root)] + sys.argv[1:]
                out = subprocess.run(cmd, capture_output=True, text=True,
                                     env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
                runs.setdefault(mode, []).append(json.loads(line[0][7:]))
        results = {m: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                       "peak_gpu_mib": rs[0]["peak_gpu_mib"]} for m, rs in runs.items()}
    clm = results["clm"]["tokens_per_s"]
    targets = {"clm": None, "slm-offline": 0.97, "slm-online": 0.70, "score": 2.5}
    print(f"\npreset {args.preset}, seq_len {args.seq_len}, batch {args.batch_size}, {args.steps} steps, "
          f"median of {args.rounds} rounds, device {args.device}\n")
    print("| mode        | tokens/s | vs CLM | target | peak RSS MiB | peak GPU MiB |")
    print("|-------------|---------:|-------:|-------:|-------------:|-------------:|")
    for mode, r in results.items():
        ratio = r["tokens_per_s"] / clm
        tgt = targets[mode]
        verdict = "" if tgt is None else (f">= {tgt:.2f} {'ok' if ratio >= tgt else 'MISSED'}")
        gpu = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        print(f"| {mode:<11} | {r['tokens_per_s']:8.0f} | {ratio:6.2f} | {verdict:>6} | {r['peak_rss_mib']:12.0f} | {gpu:>12} |")


if __name__ == "__main__":
    main()
