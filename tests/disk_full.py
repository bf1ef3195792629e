"""A real full disk: `slm` commands writing into a small tmpfs, each run in its own process.

    python tests/disk_full.py [--sizes 16k,40k,...] [--commands prepare,score,...]

builds a tiny dataset, reference run and scores, then runs every command with its output on a tmpfs of
each size and sorts the runs: "fits" (exit 0), "one line: PATH" (exit 2 and one stderr line
``slm: error: no space left on /PATH ...`` that names a path on the tmpfs, nothing left that looks complete
and no temporaries), or "failed" (anything else: a traceback, a SIGBUS, a doubled colon...). It prints
one row per run and the count of full-disk cases that ended in one line. Mounting needs root (or
CAP_SYS_ADMIN); :func:`tmpfs` says why when it cannot.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"  # run as a script: the tree this file is in


def mount_refusal() -> str | None:
    """Why a tmpfs cannot be mounted here (None: it can)."""
    if sys.platform != "linux":
        return "tmpfs mounts need Linux"
    if shutil.which("mount") is None:
        return "no mount command"
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            return f"mount -t tmpfs is not permitted here ({(r.stderr or r.stdout).strip()[:120]})"
        subprocess.run(["umount", d], check=True)
    return None


@contextlib.contextmanager
def tmpfs(where: Path, size: int | str):
    """A tmpfs of ``size`` bytes (or "40k", "2m") mounted at ``where`` for the block, unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def slm(args: list, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m selective_lm ARGS`` in a fresh process (a SIGBUS shows as exit -7, not a dead test run), with
    the code under test (the selective_lm this process imports)."""
    import selective_lm

    src = Path(selective_lm.__file__).parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}
    return subprocess.run([sys.executable, "-m", "selective_lm", *map(str, args)], capture_output=True, text=True,
                          check=False, timeout=timeout, env=env)


def files_of(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def verdict(r: subprocess.CompletedProcess, mnt: Path, before: dict) -> str:
    """fits, one line, or failed: WHY. ``before``: the files on the tmpfs before the run (they must stay)."""
    if r.returncode == 0:
        return "fits"
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("slm: warning")]
    if r.returncode != 2 or len(lines) != 1:
        return f"failed: exit {r.returncode}, {len(lines)} lines, last: {lines[-1][:160] if lines else ''}"
    line = lines[0]
    if not line.startswith(f"slm: error: no space left on {mnt.resolve()}") or "::" in line:
        return f"failed: {line[:200]}"
    after = files_of(mnt)
    if lost := [str(p.relative_to(mnt)) for p, b in before.items() if after.get(p) != b]:
        return f"failed: changed or lost {lost[:3]}"
    new = [str(p.relative_to(mnt)) for p in after if p not in before]
    if bad := [n for n in new if n.endswith((".tmp", ".old", "run.json", "manifest.json"))]:
        return f"failed: left {bad[:3]}"
    return "one line: " + line.split("no space left on ", 1)[1].split(": free space")[0].replace(str(mnt.resolve()), "MNT")


def build_inputs(root: Path) -> dict:
    """A corpus, its dataset, a 2-step reference run and its scores (outside the tmpfs)."""
    from conftest import make_corpus

    make_corpus(root / "c.jsonl", n_docs=300)
    ds, ref, scores = root / "ds", root / "ref", root / "scores"
    for args in (["prepare", "--inputs", root / "c.jsonl", "--out", ds, "--vocab-size", 320, "--seq-len", 32],
                 ["train", "--data", ds, "--out", ref, "--batch-size", 4, "--max-steps", 2],
                 ["score", "--data", ds, "--model", ref / "final", "--out", scores]):
        r = slm(args + ["--no-progress"])
        assert r.returncode == 0, r.stderr[-2000:]
    return {"corpus": root / "c.jsonl", "ds": ds, "ref": ref / "final", "scores": scores}


def cases(inp: dict) -> dict:
    """command name -> (function of the tmpfs giving (argv, output), sizes to try)."""
    def overwrite_scores(m: Path):  # finished scores already there, taking their room
        shutil.copytree(inp["scores"], m / "s")
        return ["score", "--data", inp["ds"], "--model", inp["ref"], "--out", m / "s", "--overwrite"], m / "s"

    return {
        "prepare": (lambda m: (["prepare", "--inputs", inp["corpus"], "--out", m / "ds", "--vocab-size", 320,
                                "--seq-len", 32], m / "ds"), ["16k", "64k", "100k", "160k", "400k"]),
        "score": (lambda m: (["score", "--data", inp["ds"], "--model", inp["ref"], "--out", m / "s"], m / "s"),
                  ["8k", "40k", "120k", "240k"]),
        "score --overwrite": (overwrite_scores, ["200k", "240k", "320k", "480k"]),
        "train": (lambda m: (["train", "--data", inp["ds"], "--out", m / "run", "--batch-size", 4, "--max-steps", 2,
                              "--ckpt-every", 1], m / "run"), ["8k", "2m", "6m", "12m", "16m", "24m"]),
        "train lora": (lambda m: (["train", "--data", inp["ds"], "--out", m / "run", "--batch-size", 4,
                                   "--max-steps", 2, "--ckpt-every", 1, "lora.r=4"], m / "run"),
                       ["8k", "2m", "4m", "4500k", "8m"]),
        "eval --dump": (lambda m: (["eval", "--model", inp["ref"], "--data", inp["ds"], "--split", "train", "--dump",
                                    m / "d"], m / "d"), ["8k", "40k", "60k", "120k"]),
        "filter": (lambda m: (["filter", "--data", inp["ds"], "--ref-scores", inp["scores"], "--inputs",
                               inp["corpus"], "--model", inp["ref"], "--doc-score", "selected_share",
                               "--keep-fraction", 0.5, "--out", m / "f"], m / "f"), ["8k", "40k", "100k", "1m"]),
        "corpora": (lambda m: (["corpora", "--out", m / "c", "scale=0.1"], m / "c"), ["8k", "64k", "256k", "8m"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", help="comma list of the commands to try (default: all)")
    args = ap.parse_args()
    if why := mount_refusal():
        print(f"cannot run: {why}", file=sys.stderr)
        return 1
    sys.path[:0] = [str(SRC), str(HERE)]
    with tempfile.TemporaryDirectory(prefix="slm-disk-full-") as d:
        root = Path(d)
        table = cases(build_inputs(root))
        chosen = args.commands.split(",") if args.commands else list(table)
        tried = one = 0
        for name in chosen:
            make, sizes = table[name]
            for size in sizes:
                with tmpfs(root / "mnt", size) as m:
                    argv, _ = make(m)
                    before = files_of(m)
                    r = slm(argv + ["--no-progress"])
                    v = verdict(r, m, before)
                print(f"{name:18s} {size:>6s}  {v}", flush=True)
                if v != "fits":
                    tried += 1
                    one += v.startswith("one line")
        print(f"full-disk cases ending in one line: {one}/{tried}")
        return 0 if one == tried else 1


if __name__ == "__main__":
    sys.exit(main())
