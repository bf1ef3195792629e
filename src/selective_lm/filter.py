"""`slm filter`: document-level selection from token scores (data-level Rho-1, microsoft/rho #5).

Per-token scores (reference loss from `slm score`, or the excess loss of a training model) become one
score per document of a split; the best documents are copied from the original inputs, with all their
fields and an ``slm_doc_score``, into ``OUT/kept.jsonl`` (or ``kept.parquet``) for any other trainer::

    OUT/kept.jsonl | kept.parquet   the kept rows, in input order
    OUT/manifest.json               rule, threshold used, counts, quantiles, fingerprints; written last

**Document boundaries.** `slm prepare` packs each split as ``[BOS] + tokens + EOS`` per document, in
input order, and drops the tail that does not fill a window. So document k of the split ends at its EOS
in the split's token stream: the k-th EOS (more where the text itself spells the EOS token, or where
BOS is EOS). The inputs must be the dataset's sources (their sha256s are checked, in order), the split
of each document is recomputed with prepare's own :func:`~selective_lm.data.split_of`, and a sample of
documents (``verify_documents``; plus the one cut by the tail) is re-tokenised and compared token for
token with the windows. A document's scored tokens are its targets inside the windows: its tokens and
its EOS, not its BOS and not a window's first token (which no window predicts).
"""
from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np

from .config import FilterConfig, PrepareConfig
from .data import CONTEXT_LABEL, TokenDataset, split_of
from .files import (DirLock, UserError, atomic_dir, check_output_dir, commit_dir, read_json, remove_stale_temporaries,
                    reserve, write_json)
from .sources import (_SURROGATE, _checked, _jsonl_lines, clean_text, decode_bytes, expand_inputs, iter_documents,
                      open_input, source_record, split_ext)

KIND = "selective-lm-filter"
SCORE_FIELD = "slm_doc_score"
HIGHER_IS_BETTER = {"ref_loss": False, "ref_entropy": False, "mean_excess": True, "selected_share": True}
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
_NO_SPANS = "\0slm-no-spans"  # spans play no part in filtering: never read them
_CHUNK_TOKENS = 1 << 22


def filter_documents(cfg: FilterConfig) -> dict:
    """Run `slm filter`; returns the manifest."""
    cfg.validate()
    out = Path(cfg.out)
    with DirLock(out, "filter output", inside=False):
        remove_stale_temporaries(out.parent, out.name)  # what a killed `slm filter` of this output left
        check_output_dir(out, cfg.overwrite, _ours, "an `slm filter` output", "filtered documents", "them")
        return _filter(cfg, out)


def _ours(out: Path) -> bool:
    try:
        return read_json(out / "manifest.json").get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_sources(inputs: list[str], manifest: dict) -> list[dict]:
    """The inputs' records, refused unless they are the dataset's sources in the same order (sha256)."""
    records = [source_record(kind, path) for kind, path in expand_inputs(inputs)]
    want = manifest["sources"]
    for i, (got, src) in enumerate(zip(records, want)):
        if got["sha256"] != src["sha256"]:
            raise UserError(f"input {got['path']} is not the dataset's source #{i + 1} ({src['path']}; sha256 "
                            "differs): pass the files given to `slm prepare`, unchanged and in the same order")
    if len(records) != len(want):
        raise UserError(f"the inputs are {len(records)} files but the dataset was prepared from {len(want)}: pass the "
                        "files given to `slm prepare`, in the same order")
    return records


