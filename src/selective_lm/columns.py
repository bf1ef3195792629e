"""Reference losses as a column of a Hugging Face ``datasets`` dataset, for pipelines outside our memmaps.

A scored dataset is a ``save_to_disk`` directory with an ``input_ids`` column (token ids) and a
float32 column (default ``ref_loss``) of the same length per row: ``ref_loss[t]`` is the reference
model's loss of token ``t`` given the tokens before it, and ``ref_loss[0]`` is NaN (nothing predicts
the first token). Beside the data, ``slm_scores.json`` records the reference model (path and
fingerprint), the column, the rows and a sha256 of the token ids, so :func:`load_scored` can tell
scores from stale ones.

- :func:`export_scored`: a split of an ``slm prepare`` dataset plus its ``slm score`` memmap → a scored
  dataset (one row per window; ``slm score --hf-out DIR`` does this after scoring).
- :func:`score_dataset`: any dataset of token ids (rows of any length) + a reference model → the same
  dataset with the column (``slm score --data HF_DIR`` runs it on a ``save_to_disk`` directory).
- :class:`SLMCollator`: pads rows and builds ``labels``, keeping the column for :mod:`selective_lm.hf`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .files import UserError, atomic_dir, check_output_dir, commit_dir, read_json, write_json
from .loss import IGNORE_INDEX

REF_COLUMN = "ref_loss"
ENTROPY_COLUMN = "ref_entropy"  # the reference's predictive entropy per token (for the entropy scores)
META_FILE = "slm_scores.json"
KIND = "selective-lm-scored-dataset"


def is_hf_dataset_dir(path: str | os.PathLike) -> bool:
    """A ``Dataset.save_to_disk`` directory (not an ``slm prepare`` one)."""
    p = Path(path)
    return (p / "dataset_info.json").is_file() and (p / "state.json").is_file() and not (p / "manifest.json").is_file()


def _hash_row(h, row) -> None:
    """Add one row of token ids to the running sha256 (length, then int64 bytes): the ids' record."""
    a = np.asarray(row, dtype=np.int64)
    h.update(len(a).to_bytes(8, "little"))
    h.update(a.tobytes())


def _ids_digest(dataset, batch: int = 4096) -> str:
    h = hashlib.sha256()
    for start in range(0, len(dataset), batch):
        for row in dataset[start:start + batch]["input_ids"]:
            _hash_row(h, row)
    return h.hexdigest()


def _save(dataset, out: Path, meta: dict) -> None:
    """save_to_disk into a temporary directory, metadata last, then move into place."""
    tmp = atomic_dir(out)
    try:
        dataset.save_to_disk(str(tmp))
        write_json(tmp / META_FILE, meta)
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_out(out: Path, overwrite: bool, flag: str = "--hf-out") -> None:
    """Refuse a file, a non-empty directory that is not a scored dataset (--overwrite or not), and a scored
    dataset without --overwrite."""
    def ours(d: Path) -> bool:
        try:
            return read_json(d / META_FILE).get("kind") == KIND
        except (OSError, ValueError, AttributeError):
            return False

    check_output_dir(out, overwrite, ours, "a scored dataset", "a scored dataset", flag=flag)


