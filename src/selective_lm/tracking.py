"""Where a training run's metric rows go: one hook, many sinks.

Every row the loop logs (``{"type": "train" | "eval", "step": ..., ...}``) goes through
:class:`MetricsLogger.log` to each sink: ``metrics.jsonl`` in the run directory (always), the trackers
named by ``report_to`` (TensorBoard, Weights & Biases, Trackio; each imported only when chosen) and
the callables a library user passes as ``train(cfg, callbacks=[...])``. Sinks live on rank 0 only and
are closed when the run ends, also when it fails.

Trackers see every numeric field of a row as the scalar ``"{type}/{field}"`` at ``step``.
"""
from __future__ import annotations

import importlib.util
import netrc
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .files import UserError, atomic_write_text, json_line

TRACKERS = ("tensorboard", "wandb", "trackio")
PROJECT = "selective-lm"  # the wandb project (unless WANDB_PROJECT is set) and the trackio project


def trackers(report_to: Iterable[str]) -> list[str]:
    """The trackers named in ``report_to`` ("none" names none), checked."""
    names = [n.strip().lower() for n in report_to]
    for n in names:
        if n not in (*TRACKERS, "none"):
            raise UserError(f"unknown report_to '{n}': choose from {', '.join(TRACKERS)} or none")
    if "none" in names and len(names) > 1:
        raise UserError(f"report_to={','.join(names)} names none and a tracker: pass one or the other")
    return [n for n in dict.fromkeys(names) if n != "none"]


def check_installed(report_to: Iterable[str]) -> None:
    """A one-line error, before anything starts, for a chosen tracker whose package is missing."""
    for name in trackers(report_to):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UserError(f"report_to={name} needs the {name} package: pip install 'selective-lm[{name}]' "
                            "(or drop it from report_to)")


def scalars(row: dict) -> dict[str, float]:
    """The numeric fields of a metrics row as ``"{type}/{field}"`` scalars (``step`` is the x axis)."""
    kind = row.get("type", "train")
    return {f"{kind}/{k}": float(v) for k, v in row.items()
            if k not in ("type", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _offline_by_default() -> str:
    """wandb's mode: WANDB_MODE when set; online with credentials (WANDB_API_KEY or `wandb login`);
    else offline, so that a run never waits on the network (sync later with `wandb sync`)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


# --------------------------------------------------------------------------- sinks
class JsonlSink:
    """Appends each row to ``metrics.jsonl`` (a resumed run truncates it to its checkpoint first)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json_line(row) + "\n")

    def close(self, failed: bool = False) -> None:
        pass


class CallbackSink:
    def __init__(self, fn: Callable[[dict], Any]):
        self.fn = fn

    def log(self, row: dict) -> None:
        self.fn(dict(row))

    def close(self, failed: bool = False) -> None:
        pass


class TensorBoardSink:
    """Event files in ``out/tensorboard``; a resumed run hides the events after its checkpoint."""

    def __init__(self, out: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge)

    def log(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=row["step"])

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbSink:
    """A wandb run named after the run directory, its files in ``out/wandb``; a resumed run continues the
    same wandb run (the id is kept in ``out/wandb-id``)."""

    def __init__(self, out: Path, config: dict, resume_step: int | None):
        import wandb

        id_file = out / "wandb-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=out.name, dir=str(out),
                              id=run_id, resume="allow", config=config, mode=_offline_by_default())

    def log(self, row: dict) -> None:
        self.run.log(scalars(row), step=row["step"])

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TrackioSink:
    """A trackio run named after the run directory in project ``selective-lm`` (trackio keeps its runs in
    its own store: TRACKIO_DIR, by default under the Hugging Face cache)."""

    def __init__(self, out: Path, config: dict, resume_step: int | None):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=out.name, config=config, resume="allow", embed=False)

    def log(self, row: dict) -> None:
        self.trackio.log(scalars(row), step=row["step"])

    def close(self, failed: bool = False) -> None:
        self.trackio.finish()


class MetricsLogger:
    """The one logging hook of a run: :meth:`open` on the run directory, :meth:`log` each row, :meth:`close`.

    Only rank 0 opens sinks; elsewhere :meth:`log` does nothing. Use it as a context manager so the
    trackers are closed on errors too.
    """

    def __init__(self, report_to: Iterable[str] = (), callbacks: Iterable[Callable[[dict], Any]] = ()):
        self.report_to = trackers(report_to)
        self.callbacks = list(callbacks)
        self.sinks: list = []

    def open(self, out: Path, config: dict, resume_step: int | None = None) -> None:
        """Start the sinks (on rank 0: the caller runs this there only)."""
        self.sinks.append(JsonlSink(out / "metrics.jsonl"))
        for name in self.report_to:
            cls = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "trackio": TrackioSink}[name]
            self.sinks.append(cls(out, resume_step) if name == "tensorboard" else cls(out, config, resume_step))
        self.sinks += [CallbackSink(fn) for fn in self.callbacks]

    def log(self, row: dict) -> None:
        for sink in self.sinks:
            sink.log(row)

    def close(self, failed: bool = False) -> None:
        sinks, self.sinks = self.sinks, []
        errors = []
        for sink in reversed(sinks):  # every sink gets closed, even when one fails to
            try:
                sink.close(failed)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors and not failed:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


__all__ = ["TRACKERS", "MetricsLogger", "check_installed", "scalars", "trackers"]
