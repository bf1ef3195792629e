"""`slm prepare` and the dataset reader: a corpus packed ONCE into fixed token windows.

Reference scores are per token and depend on context, so training must see exactly the windows
that were scored. :func:`prepare` tokenizes the inputs, splits documents into train/validation/test (by
each document's ``split`` field where it has one, else by a seeded hash of its text), packs each split ([BOS +] document tokens + EOS, in input order) into
consecutive non-overlapping windows of ``seq_len + 1`` tokens and writes flat memmaps::

    DIR/manifest.json          written last (the directory is moved into place as a whole)
    DIR/tokenizer/             HF fast tokenizer (save_pretrained)
    DIR/{split}.bin            windows × (seq_len + 1) tokens, uint16 or uint32
    DIR/{split}.prov.bin       uint8 provenance label per token (only when some input had spans); label 255
                               ("context", from `context_field` or a span) marks context-only tokens, whose
                               targets :meth:`TokenDataset.batch` gives as -100 (ignored)

The work is spread over worker processes and torchrun ranks in units of input (:mod:`selective_lm.shards`),
with the same result as one process, and an interrupted prepare resumes. :class:`TokenDataset` reads such a
directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from . import dist, shards
from .config import PrepareConfig
from .files import (DirLock, UserError, atomic_dir, check_output_dir, commit_dir, read_json, remove_stale_temporaries,
                    sha256_json, write_json)
from .sources import CONTEXT_LABEL, expand_inputs, iter_documents, source_record
from .tokenizer import (EOS_TOKEN, _encode_batch, can_chunk, char_labels, copy_tokenizer, load_tokenizer, resolve_bos,
                        split_long, token_dtype, token_labels, tokenizer_fingerprint, train_tokenizer,
                        train_tokenizer_from_inputs)

__all__ = [
    "CONTEXT_LABEL", "EOS_TOKEN", "FORMAT_VERSION", "PROVENANCE_LABELS", "TokenDataset", "dataset_fingerprint",
    "iter_documents", "load_tokenizer", "prepare", "token_dtype", "tokenizer_fingerprint",
    "train_tokenizer", "train_tokenizer_from_inputs",
]

FORMAT_VERSION = 1
DATASET_KIND = "selective-lm-dataset"
PROVENANCE_LABELS = {"0": "content", "1": "noise", "2": "offtopic", "3": "wrong_solution", "4": "near_duplicate",
                     "5": "perturbed_table", "6": "other_notation"}
SPLITS = ("train", "validation", "test")
CONTEXT_NAME = "context"  # the name of the reserved provenance label CONTEXT_LABEL (255)
IGNORE_INDEX = -100  # a target no loss, score or selection counts (as in loss.IGNORE_INDEX)

_BATCH_CHARS = 1 << 20  # characters per encode_batch call
_BATCH_DOCS = 2048
_CHUNK_CHARS = 1 << 16  # long documents are encoded in pieces of about this size
_FLUSH_TOKENS = 1 << 22  # pending tokens per split before writing to disk
_SplitWriter = shards.WindowWriter


# --------------------------------------------------------------------------- fingerprint
def dataset_fingerprint(manifest: dict) -> str:
    """sha256 of the identity fields: what the windows contain, not where the inputs lay."""
    ident = {
        "format_version": manifest["format_version"],
        "seq_len": manifest["seq_len"],
        "dtype": manifest["dtype"],
        "vocab_size": manifest["vocab_size"],
        "eos_id": manifest.get("eos_id"),
        **({"bos_id": manifest["bos_id"]} if manifest.get("bos_id") is not None else {}),  # older datasets keep theirs
        "tokenizer_fingerprint": manifest["tokenizer_fingerprint"],
        "splits": {name: {"file": s["file"], "windows": s["windows"], "sha256": s.get("sha256")}
                   for name, s in sorted(manifest["splits"].items())},
        "sources": [s["sha256"] for s in manifest["sources"]],
    }
    return sha256_json(ident)


# --------------------------------------------------------------------------- packing
def split_of(text: str, given: str | None, cfg: PrepareConfig) -> str:
    """The document's own split field where it has one; else a seeded hash of its text (identical
    documents always land in the same split): validation below val_fraction, then test_fraction."""
    if given is not None:
        return given
    if cfg.val_fraction <= 0 and cfg.test_fraction <= 0:
        return "train"
    u = _split_hash(text, cfg.seed)
    return "validation" if u < cfg.val_fraction else "test" if u < cfg.val_fraction + cfg.test_fraction else "train"


def _split_hash(text: str, seed: int) -> float:
    """The document's place in [0, 1) under the seed: identical documents always land in the same split."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=f"slm-split-{seed}".encode())
    return int.from_bytes(h.digest(), "big") / 2.0**64


