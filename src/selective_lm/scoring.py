"""Reference scoring: per-token reference losses for every window of a dataset split.

Output directory::

    ref_losses.bin   float16 memmap [windows, seq_len], row i = losses of window i's targets
    ref_entropy.bin  float16 memmap [windows, seq_len] (unless --no-entropy): the reference's predictive
                     entropy at the same positions, from the same logits
    manifest.json    binds the files to the dataset (fingerprint) and the reference model (hash); written last

While running, ``ref_losses.bin.partial`` (and ``ref_entropy.bin.partial``), the per-window bitmap
``done.bin`` and ``progress.json`` (the job's identity) make it resumable, also under another world
size; a partial file never carries the final name, so it never looks complete.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import dist
from .config import ScoreConfig
from .data import TokenDataset
from .files import DirLock, UserError, check_output_dir, read_json, reserve, sha256_file, write_json
from .model import autocast_ctx, check_compatible, load_model, model_fingerprint, model_token_losses, resolve_device
from .runtime import progress
from .scores import ENTROPY_FILE, KIND, SCORES_FILE

DONE_FILE = "done.bin"
FLUSH_EVERY_S = 10.0


def _identity(ds: TokenDataset, split: str, model_path: str, entropy: bool = False) -> dict:
    return {
        **({"entropy": True} if entropy else {}),  # a loss-only job's identity is what it always was
        "dataset_fingerprint": ds.fingerprint,
        "tokenizer_fingerprint": ds.manifest["tokenizer_fingerprint"],
        "split": split,
        "windows": ds.num_windows(split),
        "seq_len": ds.seq_len,
        "model_fingerprint": model_fingerprint(model_path),
    }


_OWN_FILES = {SCORES_FILE, ENTROPY_FILE, SCORES_FILE + ".partial", ENTROPY_FILE + ".partial", DONE_FILE,
              "progress.json", "manifest.json"}


def _ours(out: Path) -> bool:
    """A scores directory: finished (its manifest says so), or holding only files a scoring job writes (one
    under way, or killed at any point)."""
    try:
        if read_json(out / "manifest.json").get("kind") == KIND:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    return all(p.name in _OWN_FILES or re.fullmatch(r"\.(manifest|progress)\.json\.[A-Za-z0-9_]{8}\.tmp", p.name)
               for p in out.iterdir())


def _open_partial(cfg: ScoreConfig, ds: TokenDataset, ident: dict) -> int:
    """Rank 0: create or reuse ``ref_losses.bin.partial`` and its per-window ``done`` bitmap; returns
    the windows already done (a resumed job skips them)."""
    out = Path(cfg.out)
    n = ds.num_windows(cfg.split)
    # a directory of other files (a dataset, a run, anything) is never written into, --overwrite or not
    check_output_dir(out, True, _ours, "an `slm score` output", "scores")
    if (out / "manifest.json").is_file() and not cfg.overwrite:
        raise UserError(f"{out} already holds finished scores: pass --overwrite to recompute them")
    out.mkdir(parents=True, exist_ok=True)  # finished scores stay in place until the new ones are complete
    partial, done_path, progress_path = out / (SCORES_FILE + ".partial"), out / DONE_FILE, out / "progress.json"
    ent = out / (ENTROPY_FILE + ".partial")
    resumable = (partial.is_file() and done_path.is_file() and progress_path.is_file()
                 and read_json(progress_path).get("identity") == ident and done_path.stat().st_size == n
                 and (ent.is_file() or not cfg.entropy))
    if not resumable:
        for f in (partial, ent, done_path, progress_path):
            f.unlink(missing_ok=True)
        sizes = [(partial, n * ds.seq_len * 2), (done_path, n)] + ([(ent, n * ds.seq_len * 2)] if cfg.entropy else [])
        for f, size in sizes:
            reserve(f, size)  # allocated now: a full disk is an error here, not a SIGBUS mid-run
        write_json(progress_path, {"identity": ident})
    return int(np.count_nonzero(np.memmap(done_path, dtype=np.uint8, mode="r", shape=(n,))))


def score(cfg: ScoreConfig) -> dict:
    """Run the reference model over every window of ``cfg.split`` and write the scores; returns the manifest.

    Under torchrun the batches are dealt round-robin to the ranks, each writes its rows into the one
    shared memmap, and rank 0 finishes the file: the result equals a single-process run, byte for
    byte. A killed job resumes (under any world size) from the per-window ``done`` bitmap.
    """
    from .columns import is_hf_dataset_dir

    device = dist.local_device(resolve_device(cfg.device))
    if is_hf_dataset_dir(cfg.data) or cfg.hf_out:
        from .runtime import interactive

        if not (cfg.progress and interactive()):  # datasets' own bars follow the package's rule
            import datasets

            datasets.disable_progress_bars()
    if is_hf_dataset_dir(cfg.data):
        return _score_hf_dataset(cfg, device)
    dist.init(device)

    def check() -> tuple[TokenDataset, dict]:
        ds = TokenDataset(cfg.data)
        check_compatible(cfg.model, ds, role="reference model")
        if cfg.checks:
            from .refdata import check_inputs

            check_inputs(ds, cfg.ref_data, cfg.base_model)
        return ds, _identity(ds, cfg.split, cfg.model, cfg.entropy)

    ds, ident = dist.agree(check)
    if cfg.hf_out:  # refused before the scoring pass, not after it
        from .columns import _check_out

        dist.agree(_check_out, Path(cfg.hf_out), cfg.overwrite, main_only=True)
    with contextlib.ExitStack() as stack:
        dist.enter_on_main(stack, lambda: DirLock(cfg.out, "scores directory", inside=False))
        # finished scores of this very job (dataset, model, entropy) and --hf-out: only the column is written
        done = dist.agree(_finished, cfg, ident, main_only=True) if cfg.hf_out and not cfg.overwrite else None
        manifest = done if done is not None else _score(cfg, ds, ident, device)
    if cfg.hf_out:
        from .columns import export_scored

        dist.agree(export_scored, cfg.data, cfg.out, cfg.hf_out, cfg.split, overwrite=cfg.overwrite, main_only=True)
    return manifest


def _score_hf_dataset(cfg: ScoreConfig, device: torch.device) -> dict:
    """`slm score --data HF_DIR`: one process adds the reference losses as a column and saves to `out`."""
    import datasets

    from .columns import _check_out, save_scored, score_dataset

    if dist.launched() and dist.world_size() > 1:
        raise UserError("scoring a Hugging Face dataset runs in one process: start `slm score` without torchrun "
                        "(or `slm prepare` the text and score that under torchrun)")
    if cfg.hf_out:
        raise UserError("--hf-out exports an `slm prepare` dataset; with a Hugging Face dataset as --data the "
                        "scored dataset is --out itself: drop --hf-out")
    _check_out(Path(cfg.out), cfg.overwrite, "--out")
    t0 = time.perf_counter()
    try:
        data = datasets.load_from_disk(cfg.data)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"cannot load the Hugging Face dataset {cfg.data} ({e}): pass a Dataset.save_to_disk "
                        "directory") from None
    if isinstance(data, datasets.DatasetDict):
        if cfg.split not in data:
            raise UserError(f"{cfg.data} has splits {', '.join(data)}, not '{cfg.split}': pass --split")
        data = data[cfg.split]
    with DirLock(cfg.out, "scores directory", inside=False):
        scored = score_dataset(data, cfg.model, batch_size=cfg.batch_size, device=device, precision=cfg.precision)
        meta = save_scored(scored, cfg.out, overwrite=cfg.overwrite)
    col = np.concatenate([np.asarray(r, dtype=np.float64)[1:] for r in scored[meta["column"]]] or [np.zeros(0)])
    return {"windows": len(scored), "seq_len": float(np.mean([len(r) for r in scored["input_ids"]] or [0])),
            "mean_loss": float(col.mean()) if col.size else float("nan"), "seconds": time.perf_counter() - t0, **meta}


def _finished(cfg: ScoreConfig, ident: dict) -> dict | None:
    """Rank 0: the manifest of finished scores in ``out`` made by the same job (``ident``), else None."""
    try:
        m = read_json(Path(cfg.out) / "manifest.json")
    except (OSError, ValueError):
        return None
    same = isinstance(m, dict) and m.get("kind") == KIND and all(m.get(k) == v for k, v in ident.items())
    return {**m, "seconds": 0.0, "reused": True} if same and (Path(cfg.out) / m["file"]).is_file() else None


def _todo_batches(cfg: ScoreConfig, n: int) -> list[int]:
    """Rank 0: start windows of the batches not yet marked done."""
    done = np.memmap(Path(cfg.out) / DONE_FILE, dtype=np.uint8, mode="r", shape=(n,))
    return [s for s in range(0, n, cfg.batch_size) if not done[s:s + cfg.batch_size].all()]


def _score(cfg: ScoreConfig, ds: TokenDataset, ident: dict, device: torch.device) -> dict:
    n = ds.num_windows(cfg.split)
    out = Path(cfg.out)
    already = dist.agree(_open_partial, cfg, ds, ident, main_only=True)
    todo = dist.agree(_todo_batches, cfg, n, main_only=True)
    writer = dist.is_main()  # rank 0 writes every row: one writer, whatever the filesystem
    if writer:
        files = [np.memmap(out / (f + ".partial"), dtype=np.float16, mode="r+", shape=(n, ds.seq_len))
                 for f in (SCORES_FILE, ENTROPY_FILE)[:1 + cfg.entropy]]  # losses, then entropies
        done = np.memmap(out / DONE_FILE, dtype=np.uint8, mode="r+", shape=(n,))
    model = load_model(cfg.model, device).eval()
    t0 = last_flush = time.perf_counter()
    bar = progress(total=n * ds.seq_len, initial=already * ds.seq_len, unit="tok", unit_scale=True,
                   desc=f"score {Path(cfg.data).name}", enabled=cfg.progress and writer)
    pending: list[tuple[int, int]] = []

    def losses_of(start: int) -> torch.Tensor:
        """[rows, seq_len, 1] losses, or [rows, seq_len, 2] losses and entropies: one gather for both."""
        inputs, targets = ds.batch(cfg.split, np.arange(start, min(start + cfg.batch_size, n)))
        if not cfg.entropy:
            return model_token_losses(model, inputs.to(device), targets.to(device)).unsqueeze(-1)
        return torch.stack(model_token_losses(model, inputs.to(device), targets.to(device), entropy=True), -1)

    with torch.inference_mode(), autocast_ctx(device, cfg.precision):
        for starts, rows in dist.gathered_batches(todo, cfg.batch_size, n, losses_of):
            for start, r in zip(starts, rows):
                stop = min(start + cfg.batch_size, n)
                r = r.to(torch.float16).numpy()
                if not np.isfinite(r).all():
                    raise UserError(f"reference model {cfg.model} gives non-finite losses on windows {start}-"
                                    f"{stop - 1}: it is broken (e.g. a diverged run); score with a healthy checkpoint",
                                    agreed=True)  # every rank holds every row, so every rank raises it
                if writer:
                    for k, f in enumerate(files):
                        f[start:stop] = r[..., k]
                    pending.append((start, stop))
                bar.update((stop - start) * ds.seq_len)
            if writer and time.perf_counter() - last_flush > FLUSH_EVERY_S:
                _mark_done(files, done, pending)
                last_flush = time.perf_counter()
    if writer:
        _mark_done(files, done, pending)
        del files, done
    bar.close()
    elapsed = time.perf_counter() - t0
    del model  # the checks in _finish may load the base model: never both on the device
    if device.type == "cuda":
        torch.cuda.empty_cache()
    manifest = dist.agree(_finish, cfg, ds, ident, elapsed, device, main_only=True)
    return manifest


def _mark_done(files: list[np.memmap], done: np.memmap, pending: list[tuple[int, int]]) -> None:
    """Rows reach the disk before their windows are marked done, so a kill never marks unwritten rows."""
    for f in files:
        f.flush()
    for start, stop in pending:
        done[start:stop] = 1
    done.flush()
    pending.clear()


def _finish(cfg: ScoreConfig, ds: TokenDataset, ident: dict, elapsed: float, device: torch.device) -> dict:
    """Rank 0, after every rank is done: check completeness, move the file into place, write the manifest."""
    out = Path(cfg.out)
    n = ds.num_windows(cfg.split)
    partial, done_path, final = out / (SCORES_FILE + ".partial"), out / DONE_FILE, out / SCORES_FILE
    missing = n - int(np.count_nonzero(np.memmap(done_path, dtype=np.uint8, mode="r", shape=(n,))))
    if missing:
        raise UserError(f"{missing} windows of {out} were not scored (a rank stopped early?): run the same "
                        "`slm score` command again to finish them")
    counted = ds.target_mask(cfg.split)  # context-only targets (scored 0) are left out of the means

    def mean_and_digest(path: Path) -> tuple[float, str]:
        values = np.memmap(path, dtype=np.float16, mode="r", shape=(n, ds.seq_len)).astype(np.float64)
        values = values if counted is None else values[counted]
        return float(values.sum()) / max(1, values.size), sha256_file(path)

    mean_loss, digest = mean_and_digest(partial)
    entropy = {}
    if cfg.entropy:
        mean_ent, ent_digest = mean_and_digest(out / (ENTROPY_FILE + ".partial"))
        entropy = {"entropy_file": ENTROPY_FILE, "entropy_sha256": ent_digest, "mean_entropy": mean_ent}
    checks = None
    if cfg.checks:  # the corpus against the reference's own data: overlap and format mismatch (refdata.py)
        from .refdata import run_checks

        checks = run_checks(ds, cfg.split, np.memmap(partial, dtype=np.float16, mode="r", shape=(n, ds.seq_len)),
                            cfg.model, cfg.ref_data, cfg.base_model, cfg.check_windows, device, cfg.precision)
        for line in checks.get("warnings", []):
            print(f"slm: warning: {line}", file=sys.stderr, flush=True)
        if "skipped" in checks:
            print(f"slm: note: no overlap or format check: {checks['skipped']}", file=sys.stderr, flush=True)
    (out / "manifest.json").unlink(missing_ok=True)  # --overwrite: the old scores end here, the new ones are complete
    os.replace(partial, final)
    if cfg.entropy:
        os.replace(out / (ENTROPY_FILE + ".partial"), out / ENTROPY_FILE)
    else:  # --overwrite --no-entropy: entropies of the old reference must not pass for this one's
        (out / ENTROPY_FILE).unlink(missing_ok=True)
    done_path.unlink(missing_ok=True)
    (out / "progress.json").unlink(missing_ok=True)
    manifest = {
        "format_version": 1,
        "kind": KIND,
        **ident,
        "file": SCORES_FILE,
        "dtype": "float16",
        "shape": [n, ds.seq_len],
        "sha256": digest,
        "dataset": str(Path(cfg.data).resolve()),
        "model": str(Path(cfg.model).resolve()),
        "mean_loss": mean_loss,
        **entropy,
        **({"checks": checks} if checks is not None else {}),
        "seconds": round(elapsed, 3),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
