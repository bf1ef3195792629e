"""`slm train`: causal LM (CLM) or Selective Language Modeling (SLM) training.

One readable loop. Per optimizer step:

1. the step's micro-batches are fixed windows in a seeded order (same order for every arm);
2. per micro-batch: per-token losses; for SLM, excess = loss − reference loss ranks the tokens and
   exactly k = round(ratio × valid) of the micro-batch are kept (selection is masking);
3. loss = Σ kept token losses / (kept tokens of the whole step, all micro-batches and ranks), so
   gradient accumulation and data parallelism give the same gradient as one big batch;
4. metrics accumulate on device; the host syncs only every ``log_every`` steps.
"""
from __future__ import annotations

import contextlib
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
from .scoring import load_scores
from .selection import num_selected, select_tokens


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


def _ref_source(cfg: TrainConfig, ds: TokenDataset, device: torch.device):
    if cfg.objective != "slm":
        return None, None
    if cfg.ref_scores:
        return load_scores(cfg.ref_scores, ds, "train"), None
    check_compatible(cfg.ref_model, ds, role="reference model")
    ref = load_model(cfg.ref_model, device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return None, ref


def train(cfg: TrainConfig, console: bool = True) -> dict:
    """Run training as configured; returns the run summary (also written to run.json)."""
    ds = TokenDataset(cfg.data)
    n_train = ds.num_windows("train")
    out = Path(cfg.out)
    device = dist.local_device(resolve_device(cfg.device))
    dist.init(device)
    world, rank = dist.world_size(), dist.rank()
    resume_from = prepare_run_dir(cfg)
    scores, ref_model = _ref_source(cfg, ds, device)
    model, base_path = _init_model(cfg, ds, out, device)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    steps = total_steps(cfg, n_train, ds.seq_len, world)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 1000003 * rank)
    step = 0
    if resume_from is not None:
        step = restore_state(resume_from, model, optimizer, scheduler, generator)["step"]
        if dist.is_main():
            truncate_metrics(out / "metrics.jsonl", step)
    fwd_model = dist.parallelize(model, device, cfg.compile)
    order = WindowOrder(n_train, cfg.data_seed)
    prov = ds.provenance("train")
    slm = cfg.objective == "slm"
    has_val = "validation" in ds.splits() and ds.num_windows("validation") > 0
    per_step = cfg.batch_size * cfg.grad_accum
    tokens_per_step = per_step * world * ds.seq_len
    meta = {"dataset": str(Path(cfg.data).resolve()), "dataset_fingerprint": ds.fingerprint,
            "objective": cfg.objective, "strategy": cfg.strategy if slm else None, "ratio": cfg.ratio if slm else 1.0,
            "lora": cfg.lora.r > 0, "base": str(Path(base_path).resolve()) if base_path else None}

    def save(step: int, final: bool = False) -> None:
        if not dist.is_main():
            return
        state = capture_state(step, optimizer, scheduler, generator, {"tokens": step * tokens_per_step})
        d = out / "checkpoints" / f"step_{step:06d}"
        save_checkpoint_dir(model, d, ds.tokenizer_dir, base_path, {**meta, "step": step,
                                                                        "tokens": step * tokens_per_step}, state)
        if final:
            save_checkpoint_dir(model, out / "final", ds.tokenizer_dir, base_path,
                                {**meta, "step": step, "tokens": step * tokens_per_step})

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

    zero = lambda: torch.zeros((), device=device, dtype=torch.float64)  # noqa: E731
    acc = {k: zero() for k in ("loss_all", "n_all", "loss_sel", "n_sel", "ex_sum", "ex_sq", "ex_sel", "noise_sel", "noise_all")}
    grad_norm = zero()
    bar = tqdm(total=steps, initial=step, desc=f"train {cfg.objective}{'-' + cfg.strategy if slm else ''}",
               unit="step", disable=not (cfg.progress and dist.is_main()), dynamic_ncols=True)
    t_log, step_log, last_eval, paused = time.perf_counter(), step, None, 0.0
    fwd_model.train()
    while step < steps:
        base_pos = step * per_step * world + rank * per_step
        micro = []
        for m in range(cfg.grad_accum):
            idx = order.indices(base_pos + m * cfg.batch_size, cfg.batch_size)
            inputs, targets = ds.batch("train", idx)
            micro.append((idx, inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)))
        # Denominator of the whole step (all micro-batches, all ranks), known before any forward.
        counts = [(t != -100).sum() for _, _, t in micro]
        denom = torch.stack([num_selected(c, cfg.ratio) if slm else c for c in counts]).sum().to(torch.float32)
        denom = dist.all_reduce_sum(denom).clamp(min=1.0) / world  # DDP averages gradients over ranks
        for m, (idx, inputs, targets) in enumerate(micro):
            # DDP: reduce gradients only on the step's last micro-batch (one context for forward + backward).
            sync = fwd_model.no_sync() if (world > 1 and m < cfg.grad_accum - 1) else contextlib.nullcontext()
            with sync:
                valid = targets != -100
                vf = valid.to(torch.float32)  # masks multiply: boolean indexing would sync with the host
                with autocast_ctx(device, cfg.precision):
                    tl = model_token_losses(fwd_model, inputs, targets)
                if slm:
                    if scores is not None:
                        ref = torch.from_numpy(np.asarray(scores[idx], dtype=np.float32)).to(device)
                    else:
                        with torch.no_grad(), autocast_ctx(device, cfg.precision):
                            ref = model_token_losses(ref_model, inputs, targets)
                    excess = tl.detach() - ref
                    sel = select_tokens(excess, cfg.ratio, cfg.strategy, valid=valid, temperature=cfg.temperature,
                                        generator=generator)
                    acc["ex_sum"] += (excess * vf).sum()
                    acc["ex_sq"] += (excess.square() * vf).sum()
                    acc["ex_sel"] += (excess * sel).sum()
                else:
                    sel = valid
                w = sel.to(tl.dtype)
                ((tl * w).sum() / denom).backward()
            tld = tl.detach()
            acc["loss_all"] += (tld * vf).sum()
            acc["n_all"] += valid.sum()
            acc["loss_sel"] += (tld * w).sum()
            acc["n_sel"] += sel.sum()
            if prov is not None:
                noise = torch.from_numpy(np.asarray(prov[idx, 1:]) != 0).to(device)
                acc["noise_sel"] += (noise & sel).sum()
                acc["noise_all"] += (noise & valid).sum()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        last = step == steps
        if step % cfg.log_every == 0 or last:
            vals = {k: float(dist.all_reduce_sum(v.clone())) for k, v in acc.items()}  # the loop's only host sync
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
            acc = {k: zero() for k in acc}
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
