"""`slm train`: causal LM (CLM) or Selective Language Modeling (SLM) training.

One readable loop around :func:`train_step`, one optimizer step:

1. the step's windows come in a seeded order (the same for every arm), laid out micro-batch major
   then rank, so a micro-batch step over N ranks holds the windows of one process with N× the batch;
2. the objective (:mod:`selective_lm.objective`) knows the step's denominator before any forward;
   per micro-batch: per-token losses; for SLM, a per-token score (excess = loss − reference loss by
   default; :mod:`selective_lm.reference`) ranks the tokens over the selection scope (the micro-step
   over all ranks, or the whole step after a no-grad pre-pass);
3. loss = Σ selected token losses / (selected tokens of the whole step, all micro-batches and ranks),
   so accumulation and data parallelism give the gradient of one big batch (soft and dft weights:
   Σ w·loss / Σ w of the step; a CLM warm-up and a ratio schedule change the objective per step);
4. metrics accumulate on device; the host syncs every ``log_every`` steps (SLM with ratio < 1 also once per
   micro-batch, in the output head's sparse backward).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import dist
from .checkpoint import (capture_state, checkpoint_dirs, checkpoint_step, is_finished, prepare_run_dir, read_metrics,
                         restore_state, retire_checkpoints, truncate_metrics)
from .config import MODEL_SCORES, TrainConfig, save_config, to_dict
from .data import TokenDataset
from .evaluate import dataset_token_losses, loss_summary
from .files import DirLock, UserError, replacing, write_json
from .mixture import Mixture, MixtureOrder, open_data
from .model import (PRESETS, apply_lora, build_model, check_compatible, check_lora_targets, count_parameters,
                    is_checkpoint, link_checkpoint_dir, load_model, lora_summary, resolve_device, save_checkpoint_dir)
from .masks import SelectionLog
from .objective import Objective
from .options import parse_eval_data
from .runtime import progress
from .step import NoReference, RefLosses, StepMetrics, Trainer, train_step
from .tracking import MetricsLogger, check_installed


class WindowOrder:
    """Seeded order of training windows: epoch e is a permutation drawn from (data_seed, e) of the window
    pool (every train window, or the side of a held-out share the run trains on: :func:`window_pool`)."""

    def __init__(self, n: int, seed: int, pool: np.ndarray | None = None):
        self.pool = pool
        self.n, self.seed, self._cache = (n if pool is None else len(pool)), seed, {}

    def indices(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i, pos in enumerate(range(start, start + count)):
            epoch, j = divmod(pos, self.n)
            if epoch not in self._cache:
                self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
            out[i] = self._cache[epoch][j]
        return out if self.pool is None else self.pool[out]


def held_out(n: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the round(fraction · n) train windows held out for a self-reference (seeded draw)."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 0x5E1F]).permutation(n)[: round(fraction * n)]] = True
    return mask


def window_pool(cfg: TrainConfig, n: int) -> np.ndarray | None:
    """The train windows this run draws from: None = all; else one side of the held-out share."""
    if not cfg.holdout_fraction:
        return None
    mask = held_out(n, cfg.holdout_fraction, cfg.holdout_seed)
    pool = np.flatnonzero(mask if cfg.holdout == "only" else ~mask)
    if len(pool) == 0:
        raise UserError(f"holdout={cfg.holdout} with holdout_fraction={cfg.holdout_fraction} leaves no train window "
                        f"of {n}: pick a fraction that keeps windows on both sides")
    return pool


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of ``lr``: a linear warm-up, then
    ``lr_schedule``; a pure function of (step, total steps), so a resumed run follows the same curve."""
    warm = min(cfg.warmup_steps, max(0, total_steps - 1))
    decay = max(1, round(cfg.decay_fraction * (total_steps - warm)))  # wsd: the final decay's steps
    low = cfg.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "wsd":
            return 1.0 - (1.0 - low) * min(1.0, max(0, step + 1 - (total_steps - decay)) / decay)  # low at the end
        progress = (step - warm) / max(1, total_steps - warm)
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step, and it skips the update when train_step flags a non-finite gradient
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def total_steps(cfg: TrainConfig, n_windows: int, seq_len: int, world: int = 1) -> int:
    """Optimizer steps: max_steps, else the token budget (target tokens), else one epoch."""
    windows_per_step = cfg.batch_size * cfg.grad_accum * world
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.max_tokens:
        return max(1, math.ceil(cfg.max_tokens / (windows_per_step * seq_len)))
    return max(1, int(cfg.epochs * n_windows) // windows_per_step)


def _init_model(cfg: TrainConfig, ds: TokenDataset, out: Path, device: torch.device):
    """(model, base checkpoint path or None). LoRA from a preset saves its base to out/base."""
    if cfg.model in PRESETS:
        model = build_model(cfg.model, ds.vocab_size, ds.seq_len, cfg.seed, ds.eos_id)
        base_path = None
    elif is_checkpoint(cfg.model):
        check_compatible(cfg.model, ds)
        model, base_path = load_model(cfg.model), Path(cfg.model)
    else:
        raise UserError(f"model '{cfg.model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
    if cfg.lora.r > 0:
        check_lora_targets(model, cfg.lora)
        if base_path is None:
            base_path = out / "base"
            if dist.is_main() and not (cfg.resume and (base_path / "config.json").is_file()):  # fresh run: fresh base
                save_checkpoint_dir(model, base_path, ds.tokenizer_dir)
        model = apply_lora(model, cfg.lora, cfg.seed)
    # under fsdp the model stays on the CPU: fully_shard moves each rank's shards to its device
    return (model if cfg.parallel == "fsdp" else model.to(device)), base_path


def open_eval_sets(cfg: TrainConfig, ds) -> dict[str, TokenDataset]:
    """The ``eval_data`` datasets by name, checked against the training data (tokenizer, positions, a validation split)."""
    out = {}
    own = set(ds.names) if isinstance(ds, Mixture) else set()
    for name, path in parse_eval_data(cfg.eval_data).items():
        eds = TokenDataset(path)
        if name in own:
            raise UserError(f"eval_data name {name} is also a dataset of --data (evaluated as such): choose another name")
        if eds.manifest["tokenizer_fingerprint"] != ds.manifest["tokenizer_fingerprint"]:
            raise UserError(f"eval_data {name}={path} was prepared with another tokenizer than --data: prepare it with "
                            "the same tokenizer (tokenizer=DIR)")
        if eds.num_windows("validation") == 0 if "validation" in eds.splits() else True:
            raise UserError(f"eval_data {name}={path} has no validation windows: prepare it with val_fraction > 0")
        if is_checkpoint(cfg.model):
            check_compatible(cfg.model, eds, role="model")
        elif eds.seq_len > max(ds.seq_len, 128):
            raise UserError(f"eval_data {name}={path} has windows of {eds.seq_len} tokens, more than a {cfg.model} "
                            f"model built for --data has positions ({max(ds.seq_len, 128)}): prepare it with a "
                            f"seq_len of at most {ds.seq_len}")
        out[name] = eds
    return out


def validation_sets(ds, evals: dict[str, TokenDataset]) -> dict[str | None, tuple[TokenDataset, float]]:
    """What each evaluation measures: name (None: data's own validation) -> (dataset, weight in the mixture's loss)."""
    parts = list(zip(ds.names, ds.datasets, ds.weights)) if isinstance(ds, Mixture) else [(None, ds, 0.0)]
    out = {name: (d, float(w)) for name, d, w in parts if "validation" in d.splits() and d.num_windows("validation") > 0}
    return {**out, **{name: (d, 0.0) for name, d in evals.items()}}


def clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def eval_line(row: dict) -> str:
    parts = [f"val loss {row['loss']:.4f} ppl {row['ppl']:.2f}"] if "loss" in row else []
    parts += [f"{k[:-5]} loss {v:.4f} ppl {row[k[:-5] + '/ppl']:.2f}" for k, v in row.items() if k.endswith("/loss")]
    return f"step {row['step']}: " + "; ".join(parts)


def banner(cfg: TrainConfig, ds, model, steps: int, per_step: int, world: int, evals: dict) -> str:
    """The start of a run's log: what it trains, how much, and how."""
    total, trainable = count_parameters(model), count_parameters(model, True)
    tokens = per_step * ds.seq_len
    data = ", ".join(f"{d.path} ({w:.0%})" for d, w in zip(ds.datasets, ds.weights)) if isinstance(ds, Mixture) \
        else str(ds.path)
    if cfg.objective == "slm":
        how = (f"slm {cfg.strategy if cfg.weighting == 'hard' else cfg.weighting} ratio {cfg.ratio:g}"
               + (f"->{cfg.ratio_end:g} ({cfg.ratio_schedule})" if cfg.ratio_end is not None else "")
               + f", scope {cfg.selection_scope}, score {cfg.score}"
               + (f", clm warm-up {cfg.clm_warmup:.0%}" if cfg.clm_warmup else ""))
    else:
        how = "clm (every token)"
    lines = [f"train {cfg.out}: {cfg.model}, {total:,} parameters, {trainable:,} trainable ({100 * trainable / max(total, 1):.2f}%)",
             f"  data {data}" + (f"; eval {', '.join(evals)}" if evals else ""),
             f"  {tokens:,} tokens per step (batch {cfg.batch_size} x accumulation {cfg.grad_accum} x {world} ranks x "
             f"seq_len {ds.seq_len}), {steps:,} steps, {steps * tokens:,} tokens",
             f"  {how}; lr {cfg.lr:g} {cfg.lr_schedule} (warm-up {cfg.warmup_steps})"
             + (f", decay {cfg.decay_fraction:.0%}" if cfg.lr_schedule == "wsd" else "")
             + f"; precision {cfg.precision}, device {resolve_device(cfg.device).type}, world size {world}"]
    return "\n".join(lines)


def mixture_meta(ds: Mixture, order: MixtureOrder, steps: int) -> list[dict]:
    """Per dataset of a mixture: its weight and the windows, tokens and share of the run's tokens it gave."""
    counts = order.counts(steps)
    return [{"data": str(d.path), "weight": float(w), "windows": int(c), "tokens": int(c) * ds.seq_len,
             "share": float(c / max(counts.sum(), 1))} for d, w, c in zip(ds.datasets, ds.weights, counts)]


def step_windows(order: WindowOrder, step: int, batch_size: int, grad_accum: int, world: int, rank: int
                 ) -> list[np.ndarray]:
    """This rank's window indices for each micro-batch of optimizer step ``step``.

    Global position = step · (accum · world · B) + micro · (world · B) + rank · B + j: a micro-batch step
    over all ranks is a contiguous block of the order, as one process with batch world·B would read it.
    """
    per_micro = batch_size * world
    base = step * grad_accum * per_micro + rank * batch_size
    return [order.indices(base + m * per_micro, batch_size) for m in range(grad_accum)]


def train(cfg: TrainConfig, console: bool = True, callbacks: Iterable[Callable[[dict], Any]] = ()) -> dict:
    """Run training as configured; returns the run summary (also written to run.json).

    Rank 0 holds the run directory's lock for the whole run; ``--overwrite`` moves the old run aside
    and deletes it only once the new one is complete (it comes back if the new one fails).
    Each callback gets every metrics row (a dict, as written to metrics.jsonl) on rank 0.
    """
    check_installed(cfg.report_to)  # a missing tracker package: before anything starts
    device = dist.local_device(resolve_device(cfg.device))
    dist.init(device)
    with contextlib.ExitStack() as stack:
        dist.enter_on_main(stack, lambda: DirLock(cfg.out, "run directory", inside=False),
                           lambda: replacing(cfg.out, cfg.overwrite and not cfg.resume, is_finished,
                                             lambda p: bool(checkpoint_dirs(p))))
        logger = stack.enter_context(MetricsLogger(cfg.report_to, callbacks))  # closed on errors too
        return _train(cfg, console, device, logger)


def _check_budget(cfg: TrainConfig, ds: TokenDataset, world: int, pool: np.ndarray | None) -> None:
    per_step = cfg.batch_size * cfg.grad_accum * world * ds.seq_len
    if cfg.max_tokens and not cfg.max_steps and cfg.max_tokens < per_step:
        raise UserError(f"max_tokens {cfg.max_tokens} is less than one optimizer step ({per_step} tokens = batch_size "
                        f"{cfg.batch_size} × grad_accum {cfg.grad_accum} × {world} ranks × seq_len {ds.seq_len}): "
                        "raise max_tokens or lower the batch")
    n = ds.num_windows("train") if pool is None else len(pool)
    if n < cfg.batch_size * cfg.grad_accum * world:
        raise UserError(f"dataset {cfg.data} has {n} training windows"
                        + (f" on the {cfg.holdout} side of holdout_fraction={cfg.holdout_fraction}" if pool is not None
                           else "") + f", fewer than one step needs "
                        f"({cfg.batch_size * cfg.grad_accum * world}): lower batch_size/grad_accum or add data")


def _check_same_batch(was: int, now: int, cfg: TrainConfig, world: int) -> None:
    """A resumed run may change its world size, not the windows of a step (the data position depends on it)."""
    if was != now:
        raise UserError(f"cannot resume {cfg.out} with {now} windows per step (batch_size {cfg.batch_size} × grad_accum "
                        f"{cfg.grad_accum} × {world} ranks): it ran with {was}; choose batch_size and grad_accum so "
                        f"that their product with the ranks stays {was}")


def _train(cfg: TrainConfig, console: bool, device: torch.device, logger: MetricsLogger) -> dict:
    world, rank = dist.world_size(), dist.rank()
    torch.manual_seed(cfg.seed)  # whatever draws from the global generator (e.g. LoRA dropout) is seeded too
    dist.agree(dist.check_parallel, cfg.parallel)
    ds = dist.agree(open_data, cfg.data)
    evals = dist.agree(open_eval_sets, cfg, ds)
    pool = dist.agree(window_pool, cfg, ds.num_windows("train"))
    dist.agree(_check_budget, cfg, ds, world, pool)
    n_train = ds.num_windows("train") if pool is None else len(pool)
    out = Path(cfg.out)
    resume_from = dist.agree(prepare_run_dir, cfg, ds.fingerprint, main_only=True)
    if cfg.objective == "slm" and cfg.weighting == "dft":
        ref = NoReference()  # reference-free: no scores read, no reference model
    elif cfg.objective == "slm" and cfg.score in MODEL_SCORES:
        ref = NoReference(cfg.score)  # ESLM: the model's own loss or entropy ranks the tokens
    else:
        ref = dist.agree(RefLosses, cfg, ds, device) if cfg.objective == "slm" else None
    model, base_path = dist.agree(_init_model, cfg, ds, out, device)
    lora = lora_summary(model) if cfg.lora.r > 0 else {}
    if lora and console and dist.is_main():
        print(f"LoRA r={cfg.lora.r} on {', '.join(lora['lora_targets'])}: {lora['trainable_parameters']:,} trainable "
              f"parameters of {lora['parameters']:,} ({lora['trainable_percent']:.2f}%)", flush=True)
    fwd_model = dist.agree(dist.parallelize, model, device, cfg.parallel, cfg.compile, cfg.precision,
                           cfg.activation_checkpointing)
    steps = total_steps(cfg, n_train, ds.seq_len, world)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    objective = Objective.from_config(cfg, steps)
    t = Trainer(cfg, ds, model, fwd_model, optimizer, scheduler, objective, ref,
                StepMetrics(device), device)
    per_step = cfg.batch_size * cfg.grad_accum * world
    step = 0
    if resume_from is not None:
        state = dist.agree(restore_state, resume_from, model, optimizer, scheduler)
        step = state["step"]
        if console:
            dist.print0(f"resumed from step {step} ({resume_from})")
        dist.agree(_check_same_batch, state.get("windows_per_step", per_step), per_step, cfg, world)
        # the running sums since the last log line (summed over ranks; rank 0 carries them on) and the
        # non-finite count: resumed metrics equal uninterrupted ones
        if "metrics" in state and dist.is_main():
            t.metrics.acc.update({k: v.to(device) for k, v in state["metrics"].items()})
        t.nonfinite.fill_(state.get("nonfinite", 0))
        t.first_nonfinite.fill_(state.get("first_nonfinite", -1))
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")  # after the resume checks: a refused resume changes nothing
    if cfg.save_selection:  # every step's masks, kept on the device and written at log and save steps
        t.selection = SelectionLog(steps, per_step, ds.seq_len, device)
        dist.agree(t.selection.open, out, step, {"dataset_fingerprint": ds.fingerprint, "split": "train"},
                   main_only=True)
    last_eval = None
    if cfg.resume:
        def kept_rows() -> dict | None:  # metrics after the checkpoint go; its step's evaluation stays
            truncate_metrics(out / "metrics.jsonl", step)
            return next((r for r in reversed(read_metrics(out)) if r.get("type") == "eval" and r["step"] == step), None)

        last_eval = dist.agree(kept_rows, main_only=True)
    # rank 0's sinks (metrics.jsonl, trackers); a tracker that fails to start stops every rank
    dist.agree(logger.open, out, to_dict(cfg), step if cfg.resume else None, main_only=True)
    mixed = isinstance(ds, Mixture)
    order = MixtureOrder(ds, cfg.data_seed, per_step) if mixed else WindowOrder(ds.num_windows("train"), cfg.data_seed, pool)
    prov = ds.provenance("train")
    if cfg.keep_labels is not None and prov is None:
        raise UserError(f"keep_labels={cfg.keep_labels} needs provenance labels, but {cfg.data} has none: prepare "
                        "JSONL with `spans` [[start, end, label], ...] or drop keep_labels")
    slm = cfg.objective == "slm"
    val_sets = validation_sets(ds, evals)
    has_val = bool(val_sets)
    tokens_per_step = per_step * ds.seq_len
    meta = {"dataset": cfg.data if mixed else str(Path(cfg.data).resolve()), "dataset_fingerprint": ds.fingerprint,
            "objective": cfg.objective, "strategy": cfg.strategy if slm else None, "ratio": cfg.ratio if slm else 1.0,
            "selection_scope": cfg.selection_scope if slm else None, "weighting": cfg.weighting if slm else None,
            "ratio_schedule": cfg.ratio_schedule if slm else None, "ratio_end": cfg.ratio_end if slm else None,
            "clm_warmup": cfg.clm_warmup if slm else None,
            "keep_labels": cfg.keep_labels, "holdout": {"fraction": cfg.holdout_fraction, "side": cfg.holdout,
                                                         "seed": cfg.holdout_seed, "windows": n_train}
            if pool is not None else None, "lora": cfg.lora.r > 0, "base": str(Path(base_path).resolve()) if base_path else None}
    if ref is not None:  # the score and its references (a self-reference is recorded as such)
        meta.update(ref.meta())

    def check_finite(step: int) -> None:
        """Stop before anything is logged as good or saved once too many steps were not finite."""
        if int(t.nonfinite) > cfg.max_nonfinite_steps:
            good = checkpoint_dirs(out)
            raise UserError(f"non-finite loss or gradient norm at step {int(t.first_nonfinite) + 1} "
                            f"({int(t.nonfinite)} such steps by step {step}, max_nonfinite_steps "
                            f"{cfg.max_nonfinite_steps}); nothing was saved after it and the last good checkpoint is "
                            f"{good[-1] if good else 'none'}: lower lr (now {cfg.lr:g}) or set grad_clip, then "
                            "start over with --overwrite", agreed=True)  # every rank sees the same count

    def save(step: int, final: bool = False, auto: bool = False, only_final: bool = False) -> None:
        check_finite(step)
        sums = t.metrics.summed()  # every rank reaches save(): the partial sums of all ranks, on rank 0
        sharded = dist.is_sharded(model)
        if not (sharded or dist.is_main()):
            return
        sd, osd = dist.full_state_dict(model, optimizer)  # a collective under FSDP: every rank takes part
        if not dist.is_main():
            return
        info = {**meta, "step": step, "tokens": step * tokens_per_step, "auto": auto}
        sd = sd if sharded else None  # unsharded: the model saves its own parameters
        d = out / "checkpoints" / f"step_{step:06d}"
        if not only_final:
            state = capture_state(step, osd, scheduler, {
                "tokens": step * tokens_per_step, "windows_per_step": per_step, "metrics": sums,
                "nonfinite": float(t.nonfinite), "first_nonfinite": int(t.first_nonfinite)})
            save_checkpoint_dir(model, d, ds.tokenizer_dir, base_path, info, state, state_dict=sd, run_dir=out)
            retire_checkpoints(out, d, cfg.ckpt_keep_states)  # the newest ones resume; older ones keep their weights
        if (final or only_final) and d.is_dir():  # the last checkpoint holds these weights: final/ links to them
            link_checkpoint_dir(d, out / "final", info)
        elif final or only_final:
            save_checkpoint_dir(model, out / "final", ds.tokenizer_dir, base_path, info, state_dict=sd, run_dir=out)

    def run_eval(step: int) -> dict:
        row = {"type": "eval", "step": step, "tokens": step * tokens_per_step}
        for name, (eds, weight) in val_sets.items():
            losses = dataset_token_losses(model, eds, "validation", cfg.eval_windows, cfg.batch_size * 2, device,
                                          cfg.precision)
            summary = loss_summary(losses, eds.target_mask("validation", slice(len(losses))))  # context-only: out
            if name is None:  # data's own validation split: loss, ppl (as ever)
                row.update(loss=summary["loss"], ppl=summary["ppl"], eval_tokens=summary["tokens"])
            else:
                row.update({f"{name}/loss": summary["loss"], f"{name}/ppl": summary["ppl"],
                            f"{name}/tokens": summary["tokens"]})
        if mixed and "loss" not in row and any(w for _, w in val_sets.values()):  # the mixture's: weighted
            parts = [(row[f"{n}/loss"], w, row[f"{n}/tokens"]) for n, (_, w) in val_sets.items() if w]
            loss = sum(x * w for x, w, _ in parts) / sum(w for _, w, _ in parts)
            row.update(loss=loss, ppl=math.exp(min(loss, 50.0)), eval_tokens=sum(t for _, _, t in parts))
        logger.log(row)
        return row

    grad_norm = torch.zeros((), device=device)
    # labelled by the run directory (a study's base, reference and arms) and the objective
    arm = ("-" + (cfg.strategy if cfg.weighting == "hard" else cfg.weighting)) if slm else ""
    bar = progress(total=steps, initial=step, desc=f"train {out.name} ({cfg.objective}{arm})",
                   unit="step", enabled=cfg.progress and dist.is_main())
    if console and dist.is_main():
        print(banner(cfg, ds, model, steps, per_step, world, evals), flush=True)
    t_log, step_log, paused = time.perf_counter(), step, 0.0
    t_ckpt = t_start = time.monotonic()
    step_start = step
    fwd_model.train()
    while step < steps:
        idxs = step_windows(order, step, cfg.batch_size, cfg.grad_accum, world, rank)
        grad_norm = train_step(t, step, [t.batch(i) for i in idxs], prov)
        step += 1
        bar.update(1)
        last = step == steps
        due_auto = False
        if t.selection is not None and (step % cfg.log_every == 0 or last
                                        or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
            t.selection.flush()  # before any checkpoint of this step: a resume finds the steps before it on disk
        if step % cfg.log_every == 0 or last:
            check_finite(step)
            vals = t.metrics.reduce()
            # rank 0's clock decides the time-based checkpoint; the flag rides on the log step's sync
            late = cfg.ckpt_minutes > 0 and time.monotonic() - t_ckpt > 60 * cfg.ckpt_minutes and dist.is_main()
            due_auto = bool(dist.all_reduce_sum(torch.tensor(float(late), device=device)) > 0)
            dt = time.perf_counter() - t_log - paused  # eval and checkpoint time excluded
            n_all, n_sel = max(vals["n_all"], 1.0), max(vals["n_sel"], 1.0)
            row = {"type": "train", "step": step, "tokens": step * tokens_per_step,
                   "loss": vals["loss_all"] / n_all, "loss_selected": vals["loss_sel"] / n_sel,
                   "selected_fraction": vals["n_sel"] / n_all, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens_per_s": (step - step_log) * tokens_per_step / max(dt, 1e-9)}
            if slm:
                # the mean token weight of the row's last step: 1 in the CLM warm-up and for dft
                row["ratio"] = objective.at_step(step - 1).mean_weight
                n_ex = vals["n_ex"]
                if n_ex > 0:  # excess losses were computed (not in the warm-up, not for dft)
                    mean = vals["ex_sum"] / n_ex
                    row.update(excess_mean=mean, excess_std=math.sqrt(max(vals["ex_sq"] / n_ex - mean * mean, 0.0)),
                               excess_selected_mean=vals["ex_sel"] / n_sel,
                               topk_overlap=1.0 if cfg.strategy == "topk" and cfg.weighting == "hard"
                               else vals["overlap"] / n_sel)
            if prov is not None:
                row.update(noise_share_selected=vals["noise_sel"] / n_sel, noise_share_all=vals["noise_all"] / n_all)
            if cfg.max_nonfinite_steps:
                row["nonfinite_steps"] = int(t.nonfinite)
            logger.log(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", sel=f"{row['loss_selected']:.3f}",
                            tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            if console and bar.disable and dist.is_main():  # no bar (off, or not a terminal): a plain line
                spent = time.monotonic() - t_start
                eta = spent / max(step - step_start, 1) * (steps - step)
                print(f"step {step}/{steps} loss {row['loss']:.4f} sel {row['loss_selected']:.4f} "
                      f"frac {row['selected_fraction']:.2f} lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s "
                      f"elapsed {clock(spent)} eta {clock(eta)}", flush=True)
            t_log, step_log, paused = time.perf_counter(), step, 0.0
        t_pause = time.perf_counter()
        if has_val and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
            check_finite(step)
            last_eval = run_eval(step)
            if console and dist.is_main():
                bar.write(eval_line(last_eval))
        scheduled = (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last
        if scheduled or due_auto:
            save(step, final=last, auto=not scheduled)
            t_ckpt = time.monotonic()
        paused += time.perf_counter() - t_pause
    bar.close()
    # killed after the last checkpoint: final/ and the last evaluation come from it (restored above);
    # rank 0 looks at the directory and tells the others, so every rank takes part in the same collectives
    if has_val and last_eval is None:
        last_eval = run_eval(step)
    if not dist.agree(lambda: (out / "final").is_dir(), main_only=True):
        save(step, only_final=True)
    summary = {"status": "complete", "steps": steps, "tokens": steps * tokens_per_step,
               "parameters": count_parameters(model), "trainable_parameters": count_parameters(model, True),
               **{k: lora[k] for k in ("lora_targets", "trainable_percent") if k in lora},
               "final_val_loss": last_eval.get("loss") if last_eval else None,
               "final_val_ppl": last_eval.get("ppl") if last_eval else None,
               **({"final_eval": {n: {"loss": last_eval[f"{n}/loss"], "ppl": last_eval[f"{n}/ppl"]}
                                  for n in val_sets if n is not None}} if last_eval and len(val_sets) > (None in val_sets)
                  else {}),
               **({"mixture": mixture_meta(ds, order, steps)} if mixed else {}),
               "checkpoints": [checkpoint_step(d) for d in checkpoint_dirs(out)], **meta}
    if dist.is_main():
        write_json(out / "run.json", summary)
        retire_checkpoints(out)  # a finished run is never resumed: its checkpoints keep their weights only
    dist.barrier()
    return summary
