"""The scale-out side of `slm prepare`: the corpus in units, tokenized by worker processes and torchrun ranks.

A **unit** is a run of consecutive input pieces of about :data:`UNIT_BYTES` (a piece is a whole file, or a part
of one that can be read alone: :func:`plan_pieces`). Each unit is tokenized on its own into raw per-split token
streams, ``units/uNNNNNN.SPLIT.bin`` (and ``.prov.bin``), in a work directory beside the output
(``.NAME.prepare``), and marked done by its summary ``uNNNNNN.json``, written last. Units go to the ranks of a
torchrun job round-robin and, within a rank, to ``num_workers`` processes. Afterwards rank 0 concatenates the
streams in unit order and cuts the windows: documents keep their input order whatever the split of the work,
so the dataset is byte for byte the one a single process makes. An interrupted job resumes: the work
directory's ``job.json`` names the inputs (paths, sizes, modification times), the units and the settings, and
a re-run of the same command redoes only the units without a summary.

The trained tokenizer sees a bounded sample (:func:`sample_texts`): about ``budget`` characters of train
documents, an equal share from every unit, so its memory and time do not grow with the corpus (a corpus
under the budget is read whole, as before).
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .files import read_json, write_json, writing
from .sources import expand_inputs, source_documents, split_ext

UNIT_BYTES = 64 << 20  # input bytes per unit: the grain of the work, of its spread over processes and of a resume
WORK_SUFFIX = ".prepare"


# --------------------------------------------------------------------------- plan
def plan_pieces(kind: str, path: Path, size: int) -> list[tuple[int | None, int | None, int]]:
    """A source cut into pieces of about ``size`` bytes that can be read on their own: ``(lo, hi, bytes)`` each.

    A plain JSONL file is cut at line starts (a piece holds the lines that start in bytes [lo, hi)), a Parquet
    file between row groups, an HF dataset between rows; text files, compressed files and JSON arrays are one
    piece ``(None, None, bytes)``. Reading the pieces in order gives the source's documents in order.
    """
    if kind == "jsonl" and not split_ext(path)[1] and path.suffix.lower() == ".jsonl":
        total = path.stat().st_size
        with open(path, "rb") as f:
            if total <= size or f.read(4096).lstrip().startswith(b"["):
                return [(None, None, total)]
            cuts = [0]
            for c in range(size, total, size):
                f.seek(c - 1)
                f.readline()  # to the start of the first line at or after c
                if cuts[-1] < f.tell() < total:
                    cuts.append(f.tell())
        cuts.append(total)
        return [(a, b, b - a) for a, b in zip(cuts, cuts[1:])]
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
        except Exception:
            return [(None, None, path.stat().st_size)]
        sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
        return _group(sizes, size) if len(sizes) > 1 else [(None, None, path.stat().st_size)]
    if kind == "hf":
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
            ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
            per_row, n = max(1, ds.data.nbytes // max(1, len(ds))), len(ds)
        except Exception:
            return [(None, None, 0)]
        rows = max(1, size // per_row)
        return [(a, min(a + rows, n), (min(a + rows, n) - a) * per_row) for a in range(0, n, rows)] if n > rows \
            else [(None, None, n * per_row)]
    return [(None, None, path.stat().st_size)]


def _group(sizes: list[int], size: int) -> list[tuple[int, int, int]]:
    """Consecutive items (row groups) in runs of about ``size`` bytes: (first, end, bytes)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(sizes):
        total += n
        if total >= size or i == len(sizes) - 1:
            out.append((start, i + 1, total))
            start, total = i + 1, 0
    return out


def plan(inputs: list[str]) -> dict:
    """The job: ``sources`` [(kind, path)], ``files`` [(path, size, mtime_ns)], ``skipped`` paths, ``units`` (each a
    list of pieces [source index, lo, hi]) and their ``bytes``."""
    skipped: list[str] = []
    sources = expand_inputs(inputs, skipped)
    units: list[list] = [[]]
    sizes = [0]
    files = []
    for s, (kind, path) in enumerate(sources):
        st = path.stat()
        files.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
        for lo, hi, n in plan_pieces(kind, path, int(UNIT_BYTES)):
            if units[-1] and sizes[-1] + n > int(UNIT_BYTES):
                units.append([])
                sizes.append(0)
            units[-1].append([s, lo, hi])
            sizes[-1] += n
    return {"sources": [[kind, os.path.abspath(p)] for kind, p in sources], "files": files, "skipped": skipped,
            "units": units, "bytes": sizes}