def is_validation(text: str, seed: int, val_fraction: float) -> bool:
    """Seeded hash split: identical documents always land in the same split."""
    return val_fraction > 0 and _split_hash(text, seed) < val_fraction


def _pack(docs, tokenizer, writers: dict, cfg: PrepareConfig, eos_id: int,
          state: dict, bos_id: int | None = None) -> None:
    backend = tokenizer.backend_tokenizer
    dtype = next(iter(writers.values())).dtype
    limit = np.iinfo(dtype).max
    chunk = _CHUNK_CHARS if can_chunk(tokenizer) else 0
    batch: list[tuple[str, list | None, str, bool, bool]] = []  # (text, spans, split, starts / ends the document)
    chars = 0

    def run() -> None:
        with_offsets = any(spans for _, spans, _, _, _ in batch)
        encs = _encode_batch(backend, [t for t, _, _, _, _ in batch], with_offsets)
        flat: dict[str, list[int]] = {name: [] for name in writers}
        provs: dict[str, list[np.ndarray]] = {name: [] for name in writers}
        for (text, spans, split, first, last), enc in zip(batch, encs):
            ids = enc.ids
            bos = first and bos_id is not None
            if bos:
                flat[split].append(bos_id)
            flat[split].extend(ids)
            if last:
                flat[split].append(eos_id)
                writers[split].documents += 1
            if state["provenance"]:
                if spans:  # spans documents are never cut
                    state["labels"].update(label for _, _, label in spans)
                    lab = char_labels(text, spans)  # BOS and EOS take the label of the first and last character
                    provs[split].append(np.concatenate([lab[:bos], token_labels(text, spans, enc.offsets), lab[-1:]]))
                else:
                    provs[split].append(np.zeros(bos + len(ids) + last, dtype=np.uint8))
        for name, toks in flat.items():
            if toks:
                arr = np.array(toks, dtype=np.int64)
                if arr.max() > limit:
                    raise UserError(f"token id {int(arr.max())} does not fit {dtype}: the tokenizer's "
                                    "len() is smaller than its largest id; re-save the tokenizer")
                writers[name].add(arr.astype(dtype), np.concatenate(provs[name]) if state["provenance"] else None)
        batch.clear()

    for text, spans, given in docs:
        if spans and not state["provenance"]:
            if batch:
                run()
            state["provenance"] = True
            for w in writers.values():
                w.enable_provenance()
        split = split_of(text, given, cfg)
        state["seen"].add(split)
        state["by_field"] += given is not None
        pieces = split_long(text, chunk) if chunk and not spans and len(text) > chunk else [text]
        for i, piece in enumerate(pieces):
            batch.append((piece, spans, split, i == 0, i == len(pieces) - 1))
            chars += len(piece)
            if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
                run()
                chars = 0
    if batch:
        run()


def context_tokens(prov_file: Path, windows: int, window_len: int) -> int:
    """Targets (every window position but the first) labelled context only in a split's provenance file."""
    prov = np.memmap(prov_file, dtype=np.uint8, mode="r", shape=(windows, window_len))
    return int(sum(np.count_nonzero(prov[s:s + 4096, 1:] == CONTEXT_LABEL) for s in range(0, windows, 4096)))


