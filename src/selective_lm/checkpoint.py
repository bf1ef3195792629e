"""Run directories, checkpoints and resume.

Run directory::

    config.yaml              resolved TrainConfig (written before step 1)
    metrics.jsonl            one JSON object per log/eval line
    checkpoints/step_NNNNNN/ HF (or PEFT adapter) directory + slm_meta.json; the newest ckpt_keep_states
                             (default 2) checkpoints of an unfinished run also hold training_state.pt (what
                             a resume needs), so a damaged newest one costs one interval
    final/                   the final weights as a loadable HF (or adapter) directory (hard links to the
                             last checkpoint's files where the filesystem allows)
    base/                    LoRA runs from a preset only: the base the adapter applies to
    run.json                 {"status": "complete", ...}, written last
"""
from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import dist
from .config import TrainConfig, first_change
from .files import UserError, atomic_write_text, read_json, remove_stale_temporaries, write_json

# Options that may differ between an interrupted run and its resumption.
# A checkpoint holds full, name-keyed tensors, so the parallelism and the world size may change
# between the two, as long as batch_size × grad_accum × ranks (the windows of a step) stays the same.
RESUME_FREE_KEYS = {"resume", "overwrite", "progress", "log_every", "device", "parallel",
                    "activation_checkpointing", "compile", "batch_size", "grad_accum", "out", "report_to",
                    "ckpt_keep_states"}


STATE_FILE = "training_state.pt"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints (committed step_N directories), oldest first, with or without a training state."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"step_\d+", d.name)]
    return sorted(dirs, key=checkpoint_step)


def has_state(ckpt: Path) -> bool:
    """Whether a checkpoint can resume a run: its training_state.pt is there and its index lists it (a
    state whose drop was interrupted is no longer listed, so it is never resumed from)."""
    if not (ckpt / STATE_FILE).is_file():
        return False
    try:
        return STATE_FILE in read_json(ckpt / "index.json")["files"]
    except FileNotFoundError:
        return True  # written before checkpoints had an index
    except (ValueError, KeyError, TypeError):
        return True  # a damaged index: latest_intact reports it


def retire_checkpoints(run_dir: str | Path, newest: Path | None = None, keep_states: int = 1) -> None:
    """After checkpoint ``newest`` is saved, the ``keep_states`` newest checkpoints up to it keep their training
    state (a damaged newest one falls back to the one before); the older ones keep their weights only (the
    analyses read them), and the time-based ones among them go. ``newest`` None (a finished run, never
    resumed): no checkpoint keeps a state, and every time-based one but the last goes.

    ``newest`` is flushed to disk first. An index forgets the state before the file goes, so a kill at any
    point leaves every checkpoint intact (its index matches its files) and only listed states resumable.
    """
    ckpts = checkpoint_dirs(run_dir)
    if newest is not None:
        fsync_dir(newest)
        ckpts = [d for d in ckpts if checkpoint_step(d) <= checkpoint_step(newest)]  # a newer one is not ours
    keep = ckpts[-keep_states:] if newest is not None and keep_states > 0 else []
    for d in ckpts:
        if d in keep:
            continue
        if d != ckpts[-1] and _is_auto(d):
            remove_checkpoint(d)
        else:
            _drop_state(d)


def _is_auto(ckpt: Path) -> bool:
    """A time-based checkpoint (``ckpt_minutes``): ``auto`` in its slm_meta.json."""
    try:
        return bool(read_json(ckpt / "slm_meta.json").get("auto"))
    except (OSError, ValueError, AttributeError):
        return False


def remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint directory: renamed to a temporary first, so a kill never leaves half of one (the
    next run removes the temporary)."""
    gone = ckpt.with_name(f".{ckpt.name}.{secrets.token_hex(4)}.tmp")
    os.replace(ckpt, gone)
    shutil.rmtree(gone, ignore_errors=True)


def _drop_state(d: Path) -> None:
    """Delete a checkpoint's training state: its index forgets it first, then the file goes."""
    remove_stale_temporaries(d, "index.json")  # a rewrite of the index cut short
    state = d / STATE_FILE
    if not state.exists():
        return
    try:
        index = read_json(d / "index.json")
        listed = STATE_FILE in index["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no index or a damaged one: leave the checkpoint as it is
    if listed:
        del index["files"][STATE_FILE]
        write_json(d / "index.json", index)
    state.unlink()


def fsync_dir(directory: Path) -> None:
    """Flush a directory's files and the directory itself (and its entry in the parent) to disk."""
    for f in directory.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for d in (directory, directory.parent):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("_")[1])


def is_finished(run_dir: str | Path) -> bool:
    f = Path(run_dir) / "run.json"
    return f.is_file() and read_json(f).get("status") == "complete"