# --------------------------------------------------------------------------- boundaries
def document_bounds(cfg: FilterConfig, ds: TokenDataset, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(starts, ends) in the split's token stream of every document of ``cfg.split``, in input order, checked;
    and the per-document facts the writer needs (which input documents are in the split, their lengths)."""
    m, tok = ds.manifest, ds.tokenizer()
    eos, bos = ds.eos_id, ds.bos_id
    eos_pos = np.concatenate([np.flatnonzero(flat[s:s + _CHUNK_TOKENS] == eos) + s
                              for s in range(0, len(flat), _CHUNK_TOKENS)] or [np.zeros(0, np.int64)])
    n_docs = int(m["splits"][cfg.split]["documents"])
    n_check = n_docs if cfg.verify_documents == -1 else min(cfg.verify_documents, n_docs)
    sample = set(np.linspace(0, n_docs - 1, n_check).round().astype(int).tolist()) if n_check else set()
    route = PrepareConfig(seed=m.get("seed", 0), val_fraction=m.get("val_fraction", 0.0),
                          test_fraction=m.get("test_fraction", 0.0))
    backend, eos_text = tok.backend_tokenizer, tok.eos_token
    base = 1 + (bos is not None and bos == eos)
    starts, ends, in_split, lengths = [], [], bytearray(), []
    cursor, prev, verified, n_complete = 0, 0, 0, 0
    docs = iter_documents(cfg.inputs, m.get("text_field", "text"), _NO_SPANS, split_field=m.get("split_field", "split"),
                          with_split=True, context_field=m.get("context_field"))
    for text, _, given in docs:
        mine = split_of(text, given, route) == cfg.split
        in_split.append(mine)
        if not mine:
            continue
        k = len(starts)
        ids = None
        if eos_text and eos_text in text:  # the text spells the EOS token: its own EOS ids end nothing
            ids = backend.encode(text, add_special_tokens=False).ids
        need = base + (ids.count(eos) if ids is not None else 0)
        complete = cursor + need <= len(eos_pos)
        end = int(eos_pos[cursor + need - 1]) + 1 if complete else len(flat)
        if (k in sample or not complete) and prev < len(flat):  # sampled, or the one the dropped tail cuts
            ids = ids if ids is not None else backend.encode(text, add_special_tokens=False).ids
            expect = np.array(([bos] if bos is not None else []) + ids + [eos], dtype=np.int64)
            got = np.asarray(flat[prev:end], dtype=np.int64)
            bad_length = len(got) != len(expect) if complete else len(got) >= len(expect)
            if bad_length or not np.array_equal(got, expect[:len(got)]):
                raise UserError(f"document {k} of the {cfg.split} split re-tokenises differently from {ds.path}'s "
                                f"windows (tokens {prev}-{end}): the inputs or their order differ from `slm prepare`'s")
            verified += 1
        starts.append(prev)
        ends.append(end)
        lengths.append(len(text))
        n_complete += complete
        cursor, prev = cursor + need if complete else len(eos_pos), end
    if len(starts) != n_docs or cursor != len(eos_pos) or (prev != len(flat)):
        raise UserError(f"the inputs give {len(starts)} documents of the {cfg.split} split ending at {cursor} of the "
                        f"{len(eos_pos)} document ends in {ds.path} (which counts {n_docs} documents): pass the "
                        "inputs given to `slm prepare` with the same options")
    st, en = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
    facts = {"in_split": in_split, "lengths": lengths, "verified": verified, "complete": n_complete,
             "in_tail": int(np.count_nonzero(st == en))}
    return st, en, facts


# --------------------------------------------------------------------------- token values → document means
def _doc_sums(chunks, starts, ends, window_len: int, has_bos: bool,
              context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Σ value and count of scored tokens per document; ``chunks`` yields (first window, values [w, seq_len]);
    ``context``: the split's flat provenance, whose context-only tokens are not scored."""
    sums, counts = np.zeros(len(ends)), np.zeros(len(ends), dtype=np.int64)
    for w0, vals in chunks:
        pos = np.arange(w0 * window_len, (w0 + len(vals)) * window_len, dtype=np.int64)
        doc = np.searchsorted(ends, pos, side="right")
        ok = pos % window_len != 0  # a window's first token is context only
        if context is not None:
            ok &= np.asarray(context[pos[0]:pos[-1] + 1]) != CONTEXT_LABEL
        if has_bos:
            ok &= pos != starts[np.minimum(doc, len(starts) - 1)]
        full = np.zeros((len(vals), window_len))
        full[:, 1:] = vals
        d, v = doc[ok], full.reshape(-1)[ok]
        if len(d):
            lo, n = d[0], d[-1] - d[0] + 1
            sums[lo:lo + n] += np.bincount(d - lo, weights=v, minlength=n)
            counts[lo:lo + n] += np.bincount(d - lo, minlength=n)
    return sums, counts


def _chunks(array, n: int, step: int, bar=None):
    for s in range(0, n, step):
        block = np.asarray(array[s:s + step], dtype=np.float64)
        if bar is not None:
            bar.update(block.size)
        yield s, block


def _excess_chunks(cfg: FilterConfig, ds: TokenDataset, ref, step: int, bar):
    """Model loss − reference loss per target, a forward pass over the split's windows."""
    import torch

    from .model import autocast_ctx, load_model, model_token_losses, resolve_device

    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device).eval()
    n = len(ref)
    with torch.inference_mode(), autocast_ctx(device, cfg.precision):
        for s in range(0, n, step):
            rows = []
            for b in range(s, min(s + step, n), cfg.batch_size):
                inputs, targets = ds.batch(cfg.split, slice(b, min(b + cfg.batch_size, s + step, n)))
                rows.append(model_token_losses(model, inputs.to(device), targets.to(device)).float().cpu().numpy())
            loss = np.concatenate(rows).astype(np.float64)
            if not np.isfinite(loss).all():
                raise UserError(f"model {cfg.model} gives non-finite losses on windows {s}-{s + len(loss) - 1}: "
                                "use a healthy checkpoint")
            bar.update(loss.size)
            yield s, loss - np.asarray(ref[s:s + step], dtype=np.float64)