# --------------------------------------------------------------------------- prepare
def _label_names(seen: set[int], given: list[str] | None = None) -> dict[str, str]:
    names = {str(i): n for i, n in enumerate(given)} if given else dict(PROVENANCE_LABELS)
    names.update({str(k): f"label{k}" for k in sorted(seen) if str(k) not in names})
    return names


def prepare(cfg: PrepareConfig) -> dict:
    """Build the dataset directory ``cfg.out``; returns its manifest.

    Under torchrun every rank tokenizes its share of the input units (:mod:`selective_lm.shards`) and rank 0
    writes the dataset, the same bytes as one process; ``num_workers`` processes per rank tokenize in parallel.
    """
    cfg.validate()
    out = Path(cfg.out)
    dist.init(torch.device("cpu"))  # under torchrun: a gloo group over every node's ranks
    with contextlib.ExitStack() as stack:
        dist.enter_on_main(stack, lambda: DirLock(out, "dataset directory", inside=False))

        def check_out() -> None:
            remove_stale_temporaries(out.parent, out.name)  # what a killed `slm prepare` of this dataset left
            check_output_dir(out, cfg.overwrite, lambda o: (o / "manifest.json").is_file(), "a dataset directory",
                             "a dataset")

        dist.agree(check_out, main_only=True)
        return _prepare(cfg, out)


