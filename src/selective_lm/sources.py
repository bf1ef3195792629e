"""Input readers for `slm prepare`: text, JSONL, Parquet and HF `datasets` directories.

:func:`iter_documents` expands files, directories and globs into an ordered list of sources and
yields ``(text, spans)`` per document in a deterministic order. Bytes that are not UTF-8 become
U+FFFD and are counted; lone surrogates (e.g. from JSON ``\\udc80`` escapes) are replaced too,
so every yielded text can be encoded by a tokenizer. Text and JSONL files may be compressed
(``data.jsonl.gz``, ``x.txt.zst``, ``.bz2``, ``.xz``); they are decompressed as a stream.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from .files import UserError, sha256_file

TEXT_EXTS = (".txt", ".md", ".text")
JSONL_EXTS = (".jsonl", ".json")
PARQUET_EXTS = (".parquet",)
KNOWN_EXTS = TEXT_EXTS + JSONL_EXTS + PARQUET_EXTS
COMPRESSED_EXTS = (".gz", ".zst", ".bz2", ".xz")  # around text and JSONL files
_TEST_TOOLS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bzip2", ".xz": "xz"}
SUPPORTED = (f"{'/'.join(KNOWN_EXTS)} files (text and JSONL also as {'/'.join(COMPRESSED_EXTS)}) "
             "or HF datasets directories")
HF_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
LABEL_NAMES = {"content": 0, "noise": 1, "offtopic": 2, "wrong_solution": 3, "near_duplicate": 4, "perturbed_table": 5,
               "other_notation": 6, "context": 255}
CONTEXT_LABEL = 255  # reserved: context only (a prompt, a problem statement), its targets are ignored everywhere

_SURROGATE = re.compile("[\ud800-\udfff]")
_GLOB_CHARS = re.compile(r"[*?\[]")


# --------------------------------------------------------------------------- text cleaning
def decode_bytes(data: bytes) -> tuple[str, int]:
    """UTF-8 decode; undecodable bytes become U+FFFD. Returns (text, number of replaced bytes)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")
    return clean_text(text)


def clean_text(text: str) -> tuple[str, int]:
    """Replace lone surrogates (one char each, so character offsets are kept) by U+FFFD."""
    if text.isascii():
        return text, 0
    text, n = _SURROGATE.subn("\ufffd", text)
    return text, n


# --------------------------------------------------------------------------- input expansion
def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in HF_MARKERS)


def _is_slm_dataset_dir(path: Path) -> bool:
    return (path / "manifest.json").is_file() and (path / "tokenizer").is_dir()


def _walk(directory: Path, skipped: list[str]) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if is_hf_dataset_dir(entry):
                out.append(("hf", entry))
            elif not _is_slm_dataset_dir(entry):  # never read a prepared dataset back as input
                out.extend(_walk(entry, skipped))
        elif entry.is_file():
            if is_supported(entry):
                out.append((_kind(entry), entry))
            else:
                skipped.append(os.path.abspath(entry))
    return out


def split_ext(path: Path) -> tuple[str, str | None]:
    """(format extension, compression extension or None): ``data.jsonl.gz`` -> (".jsonl", ".gz")."""
    ext = path.suffix.lower()
    if ext in COMPRESSED_EXTS:
        return Path(path.stem).suffix.lower(), ext
    return ext, None


def is_supported(path: Path) -> bool:
    ext, compression = split_ext(path)
    return ext in (TEXT_EXTS + JSONL_EXTS if compression else KNOWN_EXTS)


def _kind(path: Path) -> str:
    ext, compression = split_ext(path)
    if ext in TEXT_EXTS:
        return "text"
    if ext in JSONL_EXTS:
        return "jsonl"
    if ext in PARQUET_EXTS and compression is None:
        return "parquet"
    shown = ext + (compression or "")
    raise UserError(f"unsupported input file type '{shown or path.name}': {path} (use {SUPPORTED})")


def _skipped_note(paths: list[str]) -> str:
    names = [Path(f).name for f in paths]
    more = ", ..." if len(names) > 5 else ""
    return f" ({len(names)} files of other types skipped: {', '.join(names[:5])}{more})" if names else ""


