"""Reference scoring: per-token reference losses for every window of a dataset split.

Output directory::

    ref_losses.bin   float16 memmap [windows, seq_len], row i = losses of window i's targets
    manifest.json    binds the file to the dataset (fingerprint) and the reference model (hash); written last

While running, ``ref_losses.bin.partial`` and ``progress.json`` make the job resumable; a partial
file never carries the final name, so it never looks complete.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ScoreConfig
from .data import TokenDataset
from .files import UserError, read_json, write_json
from .model import autocast_ctx, check_compatible, load_model, model_fingerprint, model_token_losses, resolve_device

SCORES_FILE = "ref_losses.bin"
KIND = "selective-lm-ref-scores"
FLUSH_EVERY_S = 10.0


def _identity(ds: TokenDataset, split: str, model_path: str) -> dict:
    return {
        "dataset_fingerprint": ds.fingerprint,
        "tokenizer_fingerprint": ds.manifest["tokenizer_fingerprint"],
        "split": split,
        "windows": ds.num_windows(split),
        "seq_len": ds.seq_len,
        "model_fingerprint": model_fingerprint(model_path),
    }


def score(cfg: ScoreConfig) -> dict:
    """Run the reference model over every window of ``cfg.split`` and write the scores; returns the manifest."""
    ds = TokenDataset(cfg.data)
    n = ds.num_windows(cfg.split)
    check_compatible(cfg.model, ds, role="reference model")
    out = Path(cfg.out)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        if not cfg.overwrite:
            raise UserError(f"{out} already holds finished scores: pass --overwrite to recompute them")
        manifest_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    ident = _identity(ds, cfg.split, cfg.model)
    partial, progress_path, final = out / (SCORES_FILE + ".partial"), out / "progress.json", out / SCORES_FILE
    final.unlink(missing_ok=True)

    done = 0
    if partial.is_file() and progress_path.is_file():
        prog = read_json(progress_path)
        if prog.get("identity") == ident:
            done = int(prog["done_windows"])
    if done == 0:
        partial.unlink(missing_ok=True)
    scores = np.memmap(partial, dtype=np.float16, mode="r+" if done else "w+", shape=(n, ds.seq_len))

    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device).eval()
    t0 = last_flush = time.perf_counter()
    bar = tqdm(total=n * ds.seq_len, initial=done * ds.seq_len, unit="tok", unit_scale=True,
               desc="score", disable=not cfg.progress)
    with torch.inference_mode(), autocast_ctx(device, cfg.precision):
        for start in range(done, n, cfg.batch_size):
            idx = np.arange(start, min(start + cfg.batch_size, n))
            inputs, targets = ds.batch(cfg.split, idx)
            losses = model_token_losses(model, inputs.to(device), targets.to(device))
            scores[start:start + len(idx)] = losses.to("cpu", torch.float16).numpy()
            done = start + len(idx)
            bar.update(len(idx) * ds.seq_len)
            if time.perf_counter() - last_flush > FLUSH_EVERY_S:
                scores.flush()
                write_json(progress_path, {"identity": ident, "done_windows": done})
                last_flush = time.perf_counter()
    bar.close()
    scores.flush()
    total_nats = float(np.asarray(scores, dtype=np.float64).sum())
    elapsed = time.perf_counter() - t0
    del scores
    os.replace(partial, final)
    progress_path.unlink(missing_ok=True)
    manifest = {
        "format_version": 1,
        "kind": KIND,
        **ident,
        "file": SCORES_FILE,
        "dtype": "float16",
        "shape": [n, ds.seq_len],
        "dataset": str(Path(cfg.data).resolve()),
        "model": str(Path(cfg.model).resolve()),
        "mean_loss": total_nats / max(1, n * ds.seq_len),
        "seconds": round(elapsed, 3),
    }
    write_json(manifest_path, manifest)
    return manifest


def load_scores(path: str | Path, ds: TokenDataset, split: str = "train") -> np.ndarray:
    """Read-only memmap [windows, seq_len] of reference losses, checked against ``ds``."""
    p = Path(path)
    mpath = p / "manifest.json"
    if not mpath.is_file():
        raise UserError(f"no finished reference scores in {p}: run `slm score` (or let it finish)")
    m = read_json(mpath)
    if m.get("kind") != KIND:
        raise UserError(f"{mpath} is not a reference-score manifest: pass a directory made by `slm score`")
    fix = f"re-run `slm score --data {ds.path} --split {split}` with the reference model"
    if m["tokenizer_fingerprint"] != ds.manifest["tokenizer_fingerprint"]:
        raise UserError(f"reference scores in {p} were made with a different tokenizer than {ds.path}: {fix}")
    if m["seq_len"] != ds.seq_len:
        raise UserError(f"reference scores in {p} have seq_len {m['seq_len']} but {ds.path} has {ds.seq_len}: {fix}")
    if m["split"] != split or m["windows"] != ds.num_windows(split):
        raise UserError(f"reference scores in {p} cover {m['windows']} windows of split '{m['split']}' but the "
                        f"dataset's '{split}' split has {ds.num_windows(split)}: {fix}")
    if m["dataset_fingerprint"] != ds.fingerprint:
        raise UserError(f"reference scores in {p} belong to another dataset (fingerprint differs from {ds.path}): {fix}")
    f = p / m["file"]
    expected = m["windows"] * m["seq_len"] * 2
    if not f.is_file() or f.stat().st_size != expected:
        raise UserError(f"{f} is missing or truncated ({expected} bytes expected): {fix}")
    return np.memmap(f, dtype=np.float16, mode="r", shape=(m["windows"], m["seq_len"]))