def _identity(cfg: PrepareConfig, job: dict) -> dict:
    """What a unit's streams depend on: the inputs as they are on disk, the units, the tokenizer and the split."""
    tok = {"tokenizer": tokenizer_fingerprint(cfg.tokenizer)} if cfg.tokenizer else \
        {"vocab_size": cfg.vocab_size, "tokenizer_sample": cfg.tokenizer_sample}
    return {"format_version": FORMAT_VERSION, "files": job["files"], "units": job["units"], **tok, "bos": cfg.bos,
            "fields": job["fields"], "seed": cfg.seed, "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction}


def _start(cfg: PrepareConfig, out: Path) -> dict:
    """Rank 0: plan the units, open (or resume) the work directory and put the tokenizer there; returns the job."""
    from .runtime import progress

    job = shards.plan(cfg.inputs)
    job["fields"] = {"text": cfg.text_field, "spans": cfg.spans_field, "split": cfg.split_field,
                     "context": cfg.context_field}
    work = shards.WorkDir(out)
    job["work"], job["done"] = str(work.path), work.open(_identity(cfg, job))
    tok_dir = work.path / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        if cfg.tokenizer is not None:
            tmp = atomic_dir(tok_dir)
            copy_tokenizer(Path(cfg.tokenizer), tmp)
            os.replace(tmp, tok_dir)
        else:  # a bounded sample of the train split only: validation and test text stay unseen
            texts = shards.sample_texts(job, cfg.tokenizer_sample, cfg.seed,
                                        lambda text, given: split_of(text, given, cfg) == "train")
            bar = progress(texts, desc=f"train tokenizer {out.name}", unit="doc", enabled=cfg.progress, delay=0.5)
            train_tokenizer(bar, cfg.vocab_size, tok_dir)
    job["tokenizer"] = str(tok_dir)
    return job


_TOKENIZERS: dict[str, object] = {}  # one per worker process


def _run_task(task: tuple) -> int:
    """A worker's task: ("unit", i, job) tokenizes unit i into its streams and summary; ("source", i, job) records
    input i's size and sha256. Returns the input bytes it covered."""
    what, i, job = task
    work = shards.WorkDir(path=job["work"])
    if what == "source":
        kind, path = job["sources"][i]
        write_json(work.source(i), source_record(kind, Path(path)))
        return 0
    cfg = PrepareConfig(**job["cfg"])
    if job["tokenizer"] not in _TOKENIZERS:
        _TOKENIZERS[job["tokenizer"]] = load_tokenizer(job["tokenizer"])
    dtype = np.dtype(job["dtype"])
    writers = {name: shards.StreamWriter(work.stream(i, name), work.stream(i, name, prov=True), dtype) for name in SPLITS}
    state = {"provenance": False, "labels": set(), "seen": set(), "by_field": 0}
    stats = shards.new_stats()
    try:
        _pack(shards.unit_documents(job, job["units"][i], stats), _TOKENIZERS[job["tokenizer"]], writers, cfg,
              job["eos_id"], state, job["bos_id"])
    finally:
        splits = {name: w.close() for name, w in writers.items()}
    write_json(work.summary(i), {"splits": splits, "provenance": state["provenance"], "labels": sorted(state["labels"]),
                                 "seen": sorted(state["seen"]), "by_field": state["by_field"], **stats})
    return job["bytes"][i]


def _prepare(cfg: PrepareConfig, out: Path) -> dict:
    from .runtime import progress

    expand_inputs(cfg.inputs)  # fail fast on missing paths, before any progress bar
    if cfg.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.tokenizer)  # fail fast, before reading the corpus
        resolve_bos(tokenizer, cfg.bos, cfg.tokenizer)
        if tokenizer.eos_token_id is None:
            raise UserError(f"tokenizer {cfg.tokenizer} has no eos_token: set eos_token in its "
                            "tokenizer_config.json (e.g. \"<|endoftext|>\")")
    try:
        job = dist.agree(_start, cfg, out, main_only=True)
        tokenizer = load_tokenizer(job["tokenizer"])
        job.update(cfg=dataclasses.asdict(cfg), eos_id=tokenizer.eos_token_id, dtype=token_dtype(len(tokenizer)).name,
                   bos_id=resolve_bos(tokenizer, cfg.bos, cfg.tokenizer or "trained by prepare"))
        work = shards.WorkDir(out)
        tasks = [("unit", i, job) for i in range(len(job["units"])) if not work.summary(i).is_file()]
        tasks += [("source", i, job) for i in range(len(job["sources"])) if not work.source(i).is_file()]
        mine = shards.share(tasks, dist.rank(), dist.world_size())
        bar = progress(total=sum(job["bytes"][i] for what, i, _ in mine if what == "unit"), desc=f"prepare {out.name}",
                       unit="B", unit_scale=True, enabled=cfg.progress and dist.is_main())
        dist.agree(shards.run_tasks, _run_task, mine, cfg.num_workers, bar.update)
        bar.close()
        return dist.agree(_finish, cfg, out, job, main_only=True)
    except UserError:
        if dist.world_size() == 1:  # bad input: nothing to resume (under torchrun another rank's crash reads alike)
            shards.WorkDir(out).remove()
        raise


