"""`slm train`: causal LM (CLM) or Selective Language Modeling (SLM) training.

One readable loop around :func:`train_step`, one optimizer step:

1. the step's windows come in a seeded order (the same for every arm), laid out micro-batch major
   then rank, so a micro-batch step over N ranks holds the windows of one process with N× the batch;
2. the objective (:mod:`selective_lm.objective`) knows the step's denominator before any forward;
   per micro-batch: per-token losses; for SLM, excess = loss − reference loss ranks the tokens over
   the selection scope (the micro-step over all ranks, or the whole step after a no-grad pre-pass);
3. loss = Σ selected token losses / (selected tokens of the whole step, all micro-batches and ranks),
   so accumulation and data parallelism give the gradient of one big batch;
4. metrics accumulate on device; the host syncs only every ``log_every`` steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dist
from .checkpoint import capture_state, checkpoint_dirs, checkpoint_step, prepare_run_dir, restore_state, truncate_metrics
from .config import TrainConfig, save_config
from .data import TokenDataset
from .evaluate import dataset_token_losses, loss_summary
from .files import UserError, write_json
from .model import (PRESETS, apply_lora, autocast_ctx, build_model, check_compatible, count_parameters,
                    is_checkpoint, load_model, model_token_losses, resolve_device, save_checkpoint_dir)
from .objective import Objective
from .scoring import load_scores


class WindowOrder:
    """Seeded order of training windows: epoch e is a permutation drawn from (data_seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def indices(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i, pos in enumerate(range(start, start + count)):
            epoch, j = divmod(pos, self.n)
            if epoch not in self._cache:
                self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
            out[i] = self._cache[epoch][j]
        return out


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warm = min(cfg.warmup_steps, max(0, total_steps - 1))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def total_steps(cfg: TrainConfig, n_windows: int, seq_len: int, world: int = 1) -> int:
    """Optimizer steps: max_steps, else the token budget (target tokens), else one epoch."""
    windows_per_step = cfg.batch_size * cfg.grad_accum * world
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.max_tokens:
        return max(1, math.ceil(cfg.max_tokens / (windows_per_step * seq_len)))
    return max(1, n_windows // windows_per_step)


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
        if base_path is None:
            base_path = out / "base"
            if dist.is_main() and not (base_path / "config.json").is_file():
                save_checkpoint_dir(model, base_path, ds.tokenizer_dir)
        model = apply_lora(model, cfg.lora)
    return model.to(device), base_path


def step_windows(order: WindowOrder, step: int, batch_size: int, grad_accum: int, world: int, rank: int
                 ) -> list[np.ndarray]:
    """This rank's window indices for each micro-batch of optimizer step ``step``.

    Global position = step · (accum · world · B) + micro · (world · B) + rank · B + j: a micro-batch step
    over all ranks is a contiguous block of the order, as one process with batch world·B would read it.
    """
    per_micro = batch_size * world
    base = step * grad_accum * per_micro + rank * batch_size
    return [order.indices(base + m * per_micro, batch_size) for m in range(grad_accum)]


class RefLosses:
    """Reference losses of a micro-batch: rows of the offline score memmap, or an online no-grad forward."""

    def __init__(self, cfg: TrainConfig, ds: TokenDataset, device: torch.device):
        self.scores, self.model, self.device, self.precision = None, None, device, cfg.precision
        if cfg.ref_scores:
            self.scores = load_scores(cfg.ref_scores, ds, "train")
        else:
            check_compatible(cfg.ref_model, ds, role="reference model")
            self.model = dist.shard_frozen(load_model(cfg.ref_model, device), device, cfg.parallel, cfg.precision)

    def __call__(self, idx: np.ndarray, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.scores is not None:
            return torch.from_numpy(np.asarray(self.scores[idx], dtype=np.float32)).to(self.device, non_blocking=True)
        with torch.no_grad(), autocast_ctx(self.device, self.precision):
            return model_token_losses(self.model, inputs, targets).float()


class StepMetrics:
    """Running sums of the logged quantities, on the device; reduced over ranks only at log time."""

    KEYS = ("loss_all", "n_all", "loss_sel", "n_sel", "ex_sum", "ex_sq", "ex_sel", "noise_sel", "noise_all")

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.acc = {k: torch.zeros((), device=self.device, dtype=torch.float64) for k in self.KEYS}

    def add(self, tl: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, excess: torch.Tensor | None,
            noise: torch.Tensor | None) -> None:
        vf, w = valid.to(torch.float32), mask.to(torch.float32)  # masks multiply: indexing would sync the host
        a = self.acc
        a["loss_all"] += (tl * vf).sum()
        a["n_all"] += vf.sum()
        a["loss_sel"] += (tl * w).sum()
        a["n_sel"] += w.sum()
        if excess is not None:
            a["ex_sum"] += (excess * vf).sum()
            a["ex_sq"] += (excess.square() * vf).sum()
            a["ex_sel"] += (excess * w).sum()
        if noise is not None:
            a["noise_sel"] += (noise & mask).sum()
            a["noise_all"] += (noise & valid).sum()

    def reduce(self) -> dict[str, float]:
        """Sum over ranks and move to the host (the loop's only host sync), then reset."""
        vals = {k: float(v) for k, v in zip(self.KEYS, dist.all_reduce_sum(torch.stack(list(self.acc.values()))))}
        self.reset()
        return vals


@dataclasses.dataclass
class Trainer:
    """What one optimizer step needs; ``model`` is the module to save and evaluate, ``fwd_model`` the
    one to run forward through (DDP / compile wrapper; the same sharded module under FSDP)."""

    cfg: TrainConfig
    ds: TokenDataset
    model: torch.nn.Module
    fwd_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    ref: RefLosses | None
    metrics: StepMetrics
    device: torch.device

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        inputs, targets = self.ds.batch("train", idx)
        return idx, inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def losses(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast_ctx(self.device, self.cfg.precision):
            return model_token_losses(model, inputs, targets)


def train_step(t: Trainer, step: int, micro: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
               provenance: np.ndarray | None = None) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches; returns the gradient norm (a device tensor)."""
    obj, cfg = t.objective, t.cfg
    valids = [targets != -100 for _, _, targets in micro]
    denom = obj.denominator(valids)  # the step's selected count over all ranks, known before any forward
    gen = obj.generator(step)
    refs: list[torch.Tensor | None] = [None] * len(micro)
    excess: list[torch.Tensor | None] = [None] * len(micro)
    masks = None
    if obj.selective and obj.scope == "step":
        if obj.needs_prepass:  # rank the whole step's tokens before any backward
            with torch.no_grad():
                for m, (idx, inputs, targets) in enumerate(micro):
                    refs[m] = t.ref(idx, inputs, targets)
                    excess[m] = t.losses(t.model, inputs, targets).float() - refs[m]
        masks = obj.select([e if e is not None else v.float() for e, v in zip(excess, valids)], valids, gen)
    for m, (idx, inputs, targets) in enumerate(micro):
        with dist.grad_sync(t.fwd_model, m == len(micro) - 1):  # reduce gradients on the last micro-batch only
            tl = t.losses(t.fwd_model, inputs, targets)
            if obj.selective and excess[m] is None:
                refs[m] = t.ref(idx, inputs, targets) if refs[m] is None else refs[m]
                excess[m] = tl.detach() - refs[m]
            mask = masks[m] if masks is not None else obj.select([excess[m]], [valids[m]], gen)[0]
            obj.loss(tl, mask, denom).backward()
        noise = None
        if provenance is not None:
            noise = torch.from_numpy(np.asarray(provenance[idx, 1:]) != 0).to(t.device, non_blocking=True)
        t.metrics.add(tl.detach(), valids[m], mask, excess[m], noise)
    grad_norm = torch.zeros((), device=t.device)
    if cfg.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in t.model.parameters() if p.requires_grad], cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train(cfg: TrainConfig, console: bool = True) -> dict:
    """Run training as configured; returns the run summary (also written to run.json)."""
    device = dist.local_device(resolve_device(cfg.device))
    dist.init(device)
    world, rank = dist.world_size(), dist.rank()
    dist.agree(dist.check_parallel, cfg.parallel)
    ds = dist.agree(TokenDataset, cfg.data)
    n_train = ds.num_windows("train")
    out = Path(cfg.out)
    resume_from = dist.agree(prepare_run_dir, cfg, main_only=True)
    ref = dist.agree(RefLosses, cfg, ds, device) if cfg.objective == "slm" else None
    model, base_path = dist.agree(_init_model, cfg, ds, out, device)
    fwd_model = dist.agree(dist.parallelize, model, device, cfg.parallel, cfg.compile, cfg.precision,
                           cfg.activation_checkpointing)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    steps = total_steps(cfg, n_train, ds.seq_len, world)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    step = 0
    if resume_from is not None:
        step = restore_state(resume_from, model, optimizer, scheduler)["step"]
        if dist.is_main():
            truncate_metrics(out / "metrics.jsonl", step)
    t = Trainer(cfg, ds, model, fwd_model, optimizer, scheduler, Objective.from_config(cfg, device), ref,
                StepMetrics(device), device)
    order = WindowOrder(n_train, cfg.data_seed)
    prov = ds.provenance("train")
    slm = cfg.objective == "slm"
    has_val = "validation" in ds.splits() and ds.num_windows("validation") > 0
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * ds.seq_len
    meta = {"dataset": str(Path(cfg.data).resolve()), "dataset_fingerprint": ds.fingerprint,
            "objective": cfg.objective, "strategy": cfg.strategy if slm else None, "ratio": cfg.ratio if slm else 1.0,
            "selection_scope": cfg.selection_scope if slm else None,
            "lora": cfg.lora.r > 0, "base": str(Path(base_path).resolve()) if base_path else None}

    def save(step: int, final: bool = False) -> None:
        sd, osd = dist.full_state_dict(model, optimizer)  # a collective under FSDP: every rank takes part
        if not dist.is_main():
            return
        state = capture_state(step, osd, scheduler, {"tokens": step * tokens_per_step})
        info = {**meta, "step": step, "tokens": step * tokens_per_step}
        d = out / "checkpoints" / f"step_{step:06d}"
        sd = sd if dist.is_sharded(model) else None  # unsharded: the model saves its own parameters
        save_checkpoint_dir(model, d, ds.tokenizer_dir, base_path, info, state, state_dict=sd)
        if final:
            save_checkpoint_dir(model, out / "final", ds.tokenizer_dir, base_path, info, state_dict=sd)

    def log(row: dict) -> None:
        if dist.is_main():
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def run_eval(step: int) -> dict:
        losses = dataset_token_losses(model, ds, "validation", cfg.eval_windows, cfg.batch_size * 2,
                                      device, cfg.precision)
        summary = loss_summary(losses)
        row = {"type": "eval", "step": step, "tokens": step * tokens_per_step, "loss": summary["loss"],
               "ppl": summary["ppl"], "eval_tokens": summary["tokens"]}
        log(row)
        return row

    grad_norm = torch.zeros((), device=device)
    bar = tqdm(total=steps, initial=step, desc=f"train {cfg.objective}{'-' + cfg.strategy if slm else ''}",
               unit="step", disable=not (cfg.progress and dist.is_main()), dynamic_ncols=True)
    t_log, step_log, last_eval, paused = time.perf_counter(), step, None, 0.0
    fwd_model.train()
    while step < steps:
        idxs = step_windows(order, step, cfg.batch_size, cfg.grad_accum, world, rank)
        grad_norm = train_step(t, step, [t.batch(i) for i in idxs], prov)
        step += 1
        bar.update(1)
        last = step == steps
        if step % cfg.log_every == 0 or last:
            vals = t.metrics.reduce()
            dt = time.perf_counter() - t_log - paused  # eval and checkpoint time excluded
            n_all, n_sel = max(vals["n_all"], 1.0), max(vals["n_sel"], 1.0)
            row = {"type": "train", "step": step, "tokens": step * tokens_per_step,
                   "loss": vals["loss_all"] / n_all, "loss_selected": vals["loss_sel"] / n_sel,
                   "selected_fraction": vals["n_sel"] / n_all, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens_per_s": (step - step_log) * tokens_per_step / max(dt, 1e-9)}
            if slm:
                mean = vals["ex_sum"] / n_all
                row.update(excess_mean=mean, excess_std=math.sqrt(max(vals["ex_sq"] / n_all - mean * mean, 0.0)),
                           excess_selected_mean=vals["ex_sel"] / n_sel)
            if prov is not None:
                row.update(noise_share_selected=vals["noise_sel"] / n_sel, noise_share_all=vals["noise_all"] / n_all)
            log(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", sel=f"{row['loss_selected']:.3f}",
                            tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
            if console and not cfg.progress and dist.is_main():
                print(f"step {step}/{steps} loss {row['loss']:.4f} sel {row['loss_selected']:.4f} "
                      f"frac {row['selected_fraction']:.2f} lr {row['lr']:.2e} {row['tokens_per_s']:.0f} tok/s", flush=True)
            t_log, step_log, paused = time.perf_counter(), step, 0.0
        t_pause = time.perf_counter()
        if has_val and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
            last_eval = run_eval(step)
            if console and dist.is_main():
                bar.write(f"step {step}: val loss {last_eval['loss']:.4f} ppl {last_eval['ppl']:.2f}")
        if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last:
            save(step, final=last)
        paused += time.perf_counter() - t_pause
    bar.close()
    summary = {"status": "complete", "steps": steps, "tokens": steps * tokens_per_step,
               "parameters": count_parameters(model), "trainable_parameters": count_parameters(model, True),
               "final_val_loss": last_eval["loss"] if last_eval else None,
               "final_val_ppl": last_eval["ppl"] if last_eval else None,
               "checkpoints": [checkpoint_step(d) for d in checkpoint_dirs(out)], **meta}
    if dist.is_main():
        write_json(out / "run.json", summary)
    dist.barrier()
    return summary