def expand_inputs(inputs: list[str], skipped: list[str] | None = None) -> list[tuple[str, Path]]:
    """Files, directories (recursive, sorted) and globs → ordered, de-duplicated (kind, path) list.

    Files of other types met in a directory or a glob are left out; their absolute paths are
    appended to ``skipped``. A directory where nothing is readable is a UserError.
    """
    skipped = [] if skipped is None else skipped
    if not inputs:
        raise UserError("no inputs given: pass --inputs FILE_OR_DIR [...]")
    out: list[tuple[str, Path]] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.exists():
            matches = [p]
        elif _GLOB_CHARS.search(item):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(item), recursive=True))]
            if not matches:
                raise UserError(f"input glob matched nothing: {item} (check the pattern and quote it)")
        else:
            raise UserError(f"input path does not exist: {item} (check the path)")
        for m in matches:
            if m.is_dir():
                if is_hf_dataset_dir(m):
                    out.append(("hf", m))
                else:
                    before = len(skipped)
                    found = _walk(m, skipped)
                    if not found and p.exists():
                        raise UserError(f"input directory {m} holds no {SUPPORTED}{_skipped_note(skipped[before:])}: "
                                        "point --inputs at your corpus files")
                    out.extend(found)
            elif m.is_file():
                if p.exists() or is_supported(m):
                    out.append((_kind(m), m))
                else:
                    skipped.append(os.path.abspath(m))
    skipped[:] = list(dict.fromkeys(skipped))  # a directory given twice skips its files once
    seen: set[str] = set()
    unique = []
    for kind, path in out:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append((kind, path))
    if not unique:
        raise UserError(f"no input files found in {', '.join(inputs)}{_skipped_note(skipped)}: pass {SUPPORTED}, "
                        "or directories holding them")
    return unique


# --------------------------------------------------------------------------- spans
def check_spans(spans, text_len: int, where: str) -> list | None:
    """Validate ``[[start, end, label], ...]`` (character offsets, end exclusive)."""
    if spans is None:
        return None
    if not isinstance(spans, (list, tuple)):
        raise UserError(f"{where}: spans must be a list of [start, end, label], got {type(spans).__name__}")
    out = []
    for s in spans:
        if not isinstance(s, (list, tuple)) or len(s) != 3:
            raise UserError(f"{where}: each span must be [start, end, label], got {s!r}")
        start, end, label = s
        if isinstance(label, str):
            if label not in LABEL_NAMES:
                raise UserError(f"{where}: unknown span label {label!r}: use an int 0-255 or one of "
                                f"{', '.join(LABEL_NAMES)}")
            label = LABEL_NAMES[label]
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, label))
        if not ok or not (0 <= start <= end <= text_len) or not (0 <= label <= 255):
            raise UserError(f"{where}: bad span {list(s)!r}: need ints 0 <= start <= end <= "
                            f"len(text)={text_len} and 0 <= label <= 255")
        out.append((start, end, label))
    return out


# --------------------------------------------------------------------------- decompression
class _ZstdReader(io.RawIOBase):
    """Streaming zstd decoder over every frame of a file; a file cut inside a frame raises EOFError.

    (zstandard's own stream_reader returns a short read silently when the file is truncated.)
    """

    def __init__(self, path: Path):
        try:
            import zstandard
        except ImportError:
            raise UserError(f"{path}: reading .zst files needs the zstandard package: pip install zstandard") from None
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)  # files made with `zstd --long`
        self._frame = None
        self._rest = self._out = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._out):
            if not self._fill():
                return 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> bool:
        while True:
            data, self._rest = (self._rest or self._f.read(1 << 17)), b""
            if not data:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("compressed file ended before the end of a zstd frame")
                return False
            if self._frame is None or self._frame.eof:
                self._frame = self._dctx.decompressobj()
            self._out, self._pos = self._frame.decompress(data), 0
            if self._frame.eof:
                self._rest = self._frame.unused_data  # the next frame starts here
            if self._out:
                return True

    def close(self) -> None:
        self._f.close()
        super().close()


def open_input(path: Path):
    """A binary file over the (decompressed, streamed) bytes of a text or JSONL input file."""
    compression = split_ext(path)[1]
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 16)
    return open(path, "rb")


def _is_corrupt(e: BaseException) -> bool:
    """A decoder's complaint about the data (not a permission or disk error, which carry an errno)."""
    if isinstance(e, OSError):
        return e.errno is None  # gzip.BadGzipFile, bz2's "Invalid data stream"
    return isinstance(e, (EOFError, zlib.error, lzma.LZMAError)) or type(e).__module__.startswith("zstandard")


def _checked(docs, path: Path):
    """Turn a corrupt or truncated compressed file into one line naming it and the fix."""
    try:
        yield from docs
    except Exception as e:  # each decoder raises its own types
        if not _is_corrupt(e):
            raise
        compression = split_ext(path)[1]
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: corrupt or truncated {compression} file ({msg}): download or compress it again "
                        f"(`{_TEST_TOOLS[compression]} -t {path.name}` checks it)") from None


