"""`slm prepare` at scale: tokens/s by worker processes, and peak RSS when the corpus grows 10x.

    python benchmarks/prepare_scale.py [--mb 20] [--workers 1,2,4] [--work DIR]

builds a synthetic JSONL corpus of ``--mb`` MB (words from a fixed list with numbers, in files of 8 MB) and one ten
times larger, trains a BPE of 8,192 on the small one, then times each ``slm prepare`` in its own process:

- throughput: the large corpus with that tokenizer (``--tokenizer``), ``num_workers`` each of ``--workers``;
- memory: peak RSS of the largest process of a run (``ru_maxrss`` of its process tree) for the small and the large
  corpus, with the given tokenizer and with a trained one (``tokenizer_sample`` 10M characters), 1 worker.

Each run is ``python -m selective_lm prepare`` under ``OMP_NUM_THREADS=1``; with 1 worker the tokenizer still
uses its own threads (Rust, ``TOKENIZERS_PARALLELISM`` unset), with N workers each worker one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = ("the of and to in is that it for on with as was at by an be this from or are we sum let solve prove "
         "equation integer prime number function derivative matrix vector theorem lemma proof value").split()


def write_corpus(directory: Path, mb: float, seed: int = 0) -> int:
    """JSONL files of 8 MB holding ``mb`` MB of documents; returns the bytes written."""
    directory.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    total, part, f = 0, 0, None
    while total < mb * 1e6:
        if f is None or f.tell() > 8e6:
            if f is not None:
                f.close()
            f = open(directory / f"part{part:04d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            part += 1
        words = [r.choice(WORDS) if r.random() > 0.1 else str(r.randint(0, 9999)) for _ in range(r.randint(80, 600))]
        line = json.dumps({"text": " ".join(words) + "."}) + "\n"
        f.write(line)
        total += len(line)
    f.close()
    return total


def run(args: list[str]) -> dict:
    """One `slm prepare` in its own process tree: seconds, peak RSS (MiB) and the manifest's train tokens."""
    code = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "r = subprocess.run(sys.argv[1:])\n"
            "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    env.pop("TOKENIZERS_PARALLELISM", None)
    p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "selective_lm", "prepare", *args,
                        "--no-progress", "--overwrite"], capture_output=True, text=True, env=env, check=False)
    rc, seconds, rss = p.stdout.strip().splitlines()[-1].split()
    if rc != "0":
        raise SystemExit(p.stdout + p.stderr)
    out = Path(args[args.index("--out") + 1])
    m = json.loads((out / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in m["splits"].values())
    return {"seconds": float(seconds), "rss_mib": int(rss) / 1024, "tokens": tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0, help="size of the small corpus (the large one is 10x)")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--work", help="keep the corpora and datasets here (default: a temporary directory)")
    a = ap.parse_args()
    root = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="slm-prepare-bench-"))
    try:
        small, large = root / "small", root / "large"
        for d, mb in ((small, a.mb), (large, 10 * a.mb)):
            if not d.is_dir():
                write_corpus(d, mb)
        base = ["--seq-len", "2048", "--val-fraction", "0.02"]
        tok = run(["--inputs", str(small), "--out", str(root / "tok"), "--vocab-size", "8192", *base])
        tokdir = str(root / "tok" / "tokenizer")
        print(f"corpora: {a.mb:g} MB and {10 * a.mb:g} MB of JSONL; BPE 8192 trained on the small one in "
              f"{tok['seconds']:.1f} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n")
        print("| workers | tokens | seconds | tokens/s | peak RSS MiB (largest process) |")
        print("|--:|--:|--:|--:|--:|")
        for w in [int(x) for x in a.workers.split(",")]:
            r = run(["--inputs", str(large), "--out", str(root / f"w{w}"), "--tokenizer", tokdir, *base,
                     f"num_workers={w}"])
            print(f"| {w} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:,.0f} | {r['rss_mib']:.0f} |",
                  flush=True)
        print("\n| tokenizer | corpus | tokens | peak RSS MiB | large / small |")
        print("|---|---|--:|--:|--:|")
        for name, extra in (("given (--tokenizer)", ["--tokenizer", tokdir]),
                            ("trained, sample 10M chars", ["--vocab-size", "8192", "tokenizer_sample=10000000"])):
            rs = [run(["--inputs", str(d), "--out", str(root / f"m-{d.name}"), *extra, *base]) for d in (small, large)]
            for d, r in zip(("1x", "10x"), rs):
                ratio = f"{rs[1]['rss_mib'] / rs[0]['rss_mib']:.2f}" if d == "10x" else ""
                print(f"| {name} | {d} | {r['tokens']:,} | {r['rss_mib']:.0f} | {ratio} |", flush=True)
    finally:
        if not a.work:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    sys.exit(code)