def _finish(cfg: PrepareConfig, out: Path, job: dict) -> dict:
    """Rank 0, every unit done: the windows of each split from the units' streams in order, the manifest, the move
    into place; then the work directory goes."""
    work = shards.WorkDir(out)
    units = [read_json(work.summary(i)) for i in range(len(job["units"]))]
    stats = {k: sum(u[k] for u in units) for k in ("documents", "empty_documents", "replaced_bytes")}
    stats["sources"] = [read_json(work.source(i)) for i in range(len(job["sources"]))]
    provenance = any(u["provenance"] for u in units)
    seen = set().union(*(u["seen"] for u in units))
    # the hash routes to validation/test by their fractions; a document's split field to any split
    required = ["train"] + [n for n, f in (("validation", cfg.val_fraction), ("test", cfg.test_fraction)) if f > 0]
    tmp = atomic_dir(out)
    try:
        tok_dir = tmp / "tokenizer"
        shutil.copytree(job["tokenizer"], tok_dir)
        tokenizer = load_tokenizer(tok_dir)
        eos_id, bos_id, vocab_size = job["eos_id"], job["bos_id"], len(tokenizer)
        dtype = token_dtype(vocab_size)
        window_len = cfg.seq_len + 1
        writers = {name: _SplitWriter(tmp, name, dtype, window_len, _FLUSH_TOKENS) for name in SPLITS}
        try:
            for w in writers.values():
                if provenance:
                    w.enable_provenance()
            for i, u in enumerate(units):
                for name, info in u["splits"].items():
                    writers[name].documents += info["documents"]
                    prov = work.stream(i, name, prov=True) if info["provenance"] else None
                    for ids, labels in shards.read_stream(work.stream(i, name), prov, dtype, info["tokens"], _FLUSH_TOKENS):
                        writers[name].add(ids, labels)
        finally:
            splits = {name: w.close() for name, w in writers.items()}
        if stats["documents"] == 0:
            raise UserError(f"no documents in {', '.join(cfg.inputs)} (all inputs are empty): add text")
        names = [n for n in SPLITS if n in required or n in seen]
        for name in set(SPLITS) - set(names):  # a split no document went to
            for f in (tmp / f"{name}.bin", tmp / f"{name}.prov.bin"):
                f.unlink(missing_ok=True)
            splits.pop(name)
        dropped = {name: writers[name].npending for name in names}
        for name in names:
            s = splits[name]
            if s["documents"] == 0:
                raise UserError(
                    f"the {name} split got no documents ({stats['documents']} documents in all, "
                    f"val_fraction={cfg.val_fraction}): add more documents"
                    + {"validation": " or pass val_fraction=0 for no validation split",
                       "test": " or pass test_fraction=0 for no test split"}.get(name, " or lower val_fraction"))
            if s["windows"] == 0:
                fix = "raise" if name == "validation" else "lower"
                raise UserError(
                    f"the {name} split would get zero complete windows of {window_len} tokens "
                    f"({dropped[name]} tokens): add more text, lower seq_len or {fix} val_fraction")
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": DATASET_KIND,
            "seq_len": cfg.seq_len,
            "window_len": window_len,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_id": eos_id,
            "bos": cfg.bos,
            "bos_id": bos_id,
            "tokenizer": "tokenizer",
            "tokenizer_fingerprint": tokenizer_fingerprint(tok_dir),
            "splits": splits,
            "sources": stats["sources"],
            "skipped_files": job["skipped"],
            "documents": stats["documents"],
            "empty_documents": stats["empty_documents"],
            "replaced_bytes": stats["replaced_bytes"],
            "dropped_tail_tokens": dropped,
            "provenance_labels": (_label_names(set().union(*(u["labels"] for u in units)), cfg.label_names)
                                  if provenance else None),
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "split_field": cfg.split_field,
            "documents_split_by_field": sum(u["by_field"] for u in units),
            "text_field": cfg.text_field,
        }
        if provenance and CONTEXT_LABEL in set().union(*(u["labels"] for u in units)):  # context-only tokens: every reader ignores their targets
            manifest["provenance_labels"][str(CONTEXT_LABEL)] = CONTEXT_NAME
            manifest["context_tokens"] = {name: context_tokens(tmp / s["provenance"], s["windows"], window_len)
                                          for name, s in splits.items()}
        if cfg.context_field:
            manifest["context_field"] = cfg.context_field
        manifest["fingerprint"] = dataset_fingerprint(manifest)
        total = sum(src.get("bytes", 0) for src in stats["sources"])
        if total and stats["replaced_bytes"] > 0.01 * total:
            print(f"slm: warning: {stats['replaced_bytes'] / total:.1%} of the input bytes were not valid UTF-8 and "
                  "became U+FFFD: is some input binary or in another encoding?", file=sys.stderr, flush=True)
        write_json(tmp / "manifest.json", manifest)
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    work.remove()
    return manifest