def unit_documents(job: dict, unit: list, stats: dict) -> Iterator[tuple[str, list | None, str | None]]:
    """The documents of one unit, in input order (``stats``: documents, empty_documents, replaced_bytes)."""
    f = job["fields"]
    for s, lo, hi in unit:
        kind, path = job["sources"][s]
        yield from source_documents(kind, Path(path), f["text"], f["spans"], f["split"], stats, lo, hi, f.get("context"))


def new_stats() -> dict:
    return {"documents": 0, "empty_documents": 0, "replaced_bytes": 0}


def sample_texts(job: dict, budget: int, seed: int, keep: Callable[[str, str | None], bool]) -> Iterator[str]:
    """About ``budget`` characters of the documents ``keep`` accepts, an equal share from every unit: in rounds, the
    units (in an order drawn from ``seed`` each round) give documents from where they stopped until their share
    of what is left of the budget; a unit that runs out drops out. The corpus is read whole when it holds no more
    (``budget`` 0: always)."""
    units = job["units"]
    taken = [0] * len(units)  # documents read from each unit so far
    live = list(range(len(units)))
    left = budget if budget > 0 else float("inf")
    rounds = 0
    while live and left > 0:
        share = left / len(live)
        rounds += 1
        for u in [live[i] for i in np.random.default_rng([seed, 0x70C, rounds]).permutation(len(live))]:
            got = 0.0
            docs = unit_documents(job, units[u], new_stats())
            for k, (text, _, split) in enumerate(docs):
                if k < taken[u]:
                    continue
                taken[u] = k + 1
                if keep(text, split):
                    got += len(text)
                    yield text
                if got >= share:
                    break
            else:
                live.remove(u)  # read to its end
            left -= got
            if left <= 0:
                return


# --------------------------------------------------------------------------- the work directory
class WorkDir:
    """``.NAME.prepare`` beside the output: ``job.json``, ``tokenizer/``, ``units/`` (streams and summaries),
    ``sources/`` (each input's size and sha256)."""

    def __init__(self, out: Path | None = None, path: Path | None = None):
        self.path = Path(path) if path is not None else Path(out).parent / f".{Path(out).name}{WORK_SUFFIX}"

    def open(self, identity: dict) -> int:
        """Keep the work of the same job, else start afresh; returns the units already done."""
        try:
            same = read_json(self.path / "job.json") == identity
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(self.path, ignore_errors=True)
            (self.path / "units").mkdir(parents=True)
            (self.path / "sources").mkdir()
            write_json(self.path / "job.json", identity)
        return sum(1 for _ in (self.path / "units").glob("u*.json"))

    def stream(self, unit: int, split: str, prov: bool = False) -> Path:
        return self.path / "units" / f"u{unit:06d}.{split}.{'prov.' if prov else ''}bin"

    def summary(self, unit: int) -> Path:
        return self.path / "units" / f"u{unit:06d}.json"

    def source(self, index: int) -> Path:
        return self.path / "sources" / f"s{index:06d}.json"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class StreamWriter:
    """One split of one unit: its token stream (and provenance labels) appended as they come, no windows yet.
    Has what :func:`selective_lm.data._pack` uses of a writer."""

    def __init__(self, path: Path, prov_path: Path, dtype: np.dtype):
        self.path, self.prov_path, self.dtype = path, prov_path, dtype
        self.f = self.prov_f = None
        self.tokens = self.documents = 0

    def _write(self, f, path: Path, data: np.ndarray) -> None:
        with writing(path):
            f.write(np.ascontiguousarray(data).tobytes())

    def enable_provenance(self) -> None:
        with writing(self.prov_path):
            self.prov_f = open(self.prov_path, "wb")
        if self.tokens:
            self._write(self.prov_f, self.prov_path, np.zeros(self.tokens, dtype=np.uint8))

    def add(self, ids: np.ndarray, prov: np.ndarray | None) -> None:
        if self.f is None:
            with writing(self.path):
                self.f = open(self.path, "wb")
        self._write(self.f, self.path, ids)
        if self.prov_f is not None:
            self._write(self.prov_f, self.prov_path, prov if prov is not None else np.zeros(len(ids), np.uint8))
        self.tokens += len(ids)

    def close(self) -> dict:
        for f, p in ((self.f, self.path), (self.prov_f, self.prov_path)):
            if f is not None:
                with writing(p):
                    f.close()
        return {"tokens": self.tokens, "documents": self.documents, "provenance": self.prov_f is not None}


