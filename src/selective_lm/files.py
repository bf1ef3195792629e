"""Filesystem helpers: atomic writes, hashing, and the user-facing error type.

Every file the project writes goes through these helpers: content is written to a
temporary name in the same directory, flushed, and renamed over the target, so a
kill never leaves a file that looks complete.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits with code 2.

    ``agreed``: every rank of a distributed run raises this same error, so only rank 0 prints it.
    """

    def __init__(self, message: str, *, agreed: bool = False):
        super().__init__(message)
        self.agreed = agreed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a new file gets from open() under the current umask (mkstemp and safetensors make 0600)."""
    return 0o666 & ~_umask()


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, default_mode())  # mkstemp makes 0600; final files get the usual mode
    os.close(fd)
    return Path(name)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def os_error(e: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """The OS error behind ``e``, naming ``path`` when it names no file (a failed write() or fallocate names
    none); None when ``e`` is not one. Libraries written in Rust (safetensors, tokenizers) raise their own
    types with the OS's text and "(os error N)"."""
    if isinstance(e, OSError):
        if path is not None and e.filename is None and e.errno is not None:
            e.filename = os.fspath(path)
        return e
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m is None:
        return None
    n = int(m.group(1))
    return OSError(n, os.strerror(n), None if path is None else os.fspath(path))


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a user should read it: absolute, with the output that a temporary (``.NAME.XXXXXXXX.tmp``
    of :func:`atomic_dir`, or `slm prepare`'s work directory ``.NAME.prepare``) becomes in its place."""
    path = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    path = re.sub(r"/\.([^/]+)\.prepare(?=/|$)", r"/\1", os.path.abspath(path))  # `slm prepare`'s work directory
    return re.sub(r"/\.([^/]+)\.[A-Za-z0-9_]{8}\.tmp(?=/|$)", r"/\1", path)


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """An OS error raised inside (by Python or by a Rust library) names ``path`` if it names no file."""
    try:
        yield
    except Exception as e:
        err = os_error(e, path)
        if err is None or err is e:
            raise
        raise err from None


def reserve(path: str | os.PathLike, size: int, name: str | os.PathLike | None = None) -> None:
    """Create ``path`` with ``size`` bytes allocated on disk (zeros), before it is memory-mapped: a full
    disk is then an OSError here (naming ``name``, default ``path``), not a SIGBUS when a page of the map
    is first written."""
    try:
        with writing(name or path), open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(int(size), 1))
    except BaseException:
        Path(path).unlink(missing_ok=True)  # what was allocated goes back
        raise


@contextlib.contextmanager
def atomic_memmap(path: str | os.PathLike, dtype, shape: tuple[int, ...]):
    """A writable memmap for ``path``: its file is reserved (:func:`reserve`) under a temporary name,
    flushed and renamed to ``path`` when the block ends without an error, deleted otherwise."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        reserve(tmp, int(np.prod(shape)) * np.dtype(dtype).itemsize, name=path)
        mm = np.memmap(tmp, dtype=dtype, mode="r+", shape=shape)
        yield mm
        with writing(path):
            mm.flush()
        del mm
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with writing(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of strict JSON (non-finite floats become null)."""
    return json.dumps(finite_json(obj), allow_nan=False, default=str)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically (non-finite floats become null)."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_dir(final: str | os.PathLike) -> Path:
    """Return a fresh temporary directory beside ``final``; pass it to :func:`commit_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def commit_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a finished temporary directory into place, replacing ``final`` if it exists."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


class DirLock:
    """An exclusive lock on an output directory, held for the life of one writer (``fcntl.flock``).

    The lock file is ``.slm.lock`` inside the directory (``inside=True``) or ``.NAME.lock`` beside it
    (for outputs that are built elsewhere and moved into place). A second writer gets a one-line
    error naming the holder's PID; the OS releases the lock when its holder exits, even after kill -9.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "output directory", inside: bool = True):
        d = Path(directory)
        self.path = d / ".slm.lock" if inside else d.parent / f".{d.name}.lock"
        self.directory, self.what, self.fd = d, what, None

    def __enter__(self) -> DirLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.what} {self.directory} is in use by another slm process (pid {holder}): "
                            "wait for it to finish or stop it, or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Clean up after a killed writer in ``directory`` (only while holding its :class:`DirLock`):
    temporaries ``.NAME.XXXXXXXX.tmp`` of :func:`atomic_dir` / :func:`atomic_write_bytes` are deleted,
    and a ``.NAME.old`` left by :func:`commit_dir` between its two renames is moved back to ``NAME``
    when ``NAME`` is missing (else deleted). ``name`` limits this to one output's temporaries."""
    import re

    d = Path(directory)
    if not d.is_dir():
        return []
    stem = re.escape(name) if name is not None else r".+"
    tmp, old = re.compile(rf"^\.({stem})\.[A-Za-z0-9_]{{8}}\.tmp$"), re.compile(rf"^\.({stem})\.old$")
    removed = []
    for p in sorted(d.iterdir()):
        if m := old.match(p.name):
            target = d / m.group(1)
            if not target.exists():
                os.replace(p, target)  # the committed output comes back
                continue
        elif not tmp.match(p.name):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def replacing(out: str | os.PathLike, overwrite: bool, is_complete, is_started):
    """``--overwrite`` that never loses both outputs: the old one is moved aside to ``.NAME.replaced``
    and deleted only once the new one is complete.

    If the new one fails (or is killed) before it has anything worth resuming (``is_started``), the
    old one comes back; after that, both are kept: the new run continues with ``--resume`` (the old
    one goes when it completes), ``--overwrite`` starts the new one again with the old one still set
    aside, and a plain re-run is refused by the caller as an unfinished run.
    """
    out = Path(out)
    old = out.parent / f".{out.name}.replaced"
    if overwrite and out.is_symlink():
        raise UserError(f"--overwrite does not replace the symlink {out}: pass the directory it points to")
    if old.exists() and out.exists() and is_complete(out):
        shutil.rmtree(old)  # killed after the new output was complete
    if old.exists():
        if overwrite:
            shutil.rmtree(out, ignore_errors=True)  # the unfinished new output is what is overwritten
        elif not (out.exists() and is_started(out)):
            shutil.rmtree(out, ignore_errors=True)
            os.replace(old, out)
    elif overwrite and out.exists():
        os.replace(out, old)
    try:
        yield
    except BaseException:
        if old.exists():
            if out.exists() and is_started(out):
                print(f"slm: warning: the earlier output is kept at {old} until this one completes (--resume "
                      "continues it, --overwrite starts it again)", file=sys.stderr, flush=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
                os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_output_dir(out: Path, overwrite: bool, ours, what: str, held: str, pronoun: str = "it",
                     flag: str = "--out") -> None:
    """Refuse an output directory (``flag``) that is a file, a non-empty directory that is not ``what``
    (``ours(out)`` is false), or one that is but already holds ``held`` (``pronoun`` in the fix) without
    --overwrite."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} is a file: pass a directory for {flag}")
    if out.is_dir() and any(out.iterdir()):
        if not ours(out):
            raise UserError(f"output directory {out} is not empty and is not {what}: choose a new {flag}")
        if not overwrite:
            raise UserError(f"output directory {out} already holds {held}: pass --overwrite to replace {pronoun}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of the canonical JSON form of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
