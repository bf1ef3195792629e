"""How a command meets its terminal and its machine: progress bars and CPU threads.

Progress bars are drawn on a terminal (or in a notebook) only. Under CI, nohup or a redirect to a
file a bar would write a refresh many times a second into the log, so there it is off and the
commands print their plain lines instead (training: one per log step).

Threads: unless ``OMP_NUM_THREADS`` is set, each command gives torch the CPUs this process may use
(its affinity mask, capped by a cgroup CPU quota) shared among the ranks on this machine
(``LOCAL_WORLD_SIZE`` under torchrun), so neighbouring processes do not oversubscribe the cores.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def interactive(stream=None) -> bool:
    """True when ``stream`` (default: stderr) is a terminal, or inside a notebook kernel."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def progress(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar, shown when ``enabled`` and on a terminal; disabled otherwise (``bar.disable`` says which).

    Every progress bar of the package comes from here.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)


# --------------------------------------------------------------------------- threads
def default_threads(cpus: int, local_world: int = 1, quota: float | None = None) -> int:
    """Intra-op threads per process: the usable CPUs (``cpus``, at most the whole CPUs of a cgroup
    ``quota``) divided among the ``local_world`` processes of this machine; at least 1."""
    if quota is not None and quota > 0:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus // max(1, local_world))


def cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when unlimited."""
    root = Path(root)
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        pass
    return None


def set_default_threads() -> int | None:
    """Set torch's intra-op threads to :func:`default_threads` unless OMP_NUM_THREADS is set; returns
    the number set (None when the environment decides)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local_world = 1
    n = default_threads(cpus, local_world, cpu_quota())
    import torch

    torch.set_num_threads(n)
    return n


__all__ = ["cpu_quota", "default_threads", "interactive", "progress", "set_default_threads"]
