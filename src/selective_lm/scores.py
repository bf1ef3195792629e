"""Finished reference scores on disk, read back: the file names, the manifest checks and read-only memmaps.

``slm score`` (:mod:`.scoring`) writes a scores directory; everything that uses one (training's
reference statistics, ``slm filter``, the dataset-column export in :mod:`.columns`) reads it here:
:func:`load_scores` (reference losses) and :func:`load_entropy` (predictive entropies), both
[windows, seq_len] float16 memmaps checked against the dataset they score and, with ``verify``,
against the sha256 sums the manifest recorded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import TokenDataset
from .files import UserError, read_json, sha256_file

SCORES_FILE = "ref_losses.bin"
ENTROPY_FILE = "ref_entropy.bin"
KIND = "selective-lm-ref-scores"


def load_scores(path: str | Path, ds: TokenDataset, split: str = "train", verify: bool = True) -> np.ndarray:
    """Read-only memmap [windows, seq_len] of reference losses, checked against ``ds`` (and, with
    ``verify``, against the sha256 its manifest recorded)."""
    p = Path(path)
    m, fix = _checked_manifest(p, ds, split)
    return _memmap(p / m["file"], m, m.get("sha256"), verify, fix)


def load_entropy(path: str | Path, ds: TokenDataset, split: str = "train", verify: bool = True) -> np.ndarray:
    """Read-only memmap [windows, seq_len] of the reference's predictive entropies, aligned with
    :func:`load_scores`' losses (same windows, same positions) and checked the same way."""
    p = Path(path)
    m, fix = _checked_manifest(p, ds, split)
    if not m.get("entropy_file"):
        raise UserError(f"reference scores in {p} have no predictive entropy (scored with --no-entropy or by an "
                        f"older version): {fix} and --entropy")
    return _memmap(p / m["entropy_file"], m, m.get("entropy_sha256"), verify, fix)


def _checked_manifest(p: Path, ds: TokenDataset, split: str) -> tuple[dict, str]:
    """The manifest of finished scores in ``p``, checked against ``ds``'s split; and the fix to name."""
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
    return m, fix


def _memmap(f: Path, m: dict, sha256: str | None, verify: bool, fix: str) -> np.ndarray:
    expected = m["windows"] * m["seq_len"] * 2
    if not f.is_file() or f.stat().st_size != expected:
        raise UserError(f"{f} is missing or truncated ({expected} bytes expected): {fix}")
    if verify and sha256 and sha256_file(f) != sha256:  # the completion record covers every byte
        raise UserError(f"{f} changed after `slm score` finished it (sha256 differs from its manifest): {fix}")
    return np.memmap(f, dtype=np.float16, mode="r", shape=(m["windows"], m["seq_len"]))