# --------------------------------------------------------------------------- readers
def _read_text(path: Path, stats: dict) -> Iterator[tuple[str, list | None]]:
    with open_input(path) as f:
        text, n = decode_bytes(f.read())
    stats["replaced_bytes"] += n
    yield text, None, None


SPLIT_NAMES = ("train", "validation", "test")


def _record(text, spans, where: str, stats: dict, text_field: str, split=None,
            context=None) -> tuple[str, list | None, str | None]:
    if not isinstance(text, str):
        raise UserError(f"{where}: field '{text_field}' must be a string, got {type(text).__name__}")
    if split is not None and split not in SPLIT_NAMES:
        raise UserError(f"{where}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}: fix the field "
                        "or pass split_field=NONE_SUCH to split by hash")
    text, n = clean_text(text)
    stats["replaced_bytes"] += n
    spans = check_spans(spans, len(text), where)
    if context is not None:
        text, spans = with_context(context, text, spans, where, stats)
    return text, spans, split


def with_context(context, text: str, spans: list | None, where: str, stats: dict) -> tuple[str, list | None]:
    """A document whose ``context`` (a prompt, a problem statement) comes before ``text``: the context's characters
    get the reserved label :data:`CONTEXT_LABEL` and the text's spans move after it."""
    if not isinstance(context, str):
        raise UserError(f"{where}: the context field must be a string (or null for none), got "
                        f"{type(context).__name__}")
    context, n = clean_text(context)
    stats["replaced_bytes"] += n
    shift = len(context)
    if not shift:
        return text, spans
    return context + text, [(0, shift, CONTEXT_LABEL)] + [(s + shift, e + shift, lab) for s, e, lab in spans or []]


def _read_jsonl(path: Path, text_field: str, spans_field: str, split_field: str, stats: dict,
                lo: int | None = None, hi: int | None = None, context_field: str | None = None):
    with open_input(path) as f:
        head: list[bytes] = []  # lines up to the first non-blank one (no seeking back in a compressed stream)
        if lo is not None:  # a piece: the lines that start in bytes [lo, hi) of a plain JSONL file
            f.seek(lo)
        for line in f:
            head.append(line)
            if line.strip():
                break
        if lo is None and head and head[-1].lstrip().startswith(b"["):  # a .json file holding one array of objects
            raw, n = decode_bytes(b"".join(head) + f.read())
            stats["replaced_bytes"] += n
            try:
                rows = json.loads(raw)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}): fix the file") from None
            items = ((f"{path}[{i}]", row) for i, row in enumerate(rows))
        else:
            items = _jsonl_lines(itertools.chain(head, f), path, stats, lo, hi)
        for where, row in items:
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}: "
                                "write one object per line")
            if text_field not in row:
                keys = ", ".join(list(row)[:8])
                raise UserError(f"{where}: no '{text_field}' field (keys: {keys}): pass text_field=NAME")
            yield _record(row[text_field], row.get(spans_field), where, stats, text_field, row.get(split_field),
                          row.get(context_field) if context_field else None)


def _jsonl_lines(f, path: Path, stats: dict, lo: int | None = None, hi: int | None = None):
    pos = lo
    for lineno, line in enumerate(f, 1):
        where = f"{path}:{lineno}" if lo is None else f"{path}:byte {pos}"  # a piece does not know its line numbers
        if lo is not None:
            if pos >= hi:
                return
            pos += len(line)
        if not line.strip():
            continue
        text, n = decode_bytes(line)
        stats["replaced_bytes"] += n
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg}): fix or remove the line") from None
        yield where, row


def _read_table_batches(batches, columns: list[str], text_field: str, spans_field: str, split_field: str, name: str,
                        stats: dict, row: int = 0, context_field: str | None = None):
    if text_field not in columns:
        raise UserError(f"{name}: no '{text_field}' column (columns: {', '.join(columns)}): pass text_field=NAME")
    has_spans = spans_field in columns
    for batch in batches:
        texts = batch[text_field]
        spans = batch[spans_field] if has_spans else [None] * len(texts)
        splits = batch[split_field] if split_field in columns else [None] * len(texts)
        contexts = batch[context_field] if context_field in columns else [None] * len(texts)
        for text, sp, split, context in zip(texts, spans, splits, contexts):
            where = f"{name} row {row}"
            row += 1
            if text is None:
                raise UserError(f"{where}: '{text_field}' is null: drop empty rows first")
            yield _record(text, sp, where, stats, text_field, split, context)


