"""The tokens training selected, saved per optimizer step (``slm train ... save_selection=true``) and read back.

Recomputing a run's masks afterwards would need the weights of every step; they exist only during training. So
the loop keeps each step's masks on the device and writes them at its log and checkpoint steps (the syncs it
makes anyway), in a global order that does not depend on the world size::

    RUN/selection/windows.bin  int64 [steps, windows_per_step]: the train windows of each step, in the order one
                               process with the whole step's batch reads them (micro-batch, then rank, then window)
    RUN/selection/mask.bin     uint8 [steps, windows_per_step, ceil(seq_len / 8)]: one bit per target
                               (np.packbits along the window), 1 = selected (hard weighting; CLM: every counted target)
    RUN/selection/meta.json    kind, shapes, the dataset fingerprint and ``written``: the first steps whose rows are
                               on disk (written after the rows; a resumed run rewrites the rows after its checkpoint)

Both files are reserved at full size when the run starts (a full disk stops it there, not later).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import dist
from .files import UserError, read_json, reserve, write_json

KIND = "selective-lm-selection"
DIRNAME = "selection"
_FORMAT = 1


class SelectionLog:
    """Buffers this rank's masks of each step on the device; :meth:`flush` (every rank, the same steps) gathers them
    to rank 0, which writes them."""

    def __init__(self, steps: int, windows_per_step: int, seq_len: int, device: torch.device):
        self.steps, self.per_step, self.seq_len, self.device = steps, windows_per_step, seq_len, device
        self.pending: list[tuple[int, torch.Tensor, np.ndarray]] = []
        self.dir: Path | None = None
        self.written = 0

    def open(self, run_dir: str | Path, start_step: int, info: dict) -> None:
        """Rank 0: create the files (a fresh run) or reopen them (a resume from ``start_step``)."""
        d = Path(run_dir) / DIRNAME
        shape = {"steps": self.steps, "windows_per_step": self.per_step, "seq_len": self.seq_len}
        if start_step > 0:
            try:
                meta = read_json(d / "meta.json")
            except (OSError, ValueError):
                meta = {}
            if {k: meta.get(k) for k in shape} != shape or meta.get("written", 0) < start_step or not all(
                    (d / f).is_file() for f in ("windows.bin", "mask.bin")):
                raise UserError(f"{d} does not hold the selection of the run's first {start_step} steps: it was "
                                "removed or changed; start the run over with --overwrite")
            self.dir, self.written, self.meta = d, start_step, meta
            return
        d.mkdir(parents=True, exist_ok=True)
        for f in ("windows.bin", "mask.bin"):
            (d / f).unlink(missing_ok=True)
        reserve(d / "windows.bin", self.steps * self.per_step * 8)
        reserve(d / "mask.bin", self.steps * self.per_step * self._row_bytes)
        self.dir, self.meta = d, {"format_version": _FORMAT, "kind": KIND, **shape, **info, "written": 0}
        write_json(d / "meta.json", self.meta)

    @property
    def _row_bytes(self) -> int:
        return (self.seq_len + 7) // 8

    def add(self, step: int, masks: list[torch.Tensor], windows: list[np.ndarray]) -> None:
        """This rank's micro-batch masks ([B, seq_len] each) and window indices of optimizer step ``step``."""
        m = torch.stack([x.bool() for x in masks])  # [micro, B, T]; stays on the device until the flush
        self.pending.append((step, m, np.stack(windows).astype(np.int64)))  # the windows are known on the host

    def flush(self) -> None:
        """Every rank, at the same steps: gather the buffered steps to rank 0, which writes them."""
        if not self.pending:
            return
        steps = [s for s, _, _ in self.pending]
        masks = torch.stack([m for _, m, _ in self.pending]).to(torch.uint8)  # [k, micro, B, T] (gloo: no bool)
        wins = torch.from_numpy(np.stack([w for _, _, w in self.pending])).to(masks.device)  # [k, micro, B]
        self.pending = []
        masks, wins = dist.all_gather_cat(masks.unsqueeze(0)), dist.all_gather_cat(wins.unsqueeze(0))  # [world, ...]
        if not dist.is_main():
            return
        k = len(steps)
        # [world, k, micro, B, ...] -> [k, micro, world, B, ...]: one process's order
        rows = masks.permute(1, 2, 0, 3, 4).reshape(k, self.per_step, self.seq_len).cpu().numpy().astype(bool)
        idx = wins.permute(1, 2, 0, 3).reshape(k, self.per_step).cpu().numpy()
        if steps != list(range(steps[0], steps[0] + k)) or steps[0] > self.written:
            raise RuntimeError(f"selection log: steps {steps[0]}..{steps[-1]} do not follow step {self.written}")
        s0 = steps[0]
        mm = np.memmap(self.dir / "mask.bin", dtype=np.uint8, mode="r+",
                       shape=(self.steps, self.per_step, self._row_bytes))
        mm[s0:s0 + k] = np.packbits(rows, axis=-1)
        mm.flush()
        wm = np.memmap(self.dir / "windows.bin", dtype=np.int64, mode="r+", shape=(self.steps, self.per_step))
        wm[s0:s0 + k] = idx
        wm.flush()
        del mm, wm
        self.written = s0 + k
        self.meta["written"] = self.written
        write_json(self.dir / "meta.json", self.meta)  # after the rows: `written` never counts rows not on disk


class Selection:
    """A run's saved selection, read-only: ``windows`` [written, windows_per_step] and :meth:`masks`."""

    def __init__(self, run_dir: str | Path):
        d = Path(run_dir) / DIRNAME
        try:
            meta = read_json(d / "meta.json")
        except (OSError, ValueError):
            raise UserError(f"{Path(run_dir)} has no saved selection ({d / 'meta.json'} not found): train the run "
                            "with save_selection=true (the selection is saved during training)") from None
        if meta.get("kind") != KIND:
            raise UserError(f"{d / 'meta.json'} is not a saved selection: pass a run directory of `slm train`")
        self.dir, self.meta = d, meta
        self.steps, self.per_step, self.seq_len = meta["steps"], meta["windows_per_step"], meta["seq_len"]
        self.written = int(meta["written"])
        row = (self.seq_len + 7) // 8
        for f, size in (("windows.bin", self.steps * self.per_step * 8), ("mask.bin", self.steps * self.per_step * row)):
            if not (d / f).is_file() or (d / f).stat().st_size != size:
                raise UserError(f"{d / f} is missing or truncated ({size} bytes expected): train the run again with "
                                "save_selection=true")
        self.windows = np.memmap(d / "windows.bin", dtype=np.int64, mode="r",
                                 shape=(self.steps, self.per_step))[:self.written]
        self._mask = np.memmap(d / "mask.bin", dtype=np.uint8, mode="r", shape=(self.steps, self.per_step, row))

    def masks(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """bool [steps stop - start, windows_per_step, seq_len]: the selected targets of those steps."""
        stop = self.written if stop is None else min(stop, self.written)
        packed = np.asarray(self._mask[start:stop])
        return np.unpackbits(packed, axis=-1, count=self.seq_len).astype(bool)