def key_counts(values: np.ndarray) -> np.ndarray:
    """How many of ``values`` (float16) have each of the 65536 bit patterns, in the order of the values."""
    u = np.ascontiguousarray(values, dtype=np.float16).view(np.uint16).astype(np.int64).reshape(-1)
    return np.bincount(np.where(u & 0x8000, 0xFFFF - u, u + 0x8000), minlength=1 << 16)  # order-preserving


def top_threshold(counts: np.ndarray, ratio: float) -> tuple[float, int]:
    """(t, selected): t = the k-th largest value, k = round(ratio × n) (exact on the float16 values);
    ``selected`` counts the values >= t (ties at t included)."""
    k = max(1, int(np.floor(counts.sum() * ratio + 0.5)))
    at_least = np.cumsum(counts[::-1])[::-1]  # at_least[K] = values with key >= K
    kk = int(np.flatnonzero(at_least >= k)[-1])
    bits = kk - 0x8000 if kk >= 0x8000 else 0xFFFF - kk
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0]), int(at_least[kk])


def _entropy_file(scores_dir: Path, ref) -> np.ndarray:
    m = read_json(scores_dir / "manifest.json")
    name = m.get("entropy_file") or "ref_entropy.bin"  # provisional: `slm score` does not write entropies yet
    f = scores_dir / name
    if not f.is_file() or f.stat().st_size != ref.size * 2:
        raise UserError(f"the scores in {scores_dir} hold no reference entropies: score them with entropies, or use "
                        "doc_score=ref_loss")
    return np.memmap(f, dtype=np.float16, mode="r", shape=ref.shape)


# --------------------------------------------------------------------------- keep rule
def keep_mask(score: np.ndarray, counts: np.ndarray, cfg: FilterConfig) -> tuple[np.ndarray, float | None]:
    """(kept documents, threshold used): ``score`` is NaN for unscored documents."""
    higher = HIGHER_IS_BETTER[cfg.doc_score]
    scored = np.isfinite(score)
    keep = np.zeros(len(score), dtype=bool)
    if cfg.threshold is not None:
        keep[scored] = score[scored] >= cfg.threshold if higher else score[scored] <= cfg.threshold
        used = cfg.threshold
    else:
        idx = np.flatnonzero(scored)
        order = idx[np.argsort(-score[idx] if higher else score[idx], kind="stable")]  # ties: input order
        if cfg.keep_by == "documents":
            n = max(1, int(np.floor(len(idx) * cfg.keep_fraction + 0.5))) if len(idx) else 0
        else:
            cum = np.cumsum(counts[order])
            n = min(len(order), int(np.searchsorted(cum, cfg.keep_fraction * cum[-1] - 1e-9)) + 1) if len(idx) else 0
        keep[order[:n]] = True
        used = float(score[order[n - 1]]) if n else None
    if cfg.unscored == "keep":
        keep |= ~scored
    return keep, used


# --------------------------------------------------------------------------- rows
def doc_text(row: dict, text_field: str, context_field: str | None = None) -> str:
    """A row's document text as `slm prepare` read it: its context field (if any) followed by its text."""
    text = clean_text(row[text_field])[0]
    context = row.get(context_field) if context_field else None
    return clean_text(context)[0] + text if isinstance(context, str) else text