def _read_parquet(path: Path, text_field: str, spans_field: str, split_field: str, stats: dict,
                  lo: int | None = None, hi: int | None = None, context_field: str | None = None):
    """Every row, or a piece: row groups [lo, hi)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None
    columns = pf.schema_arrow.names
    wanted = [c for c in (text_field, spans_field, split_field, context_field) if c in columns]
    groups = {} if lo is None else {"row_groups": list(range(lo, hi))}
    first = sum(pf.metadata.row_group(i).num_rows for i in range(lo or 0))
    batches = (b.to_pydict() for b in pf.iter_batches(batch_size=1024, columns=wanted, **groups)) if wanted else iter(())
    yield from _read_table_batches(batches, columns, text_field, spans_field, split_field, str(path), stats, first,
                                   context_field)


def _read_hf(path: Path, text_field: str, spans_field: str, split_field: str, stats: dict,
             lo: int | None = None, hi: int | None = None, context_field: str | None = None):
    """Every row, or a piece: rows [lo, hi)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a readable HF datasets directory ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(f"{path}: dataset has no 'train' split (splits: {', '.join(ds)}): "
                            "point --inputs at the split directory you want")
        ds = ds["train"]
    columns = list(ds.column_names)
    wanted = [c for c in (text_field, spans_field, split_field, context_field) if c in columns]
    ds = ds if lo is None else ds.select(range(lo, hi))
    batches = ds.select_columns(wanted).iter(batch_size=1024) if wanted else iter(())
    yield from _read_table_batches(batches, columns, text_field, spans_field, split_field, str(path), stats, lo or 0,
                                   context_field)


def source_record(kind: str, path: Path) -> dict:
    """{"path", "bytes", "sha256"}; a directory hashes its files' relative paths and contents."""
    if kind != "hf":
        return {"path": os.path.abspath(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    h, size = hashlib.sha256(), 0
    for f in sorted(q for q in path.rglob("*") if q.is_file()):
        size += f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return {"path": os.path.abspath(path), "bytes": size, "sha256": h.hexdigest()}


def iter_documents(inputs: list[str], text_field: str = "text", spans_field: str = "spans",
                   stats: dict | None = None, split_field: str = "split",
                   with_split: bool = False, context_field: str | None = None) -> Iterator[tuple]:
    """Yield ``(text, spans)`` per non-empty document of ``inputs`` in a deterministic order
    (``(text, spans, split)`` with ``with_split``: the document's ``split_field`` value — train,
    validation or test — or None where it has none).

    ``spans`` is a list of ``(start, end, label)`` character spans or None. When ``stats`` is
    given it receives ``replaced_bytes``, ``documents``, ``empty_documents``, ``sources``
    (one ``{"path", "bytes", "sha256"}`` per source file or HF dataset directory; a compressed
    file's bytes and hash are those of the file as stored) and ``skipped`` (absolute paths of the
    files of other types found in the input directories and globs).

    ``context_field``: a JSONL/Parquet/HF field holding a document's context (a prompt, a problem statement):
    the document is that text followed directly by its ``text_field``, and the context's characters carry the
    reserved span label :data:`CONTEXT_LABEL` (a row without the field, or with null, has none).
    """
    st = stats if stats is not None else {}
    st.update(replaced_bytes=0, documents=0, empty_documents=0, sources=[], skipped=[])
    sources = expand_inputs(inputs, st["skipped"])
    for kind, path in sources:
        if stats is not None:
            st["sources"].append(source_record(kind, path))
        for text, spans, split in source_documents(kind, path, text_field, spans_field, split_field, st,
                                                   context_field=context_field):
            yield (text, spans, split) if with_split else (text, spans)


def source_documents(kind: str, path: Path, text_field: str, spans_field: str, split_field: str, stats: dict,
                     lo: int | None = None, hi: int | None = None,
                     context_field: str | None = None) -> Iterator[tuple[str, list | None, str | None]]:
    """``(text, spans, split)`` of each non-empty document of one source, or of one piece of it (``lo``/``hi``:
    :func:`selective_lm.shards.plan_pieces`); ``stats`` counts documents, empty documents and replaced bytes;
    ``context_field``: a field of context-only text put before the text (:func:`with_context`)."""
    if kind == "text":
        docs = _read_text(path, stats)
    elif kind == "jsonl":
        docs = _read_jsonl(path, text_field, spans_field, split_field, stats, lo, hi, context_field)
    elif kind == "parquet":
        docs = _read_parquet(path, text_field, spans_field, split_field, stats, lo, hi, context_field)
    else:
        docs = _read_hf(path, text_field, spans_field, split_field, stats, lo, hi, context_field)
    if kind != "hf" and split_ext(path)[1]:
        docs = _checked(docs, path)
    for text, spans, split in docs:
        if not text:
            stats["empty_documents"] += 1
            continue
        stats["documents"] += 1
        yield text, spans, split

