"""Peak memory and time of the per-token training loss: chunked (never the whole [B·T, V] logits) vs plain.

One forward + backward of ``model_token_losses`` under SLM's masked sum (ratio 0.6) for a model of
the chosen preset and a real vocabulary size, each case in its own subprocess so its peak is its own.
Memory is the peak above what the process held before the step (the model and its inputs): peak RSS
on CPU, ``torch.cuda.max_memory_allocated`` on GPU. Target: chunked <= 0.5x plain at vocab 32k, seq 2048.

    python benchmarks/loss_memory.py [--preset tiny] [--vocabs 32000,151936] [--seq-len 2048] [--batch-size 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args: argparse.Namespace, impl: str, vocab: int) -> dict:
    import torch

    from selective_lm.model import autocast_ctx, build_model, model_token_losses, resolve_device

    device = resolve_device(args.device)
    model = build_model(args.preset, vocab, args.seq_len).to(device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len + 1), generator=g).to(device)
    weights = (torch.rand(args.batch_size, args.seq_len, generator=g) < 0.6).float().to(device)
    weights /= weights.sum()

    def step():
        with autocast_ctx(device, args.precision):
            tl = model_token_losses(model, ids[:, :-1], ids[:, 1:], chunked=impl == "chunked")
        (tl * weights).sum().backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator caches, gradient buffers
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "vocab": vocab, "peak_above_mib": peak - before, "seconds": sorted(times)[len(times) // 2],
            "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocabs", default="32000,151936")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args, args.child[0], int(args.child[1]))))
        return
    rows = []
    for vocab in (int(v) for v in args.vocabs.split(",")):
        for impl in ("plain", "chunked"):
            out = subprocess.run([sys.executable, __file__, "--child", impl, str(vocab)] + sys.argv[1:],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{impl} vocab {vocab} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
    print(f"\npreset {args.preset}, seq_len {args.seq_len}, batch {args.batch_size}, ratio 0.6, "
          f"device {rows[0]['device']}, precision {args.precision}, median of {args.repeats}\n")
    print("| vocab  | loss path | peak above model MiB | vs plain | target        | fwd+bwd s |")
    print("|--------|-----------|---------------------:|---------:|---------------|----------:|")
    for r in rows:
        plain = next(x for x in rows if x["vocab"] == r["vocab"] and x["impl"] == "plain")
        ratio = r["peak_above_mib"] / max(plain["peak_above_mib"], 1e-9)
        target = "" if r["impl"] == "plain" else f"<= 0.50 {'ok' if ratio <= 0.5 else 'MISSED'}"
        print(f"| {r['vocab']:>6} | {r['impl']:<9} | {r['peak_above_mib']:20.0f} | {ratio:8.2f} | {target:<13} | "
              f"{r['seconds']:9.3f} |")


if __name__ == "__main__":
    main()