def iter_rows(inputs: list[str], text_field: str, context_field: str | None = None):
    """The original rows (every field) of the non-empty documents, in :func:`iter_documents`' order."""
    for kind, path in expand_inputs(inputs):
        if kind == "text":
            with open_input(path) as f:
                rows = iter([{text_field: decode_bytes(f.read())[0]}])
        elif kind == "jsonl":
            rows = _jsonl_rows(path)
        elif kind == "parquet":
            import pyarrow.parquet as pq

            rows = (r for b in pq.ParquetFile(path).iter_batches(batch_size=1024) for r in b.to_pylist())
        else:
            import datasets

            d = datasets.load_from_disk(str(path))
            rows = iter(d["train"] if isinstance(d, datasets.DatasetDict) else d)
        if kind != "hf" and split_ext(path)[1]:
            rows = _checked(rows, path)
        for row in rows:
            if doc_text(row, text_field, context_field):
                yield row


def _jsonl_rows(path: Path):
    with open_input(path) as f:
        head = []
        for line in f:
            head.append(line)
            if line.strip():
                break
        if head and head[-1].lstrip().startswith(b"["):
            yield from json.loads(decode_bytes(b"".join(head) + f.read())[0])
        else:
            yield from (row for _, row in _jsonl_lines(itertools.chain(head, f), path, {"replaced_bytes": 0}))