class WindowWriter:
    """Streams one split's token stream into complete windows on disk (``{name}.bin``, with a sha256 of it, and
    ``{name}.prov.bin``); the tail is dropped. Writes once ``flush_tokens`` tokens are pending."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, window_len: int, flush_tokens: int = 1 << 22):
        self.name, self.dtype, self.window_len, self.dir = name, dtype, window_len, directory
        self.flush_tokens = flush_tokens
        self.file = f"{name}.bin"
        self.f = open(directory / self.file, "wb")
        self.sha = hashlib.sha256()
        self.pending: list[np.ndarray] = []
        self.pending_prov: list[np.ndarray] | None = None
        self.prov_f = None
        self.npending = self.windows = self.documents = 0

    def enable_provenance(self) -> None:
        self.prov_f = open(self.dir / f"{self.name}.prov.bin", "wb")
        written = self.windows * self.window_len
        zeros = np.zeros(min(written, self.flush_tokens) or 1, dtype=np.uint8)
        while written > 0:
            k = min(written, len(zeros))
            self.prov_f.write(zeros[:k].tobytes())
            written -= k
        self.pending_prov = [np.zeros(len(a), dtype=np.uint8) for a in self.pending]

    def add(self, ids: np.ndarray, prov: np.ndarray | None) -> None:
        self.pending.append(ids)
        if self.pending_prov is not None:
            self.pending_prov.append(prov if prov is not None else np.zeros(len(ids), dtype=np.uint8))
        self.npending += len(ids)
        if self.npending >= self.flush_tokens:
            self.flush()

    def flush(self) -> None:
        k = (self.npending // self.window_len) * self.window_len
        if k == 0:
            return
        data = np.concatenate(self.pending)
        buf = np.ascontiguousarray(data[:k]).tobytes()
        self.f.write(buf)
        self.sha.update(buf)
        self.pending, self.npending = [data[k:]], len(data) - k
        if self.pending_prov is not None:
            prov = np.concatenate(self.pending_prov)
            self.prov_f.write(prov[:k].tobytes())
            self.pending_prov = [prov[k:]]
        self.windows += k // self.window_len

    def close(self) -> dict:
        self.flush()
        self.f.close()
        if self.prov_f is not None:
            self.prov_f.close()
        return {"file": self.file, "windows": self.windows, "tokens": self.windows * self.window_len,
                "documents": self.documents,
                "provenance": f"{self.name}.prov.bin" if self.prov_f is not None else None,
                "sha256": self.sha.hexdigest()}


def read_stream(path: Path, prov_path: Path | None, dtype: np.dtype, tokens: int, chunk: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """A unit's stream in pieces of ``chunk`` tokens: (ids, labels or None)."""
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        ids = np.fromfile(path, dtype=dtype, count=n, offset=start * dtype.itemsize)
        prov = None if prov_path is None else np.fromfile(prov_path, dtype=np.uint8, count=n, offset=start)
        yield ids, prov


# --------------------------------------------------------------------------- running the tasks
def share(tasks: list, rank: int, world: int) -> list:
    """This rank's tasks: every world-th, from its rank on."""
    return tasks[rank::world]


def run_tasks(fn: Callable, tasks: list, workers: int, done: Callable[[object], None] = lambda r: None) -> None:
    """``fn(task)`` for every task, in ``workers`` processes (1: in this one); ``done`` gets each result.

    The processes are forked (no re-import), with TOKENIZERS_PARALLELISM=false: each tokenizes on one core,
    and a tokenizer that already ran threads in this process is not forked mid-use. An error in a task is
    raised here, as it was raised there.
    """
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            done(fn(t))
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with _env(TOKENIZERS_PARALLELISM="false"), multiprocessing.get_context(method).Pool(min(workers, len(tasks))) as pool:
        for r in pool.imap_unordered(fn, tasks):
            done(r)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