def export_scored(data: str | os.PathLike, scores: str | os.PathLike, out: str | os.PathLike, split: str = "train",
                  column: str = REF_COLUMN, overwrite: bool = False, rows_per_chunk: int = 8192) -> dict:
    """Write split ``split`` of a prepared dataset with its reference scores as a scored dataset; returns the metadata."""
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    from .data import TokenDataset
    from .scores import load_entropy, load_scores

    out = Path(out)
    _check_out(out, overwrite)
    ds = TokenDataset(data)
    sc = load_scores(scores, ds, split)
    has_ent = bool(read_json(Path(scores) / "manifest.json").get("entropy_file"))
    cols = {column: sc, **({ENTROPY_COLUMN: load_entropy(scores, ds, split)} if has_ent else {})}
    windows = ds.windows(split)
    n, width = windows.shape
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"), length=width),
                                  **{c: datasets.Sequence(datasets.Value("float32"), length=width) for c in cols}})
    h = hashlib.sha256()
    work = Path(atomic_dir(out.with_name(out.name + "-arrow")))
    try:
        with ArrowWriter(features=features, path=str(work / "data.arrow")) as writer:
            for s in range(0, n, rows_per_chunk):
                ids = np.asarray(windows[s:s + rows_per_chunk], dtype=np.int64)
                table = {"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1).astype(np.int32)), width)}
                counted = ds.target_mask(split, slice(s, s + rows_per_chunk))
                for c, values in cols.items():  # index 0 of a row predicts nothing: NaN; nor do context-only targets
                    ref = np.full(ids.shape, np.nan, dtype=np.float32)
                    ref[:, 1:] = values[s:s + rows_per_chunk]
                    if counted is not None:
                        ref[:, 1:][~counted] = np.nan
                    table[c] = pa.FixedSizeListArray.from_arrays(pa.array(ref.reshape(-1)), width)
                for row in ids:
                    _hash_row(h, row)
                writer.write_table(pa.table(table))
            writer.finalize()
        manifest = read_json(Path(scores) / "manifest.json")
        meta = {"format_version": 1, "kind": KIND, "column": column, "rows": int(n),
                "entropy_column": ENTROPY_COLUMN if has_ent else None, "input_ids_sha256": h.hexdigest(),
                "model": manifest["model"], "model_fingerprint": manifest["model_fingerprint"],
                "dataset": str(Path(data).resolve()), "dataset_fingerprint": ds.fingerprint, "split": split,
                "scores": str(Path(scores).resolve()), "scores_sha256": manifest.get("sha256")}
        _save(datasets.Dataset.from_file(str(work / "data.arrow"), in_memory=False), out, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return meta


def _row_losses(model, rows: list, device: torch.device, precision: str, pad_id: int) -> list[np.ndarray]:
    from .model import autocast_ctx, model_token_losses

    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        attn[i, :len(r)] = 1
    targets = torch.where(attn.bool(), ids, IGNORE_INDEX)[:, 1:]
    targets = torch.cat([targets, torch.full((len(rows), 1), IGNORE_INDEX)], dim=1)
    with torch.no_grad(), autocast_ctx(device, precision):
        tl = model_token_losses(model, ids.to(device), targets.to(device), attention_mask=attn.to(device))
    tl = tl.float().cpu().numpy()
    if not np.isfinite(tl[targets.numpy() != IGNORE_INDEX]).all():
        raise UserError("the reference model gives non-finite losses on these rows: it is broken (e.g. a diverged "
                        "run); score with a healthy checkpoint")
    out = []
    for i, r in enumerate(rows):
        row = np.full(len(r), np.nan, dtype=np.float32)
        row[1:] = tl[i, :len(r) - 1]
        out.append(row)
    return out


def score_dataset(dataset, model, column: str = REF_COLUMN, batch_size: int = 16, device: str | torch.device = "cpu",
                  precision: str = "auto", model_path: str | None = None, cache_dir: str | None = None):
    """``dataset`` (a ``datasets.Dataset`` with ``input_ids``) with reference losses added as ``column``.

    ``model`` is a causal LM or a checkpoint directory. Rows may have any length; a batch is padded on
    the right and the padding never reaches a real token's loss. The returned dataset carries its
    metadata as ``slm_meta``, for :func:`save_scored`.
    """
    import json

    from .model import load_model, model_fingerprint

    if "input_ids" not in dataset.column_names:
        raise UserError(f"the dataset has no 'input_ids' column (it has {', '.join(dataset.column_names)}): "
                        "tokenize it first (e.g. dataset.map with your tokenizer)")
    if column in dataset.column_names:
        raise UserError(f"the dataset already has a '{column}' column: remove it or choose another column name")
    device = torch.device(device)
    if isinstance(model, (str, os.PathLike)):
        model_path = str(model)
        model = load_model(model, device)
    model = model.to(device).eval()
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0

    def add(batch):
        rows = batch["input_ids"]
        if limit and max((len(r) for r in rows), default=0) > limit:
            raise UserError(f"a row has {max(len(r) for r in rows)} tokens, more than the reference model's "
                            f"{limit} positions: cut the rows to at most {limit} tokens")
        return {column: _row_losses(model, rows, device, precision, pad_id) if rows else []}

    model_fp = model_fingerprint(model_path) if model_path else None
    fp = hashlib.sha256(json.dumps([dataset._fingerprint, column, model_fp or id(model), precision]).encode()
                        ).hexdigest()[:16]
    if cache_dir:  # a cached result is reused only for the same data, model weights and precision
        kwargs = {"cache_file_name": str(Path(cache_dir) / f"scored-{fp}.arrow"), "load_from_cache_file": bool(model_fp)}
    else:
        kwargs = {"keep_in_memory": True}
    scored = dataset.map(add, batched=True, batch_size=batch_size, new_fingerprint=fp, desc=f"score {column}", **kwargs)
    scored.slm_meta = {"format_version": 1, "kind": KIND, "column": column, "rows": len(scored),
                       "input_ids_sha256": _ids_digest(scored),
                       "model": str(Path(model_path).resolve()) if model_path else None,
                       "model_fingerprint": model_fp}
    return scored


def save_scored(dataset, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Save a dataset from :func:`score_dataset` (``save_to_disk`` plus ``slm_scores.json``), atomically."""
    meta = getattr(dataset, "slm_meta", None)
    if meta is None:
        raise ValueError("save_scored takes a dataset returned by score_dataset")
    out = Path(out)
    _check_out(out, overwrite)
    _save(dataset, out, meta)
    return meta


def load_scored(path: str | os.PathLike, verify: bool = True):
    """A scored dataset, checked against its ``slm_scores.json`` (with ``verify``, the token ids' sha256)."""
    import datasets

    p = Path(path)
    if not (p / META_FILE).is_file():
        raise UserError(f"no {META_FILE} in {p}: it was not written by `slm score --hf-out` or save_scored")
    meta = read_json(p / META_FILE)
    if meta.get("kind") != KIND:
        raise UserError(f"{p / META_FILE} is not a scored-dataset record")
    ds = datasets.load_from_disk(str(p))
    col = meta["column"]
    if col not in ds.column_names or "input_ids" not in ds.column_names or len(ds) != meta["rows"]:
        raise UserError(f"{p} does not match its {META_FILE} (column '{col}', {meta['rows']} rows expected): "
                        "score it again")
    if verify and _ids_digest(ds) != meta["input_ids_sha256"]:
        raise UserError(f"the token ids in {p} changed after they were scored: score them again")
    ds.slm_meta = meta
    return ds


class SLMCollator:
    """Batches rows of token ids for :mod:`selective_lm.hf`: right padding, ``attention_mask``,
    ``labels`` (the ids, -100 on padding; a row's own ``labels`` are kept) and the score column
    padded with NaN."""

    def __init__(self, pad_id: int = 0, ref_column: str | None = REF_COLUMN, entropy_column: str | None = ENTROPY_COLUMN):
        self.pad_id, self.ref_column, self.entropy_column = pad_id, ref_column, entropy_column

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        b = len(rows)
        ids = torch.full((b, longest), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, longest), dtype=torch.long)
        labels = torch.full((b, longest), IGNORE_INDEX, dtype=torch.long)
        scores = {c: torch.full((b, longest), float("nan")) for c in (self.ref_column, self.entropy_column)
                  if c and c in rows[0]}  # the score columns, padded with NaN
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            for c, t in scores.items():
                if len(r[c]) != n:
                    raise ValueError(f"a row has {n} input_ids but {len(r[c])} '{c}' values: "
                                     "the column needs one score per token (score after truncating or packing)")
                t[i, :n] = torch.as_tensor(np.asarray(r[c], dtype=np.float32))
            ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
            attn[i, :n] = 1
            labels[i, :n] = torch.as_tensor(r["labels"], dtype=torch.long) if "labels" in r else ids[i, :n]
        return {"input_ids": ids, "attention_mask": attn, "labels": labels, **scores}