def latest_intact(ckpts: list[Path]) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The newest checkpoint whose files match its index, and the newer ones that do not (with their damaged
    files). Pass checkpoints that hold a training state (:func:`has_state`) to find where a resume starts."""
    from .model import damaged_files

    damaged = []
    for d in reversed(ckpts):
        bad = damaged_files(d)
        if not bad:
            return d, damaged
        damaged.append((d, bad))
    return None, damaged


def prepare_run_dir(cfg: TrainConfig, dataset_fingerprint: str) -> Path | None:
    """Apply the resume rules (rank 0, holding the run's lock); returns the checkpoint to resume from (or None).

    Temporaries of a killed writer are removed first. ``--overwrite`` is handled by the caller
    (:func:`selective_lm.files.replacing`): the old run is moved aside, so ``out`` starts empty.
    """
    out = Path(cfg.out)
    for d in (out, out / "checkpoints"):
        remove_stale_temporaries(d)
    saved_cfg = out / "config.yaml"
    if is_finished(out):
        if cfg.resume:
            raise UserError(f"{out} holds a finished run: nothing to resume (pass --overwrite to train again)")
        raise UserError(f"{out} holds a finished run: pass --overwrite to replace it or choose another --out")
    ckpts = checkpoint_dirs(out)
    if not cfg.resume:
        if ckpts or saved_cfg.is_file():
            raise UserError(f"{out} holds an unfinished run: pass --resume to continue it or --overwrite to start over")
        return None
    if not saved_cfg.is_file():
        raise UserError(f"nothing to resume in {out}: no config.yaml there (drop --resume to start a new run)")
    if change := first_change(cfg, saved_cfg, RESUME_FREE_KEYS):
        k, was, now = change
        raise UserError(f"cannot resume {out} with a changed config: {k} was {was!r}, now {now!r} "
                        "(use the original settings or start a new run with --overwrite)")
    ckpt, damaged = latest_intact([d for d in ckpts if has_state(d)])
    for d, bad in damaged:  # recomputed by this run: a damaged checkpoint must not pass for one of its own
        print(f"slm: warning: checkpoint {d} is damaged ({', '.join(bad[:3])} differ from its index.json): "
              f"removed; {f'resuming from the one before, {ckpt.name}' if ckpt else 'looking further back'}",
              file=sys.stderr, flush=True)
        remove_checkpoint(d)
    if ckpt is None and ckpts:
        print(f"slm: warning: no checkpoint in {out} holds an intact training state (the newest ckpt_keep_states="
              f"{cfg.ckpt_keep_states} keep one): training starts again from step 0", file=sys.stderr, flush=True)
    if ckpt is not None and (ckpt / "slm_meta.json").is_file():
        fp = read_json(ckpt / "slm_meta.json").get("dataset_fingerprint")
        if fp is not None and fp != dataset_fingerprint:
            raise UserError(f"cannot resume {out}: dataset {cfg.data} was prepared again with other content since "
                            "the run started (its fingerprint differs): re-prepare the original data or start over "
                            "with --overwrite")
    return ckpt


def capture_state(step: int, optimizer_state: dict, scheduler, extra: dict | None = None) -> dict:
    """Training state for ``training_state.pt``: the optimizer state (full and keyed by parameter name,
    see :func:`selective_lm.dist.full_state_dict`), scheduler, RNG and loop position. Selection draws
    need no saved state: their generator is seeded by (seed, step)."""
    state: dict[str, Any] = {
        "step": step,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    state.update(extra or {})
    return state


def _weights(ckpt: Path, model, load: bool = True) -> dict:
    """The checkpoint's weights as a state dict keyed like ``model.state_dict()`` (after checking that
    its keys match the model; ``load=False`` only checks, reading the file's header)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        return load_file(ckpt / "adapter_model.safetensors") if load else {}
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    expected = set(model.state_dict())
    bad = sorted((expected - keys) - {k for k in expected if k.endswith("lm_head.weight")}) + sorted(keys - expected)
    if bad:
        raise UserError(f"checkpoint {ckpt} does not match the model ({bad[0]}): start over with --overwrite")
    return load_file(ckpt / "model.safetensors") if load else {}


def restore_state(ckpt: Path, model, optimizer, scheduler) -> dict:
    """Load weights and training state from a checkpoint directory in place (sharded or not); returns the state.

    Under FSDP only rank 0 reads the tensors and broadcasts them while they are sharded, so a node's
    memory holds one copy, not one per rank (``training_state.pt`` is memory-mapped everywhere).
    """
    state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False, mmap=True)
    sharded = dist.is_sharded(model)
    reader = dist.is_main() or not sharded
    osd = state["optimizer"]
    by_index = bool(osd.get("state")) and all(isinstance(k, int) for k in osd["state"])  # written by version 0.1
    if by_index and sharded:
        raise UserError(f"checkpoint {ckpt} was written by selective-lm 0.1 (optimizer state by index): resume "
                        "it with parallel=ddp")
    if hasattr(model, "peft_config"):  # adapters load through PEFT (LoRA runs are never sharded)
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, _weights(ckpt, model))
        weights = None
    else:
        dist.agree(_weights, ckpt, model, False, main_only=True)  # a mismatch stops every rank before the broadcast
        weights = _weights(ckpt, model) if reader else {}
    if by_index:
        dist.load_full_state_dict(model, weights)
        optimizer.load_state_dict(osd)
    else:
        dist.load_full_state_dict(model, weights, optimizer, osd if reader else {}, from_rank0=sharded)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines up to ``step`` (resuming rewrites what came after the checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