# --------------------------------------------------------------------------- reader
class TokenDataset:
    """Read-only view of a dataset directory made by :func:`prepare`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        bad = UserError(f"not a dataset directory: {self.path} (make one with `slm prepare`)")
        try:
            manifest = read_json(self.path / "manifest.json")
        except (OSError, ValueError):
            raise bad from None
        if not isinstance(manifest, dict) or manifest.get("kind") != DATASET_KIND:
            raise bad
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"dataset {self.path} has format {manifest['format_version']}, newer than this "
                            f"selective-lm reads ({FORMAT_VERSION}): upgrade selective-lm")
        self.manifest: dict = manifest
        self.seq_len: int = int(manifest["seq_len"])
        self.window_len: int = int(manifest["window_len"])
        self.vocab_size: int = int(manifest["vocab_size"])
        self.eos_id: int = int(manifest["eos_id"])
        self.bos_id: int | None = manifest.get("bos_id")  # each document starts with it; None: no BOS
        self.dtype = np.dtype(manifest["dtype"])
        self.fingerprint: str = manifest["fingerprint"]
        self.tokenizer_dir: Path = self.path / manifest["tokenizer"]
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self._tok = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_windows(s)}" for s in self.splits())
        return f"TokenDataset({str(self.path)!r}, seq_len={self.seq_len}, {sizes})"

    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def _split(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise UserError(f"unknown split '{split}' in {self.path}: available splits are "
                            f"{', '.join(self.splits())}")
        return self.manifest["splits"][split]

    def num_windows(self, split: str) -> int:
        return int(self._split(split)["windows"])

    def _map(self, split: str, file: str, dtype: np.dtype) -> np.ndarray:
        key = (split, file)
        if key not in self._maps:
            n = self.num_windows(split)
            p = self.path / file
            expected = n * self.window_len * dtype.itemsize
            if not p.is_file() or p.stat().st_size != expected:
                raise UserError(f"{p} is missing or truncated (expected {expected} bytes): "
                                "re-run `slm prepare --overwrite`")
            self._maps[key] = np.memmap(p, dtype=dtype, mode="r", shape=(n, self.window_len))
        return self._maps[key]

    def windows(self, split: str) -> np.ndarray:
        """Read-only memmap [N, seq_len + 1]."""
        return self._map(split, self._split(split)["file"], self.dtype)

    def provenance(self, split: str) -> np.ndarray | None:
        """uint8 memmap [N, seq_len + 1] of provenance labels aligned with windows, or None."""
        file = self._split(split).get("provenance")
        return None if not file else self._map(split, file, np.dtype(np.uint8))

    @property
    def has_context(self) -> bool:
        """Whether some tokens are context only (provenance label 255): their targets are ignored."""
        return str(CONTEXT_LABEL) in (self.manifest.get("provenance_labels") or {})

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), int64 [b, seq_len] each: inputs = w[:, :-1], targets = w[:, 1:], with -100 (ignored)
        at the targets that are context only (provenance label 255)."""
        w = self.windows(split)
        if isinstance(indices, slice):
            arr = np.array(w[indices])
        else:
            if isinstance(indices, torch.Tensor):
                indices = indices.detach().cpu().numpy()
            indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            arr = w[indices]
        t = torch.from_numpy(arr.astype(np.int64, copy=False))
        inputs, targets = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if self.has_context:
            ctx = np.asarray(self.provenance(split)[indices, 1:]) == CONTEXT_LABEL
            targets = targets.masked_fill(torch.from_numpy(ctx), IGNORE_INDEX)
        return inputs, targets

    def target_mask(self, split: str, indices=slice(None)) -> np.ndarray | None:
        """bool [b, seq_len]: the targets of these windows that count (not context only); None when all count."""
        if not self.has_context:
            return None
        if not isinstance(indices, slice):
            indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return np.asarray(self.provenance(split)[indices, 1:]) != CONTEXT_LABEL

    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer_dir)
        return self._tok

