"""Training and scoring throughput: CLM vs SLM (offline scores, online reference) in each selection
scope, and scoring; with --modes, the token-selection variants too (soft and dft weights, the
excess+entropy score, scoring without entropies).

Prints a table. Each mode runs in its own subprocess so its peak memory is its own; modes run
round-robin so a slow minute on the machine hits every mode alike. Targets: SLM-offline (microstep)
>= 0.98x CLM tokens/s and <= 1.05x CLM peak memory; SLM-online >= 0.70x; the step scope's extra
no-grad forward costs <= 1.4x its microstep mode's time; scoring >= 2.5x training tokens/s.

    python benchmarks/throughput.py [--preset tiny] [--seq-len 256] [--batch-size 16] [--grad-accum 1]
                                    [--steps 40] [--rounds 3] [--device auto] [--precision auto]
                                    [--modes clm,slm-offline,slm-soft,slm-dft,slm-entropy,score,score-no-entropy]
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
MODES = ("clm", "slm-offline", "slm-offline-step", "slm-online", "slm-online-step", "score")
# the variants: soft / dft weights and score=excess+entropy (offline), and `slm score --no-entropy`
VARIANT_MODES = ("slm-soft", "slm-dft", "slm-entropy", "score-no-entropy")
TARGETS = {"slm-offline": 0.98, "slm-online": 0.70, "score": 2.5}  # tokens/s vs CLM


def child(mode: str, args: argparse.Namespace, root: Path) -> dict:
    """Runs inside the subprocess: one mode, returns tokens/s and peak memory."""
    import resource

    import torch

    from selective_lm.config import ScoreConfig, TrainConfig
    from selective_lm.scoring import score
    from selective_lm.train import train

    common = dict(data=str(root / "ds"), model=args.preset, batch_size=args.batch_size, max_steps=args.steps,
                  grad_accum=args.grad_accum, log_every=5, warmup_steps=2, progress=False, device=args.device,
                  precision=args.precision, compile=args.compile, eval_windows=4)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if mode.startswith("score"):  # `score` writes entropies (the default), `score-no-entropy` only losses
        m = score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(root / f"scores-{mode}"),
                              batch_size=args.batch_size * 2, progress=False, overwrite=True, device=args.device,
                              entropy=mode == "score"))
        # The scoring loop's own time (as training's tokens/s, it excludes model loading and hashing).
        tok_s = m["windows"] * m["seq_len"] / m["seconds"]
    else:
        kw = {}
        if mode.startswith("slm-offline"):
            kw = dict(objective="slm", ref_scores=str(root / "scores"))
        elif mode.startswith("slm-online"):
            kw = dict(objective="slm", ref_model=str(root / "ref" / "final"))
        elif mode == "slm-soft":
            kw = dict(objective="slm", ref_scores=str(root / "scores"), weighting="soft")
        elif mode == "slm-dft":
            kw = dict(objective="slm", weighting="dft")
        elif mode == "slm-entropy":
            kw = dict(objective="slm", ref_scores=str(root / "scores"), score="excess+entropy")
        if mode.endswith("-step"):
            kw["selection_scope"] = "step"
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
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of every mode (median reported)")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, clm first (default: {','.join(MODES)}; variants: {','.join(VARIANT_MODES)})")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "clm" or not set(modes) <= set(MODES + VARIANT_MODES):
        ap.error(f"--modes must start with clm and name modes of {', '.join(MODES + VARIANT_MODES)}")
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args, Path(args.root))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(args, root)
        runs: dict[str, list[dict]] = {}
        for _ in range(args.rounds):  # round-robin, so a slow minute on the machine hits every mode alike
            for mode in modes:
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
    print_table(args, results)


def print_table(args: argparse.Namespace, results: dict) -> None:
    clm = results["clm"]["tokens_per_s"]
    mem = "peak_gpu_mib" if results["clm"]["peak_gpu_mib"] is not None else "peak_rss_mib"
    print(f"\npreset {args.preset}, seq_len {args.seq_len}, batch {args.batch_size} x accum {args.grad_accum}, "
          f"{args.steps} steps, median of {args.rounds} rounds, device {args.device}, precision {args.precision}"
          f"{', compiled' if args.compile else ''}\n")
    print(f"| mode              | tokens/s | vs CLM | target           | {'peak GPU MiB' if 'gpu' in mem else 'peak RSS MiB'} | mem vs CLM |")
    print("|-------------------|---------:|-------:|------------------|-------------:|-----------:|")
    for mode, r in results.items():
        ratio = r["tokens_per_s"] / clm
        target = ""
        if mode in TARGETS:
            tgt = TARGETS[mode]
            target = f">= {tgt:.2f} {'ok' if ratio >= tgt else 'MISSED'}"
        elif mode == "score-no-entropy":  # what the entropies cost the scoring pass
            if "score" in results:
                target = f"entropy: -{1 - results['score']['tokens_per_s'] / r['tokens_per_s']:.0%} tok/s"
        elif mode.endswith("-step"):  # cost of the step scope relative to the same mode's microstep scope
            cost = results[mode[:-5]]["tokens_per_s"] / r["tokens_per_s"]
            target = f"{cost:.2f}x <= 1.40 {'ok' if cost <= 1.4 else 'MISSED'}"
        m_ratio = r[mem] / results["clm"][mem]
        print(f"| {mode:<17} | {r['tokens_per_s']:8.0f} | {ratio:6.2f} | {target:<16} | {r[mem]:12.0f} | {m_ratio:10.3f} |")


if __name__ == "__main__":
    main()