class _Writer:
    """kept.jsonl line by line, or kept.parquet from Parquet parts of 4096 rows whose schemas are unified at the end
    (a field missing from some rows becomes null there; an all-empty list column takes the type of the others)."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.rows, self.parts = path, [], []
        self.f = open(path, "w", encoding="utf-8") if fmt == "jsonl" else None  # noqa: SIM115

    def add(self, row: dict) -> None:
        if self.f is not None:
            line = json.dumps(row, ensure_ascii=False, default=str)
            if not line.isascii() and _SURROGATE.search(line):  # lone surrogates stay escaped, as in the input
                line = json.dumps(row, default=str)
            self.f.write(line + "\n")
            return
        self.rows.append(row)
        if len(self.rows) >= 4096:
            self._part()

    def _part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(self.rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise UserError(f"the kept rows do not form a Parquet table ({e}): use --format jsonl") from None
        self.parts.append(self.path.with_name(f"{self.path.name}.part{len(self.parts)}"))
        pq.write_table(table, self.parts[-1])
        self.rows = []

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.rows:
            self._part()
        if not self.parts:  # nothing kept: an empty table with the score column
            pq.write_table(pa.table({SCORE_FIELD: pa.array([], pa.float64())}), self.path)
            return
        try:
            schema = pa.unify_schemas([pq.read_schema(p) for p in self.parts], promote_options="permissive")
            with pq.ParquetWriter(self.path, schema) as w:
                for p in self.parts:
                    t = pq.read_table(p)
                    w.write_table(pa.table({f.name: t[f.name] if f.name in t.column_names else pa.nulls(len(t), f.type)
                                            for f in schema}).cast(schema))
                    p.unlink()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise UserError(f"the kept rows do not form one Parquet table ({e}): use --format jsonl") from None


# --------------------------------------------------------------------------- the command
def _quantiles(x: np.ndarray) -> dict | None:
    return {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(x, QUANTILES))} if len(x) else None


def _filter(cfg: FilterConfig, out: Path) -> dict:
    from .runtime import progress
    from .scores import load_scores

    t0 = time.perf_counter()
    ds = TokenDataset(cfg.data)
    ref = load_scores(cfg.ref_scores, ds, cfg.split)
    scores_m = read_json(Path(cfg.ref_scores) / "manifest.json")
    uses_model = cfg.doc_score in ("mean_excess", "selected_share")
    if uses_model:
        from .model import check_compatible, model_fingerprint

        check_compatible(cfg.model, ds, role="model")
    entropy = _entropy_file(Path(cfg.ref_scores), ref) if cfg.doc_score == "ref_entropy" else None
    sources = check_sources(cfg.inputs, ds.manifest)
    flat = ds.windows(cfg.split).reshape(-1)
    starts, ends, facts = document_bounds(cfg, ds, flat)
    n_win, step = len(ref), max(1, _CHUNK_TOKENS // ds.window_len)
    tmp = atomic_dir(out)
    try:
        bar = progress(total=ref.size * (2 if cfg.doc_score == "selected_share" else 1), unit="tok", unit_scale=True,
                       desc=f"filter {out.name}", enabled=cfg.progress)
        token_rule = {}
        if cfg.doc_score == "ref_loss":
            chunks = _chunks(ref, n_win, step, bar)
        elif cfg.doc_score == "ref_entropy":
            chunks = _chunks(entropy, n_win, step, bar)
        elif cfg.doc_score == "mean_excess":
            chunks = _excess_chunks(cfg, ds, ref, step, bar)
        else:  # selected_share: the excess of every target first (float16 beside the output), then the share
            reserve(tmp / "excess.tmp", ref.size * 2, name=out)  # allocated first: a full disk is no SIGBUS
            excess = np.memmap(tmp / "excess.tmp", dtype=np.float16, mode="r+", shape=ref.shape)
            hist = np.zeros(1 << 16, dtype=np.int64)
            for s, e in _excess_chunks(cfg, ds, ref, step, bar):
                excess[s:s + len(e)] = e
                counted = ds.target_mask(cfg.split, slice(s, s + len(e)))  # context-only targets rank with none
                hist += key_counts(excess[s:s + len(e)] if counted is None else excess[s:s + len(e)][counted])
            t, selected = top_threshold(hist, cfg.ratio)
            chunks = ((s, (v >= t).astype(np.float64)) for s, v in _chunks(excess, n_win, step, bar))
            token_rule = {"ratio": cfg.ratio, "excess_threshold": t, "selected_token_fraction": selected / hist.sum()}
        context = ds.provenance(cfg.split).reshape(-1) if ds.has_context else None
        sums, counts = _doc_sums(chunks, starts, ends, ds.window_len, ds.bos_id is not None, context)
        bar.close()
        (tmp / "excess.tmp").unlink(missing_ok=True)
        score = np.where(counts >= cfg.min_tokens, sums / np.maximum(counts, 1), np.nan)
        keep, used = keep_mask(score, counts, cfg)

        name = f"kept.{cfg.format}"
        writer, k, seen = _Writer(tmp / name, cfg.format), 0, 0
        fields = ds.manifest["text_field"], ds.manifest.get("context_field")
        for row, mine in zip(iter_rows(cfg.inputs, *fields), facts["in_split"]):
            seen += 1
            if not mine:
                continue
            if len(doc_text(row, *fields)) != facts["lengths"][k]:
                raise UserError(f"the inputs changed while `slm filter` read them (document {k}): run it again")
            if keep[k]:
                writer.add({**row, SCORE_FIELD: float(score[k]) if np.isfinite(score[k]) else None})
            k += 1
        writer.close()
        if seen != len(facts["in_split"]):
            raise UserError("the inputs changed while `slm filter` read them: run it again")

        scored = np.isfinite(score)
        total_tokens, kept_tokens = int(counts.sum()), int(counts[keep].sum())
        scored_tokens = int(counts[scored].sum())
        manifest = {
            "format_version": 1, "kind": KIND, "file": name, "format": cfg.format,
            "inputs": sources, "dataset": str(ds.path), "dataset_fingerprint": ds.fingerprint, "split": cfg.split,
            "scores": {"path": cfg.ref_scores, "sha256": scores_m.get("sha256"),
                       "reference_model": scores_m.get("model"),
                       "reference_fingerprint": scores_m.get("model_fingerprint")},
            "model": {"path": cfg.model, "fingerprint": model_fingerprint(cfg.model)} if uses_model else None,
            "doc_score": cfg.doc_score, "higher_is_better": HIGHER_IS_BETTER[cfg.doc_score], **token_rule,
            "rule": ({"keep_fraction": cfg.keep_fraction, "keep_by": cfg.keep_by} if cfg.threshold is None
                     else {"threshold": cfg.threshold}),
            "threshold": used, "min_tokens": cfg.min_tokens, "unscored": cfg.unscored,
            "documents": {"total": len(score), "scored": int(scored.sum()), "unscored": int((~scored).sum()),
                          "in_dropped_tail": facts["in_tail"], "kept": int(keep.sum())},
            "tokens": {"total": total_tokens, "scored": scored_tokens, "kept": kept_tokens},
            "kept_fraction": {"documents": float(keep.sum() / max(1, len(keep))),
                              "tokens": kept_tokens / max(1, total_tokens)},
            "quantiles": {"all": _quantiles(score[scored]), "kept": _quantiles(score[scored & keep])},
            "boundaries": {"method": "eos", "complete_documents": facts["complete"],
                           "verified_documents": facts["verified"]},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_json(tmp / "manifest.json", manifest)  # last: a directory without it is no finished output
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
