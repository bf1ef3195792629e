"""One optimizer step of CLM/SLM training: :func:`train_step` and what it needs.

Per step: the objective (:mod:`selective_lm.objective`) knows the denominator before any forward;
per micro-batch: per-token losses; for SLM, a per-token score (:mod:`selective_lm.reference`; by default
excess = loss − reference loss) ranks the tokens over the selection scope (the micro-step over all ranks,
or the whole step after a no-grad pre-pass); the loss is Σ selected losses / selected tokens of the step
(Σ w·loss / Σ w for soft and dft weights). The objective of each step comes from
:meth:`Objective.at_step` (CLM warm-up, scheduled ratio).
Metrics accumulate on the device. A step whose gradient norm is not finite is skipped by the fused
optimizer itself (no host sync): weights and optimizer state stay as they were, and the loop counts it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import dist
from .config import TrainConfig
from .data import TokenDataset
from .masks import SelectionLog
from .model import autocast_ctx, model_token_losses
from .objective import Objective
from .reference import RefLosses, RefStats, token_score


class NoReference:
    """The reference of the reference-free objectives: none. ``weighting=dft`` weighs by the model's own loss
    (p = exp(−loss)); ESLM's scores (``score=loss`` / ``model-entropy``) rank by the model's own loss or predictive
    entropy. No scores are read and no reference model runs."""

    def __init__(self, score: str | None = None):
        self.score_name = score  # None: dft (no score; its weights come from the model's own loss)
        self.needs_model_entropy = score == "model-entropy"

    def __call__(self, idx: np.ndarray, inputs: torch.Tensor, targets: torch.Tensor) -> RefStats:
        return RefStats(torch.zeros(targets.shape, dtype=torch.float32, device=targets.device))

    def score(self, train_losses: torch.Tensor, ref: RefStats, train_entropy: torch.Tensor | None = None) -> torch.Tensor:
        return token_score(self.score_name or "loss", train_losses, ref, train_entropy=train_entropy)

    def meta(self) -> dict:
        return {"score": self.score_name, "self_reference": False, "reference_models": []}


class StepMetrics:
    """Running sums of the logged quantities, on the device; reduced over ranks only at log time.

    ``mask`` may be a boolean mask or float weights: then n_sel sums the weights and loss_sel, ex_sel and
    noise_sel are weighted sums. n_ex counts the valid tokens that had an excess (not CLM warm-up steps)."""

    KEYS = ("loss_all", "n_all", "loss_sel", "n_sel", "ex_sum", "ex_sq", "ex_sel", "noise_sel", "noise_all", "overlap",
            "n_ex")

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.acc = {k: torch.zeros((), device=self.device, dtype=torch.float64) for k in self.KEYS}

    def add(self, tl: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, excess: torch.Tensor | None,
            noise: torch.Tensor | None, overlap: torch.Tensor | None = None) -> None:
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
            a["n_ex"] += vf.sum()
        if noise is not None:
            a["noise_sel"] += (noise & mask).sum() if mask.dtype == torch.bool else (noise.to(torch.float32) * w).sum()
            a["noise_all"] += (noise & valid).sum()
        if overlap is not None:
            a["overlap"] += overlap

    def summed(self) -> dict[str, torch.Tensor]:
        """The running sums over all ranks, on the CPU (for a checkpoint); the sums stay as they are."""
        total = dist.all_reduce_sum(torch.stack(list(self.acc.values())).clone()).cpu()
        return dict(zip(self.KEYS, total))

    def reduce(self) -> dict[str, float]:
        """Sum over ranks and move to the host (the loop's sync at log steps), then reset."""
        vals = {k: float(v) for k, v in self.summed().items()}
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
    selection: SelectionLog | None = None  # save_selection: every step's masks, written at log and save steps
    nonfinite: torch.Tensor = dataclasses.field(init=False)  # steps skipped for a non-finite gradient norm
    first_nonfinite: torch.Tensor = dataclasses.field(init=False)  # the first such step, -1 if none

    def __post_init__(self):
        self.nonfinite = torch.zeros((), device=self.device)
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        inputs, targets = self.ds.batch("train", idx)
        if self.cfg.keep_labels is not None:  # the other labels' targets are ignored like padding
            prov = self.ds.provenance("train")
            keep = np.isin(np.asarray(prov[idx, 1:]), self.cfg.keep_labels)
            targets = targets.masked_fill(torch.from_numpy(~keep), -100)
        return idx, inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def losses(self, model, inputs: torch.Tensor, targets: torch.Tensor,
               sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-token losses, the model's own predictive entropies when the score needs them, else None);
        ``sparse``: the head's backward skips zero-gradient tokens (hard SLM below ratio 1; CLM and soft
        weights take the dense backward, with no host sync)."""
        entropy = getattr(self.ref, "needs_model_entropy", False)
        with autocast_ctx(self.device, self.cfg.precision):
            out = model_token_losses(model, inputs, targets, sparse_backward=sparse, entropy=entropy)
        return out if entropy else (out, None)


def train_step(t: Trainer, step: int, micro: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
               provenance: np.ndarray | None = None) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches; returns the gradient norm (a device tensor)."""
    obj, cfg = t.objective.at_step(step), t.cfg  # this step's objective: CLM in the warm-up, the scheduled ratio
    valids = [targets != -100 for _, _, targets in micro]
    denom = obj.denominator(valids)  # the step's selected count over all ranks, known before any forward
    gen = obj.generator(step)
    refs: list[RefStats | None] = [None] * len(micro)
    excess: list[torch.Tensor | None] = [None] * len(micro)
    masks = None
    overlaps: list[torch.Tensor | None] = [None] * len(micro)
    chosen: list[torch.Tensor] = []
    if obj.selective and obj.scope == "step" and len(micro) > 1:  # one micro-batch: the micro-step is the step
        if obj.needs_prepass:  # rank the whole step's tokens before any backward
            with torch.no_grad():
                for m, (idx, inputs, targets) in enumerate(micro):
                    refs[m] = t.ref(idx, inputs, targets)
                    tl, ent = t.losses(t.model, inputs, targets)
                    excess[m] = t.ref.score(tl.float(), refs[m], ent)
        masks = obj.select([e if e is not None else v.float() for e, v in zip(excess, valids)], valids, gen)
    for m, (idx, inputs, targets) in enumerate(micro):
        with dist.grad_sync(t.fwd_model, m == len(micro) - 1):  # reduce gradients on the last micro-batch only
            tl, ent = t.losses(t.fwd_model, inputs, targets, obj.sparse_backward)
            if obj.selective and excess[m] is None:
                refs[m] = t.ref(idx, inputs, targets) if refs[m] is None else refs[m]
                excess[m] = t.ref.score(tl.detach(), refs[m], ent)
            mask = masks[m] if masks is not None else obj.select([excess[m]], [valids[m]], gen)[0]
            obj.loss(tl, mask, denom).backward()
            chosen.append(mask)
            if masks is None:
                overlaps[m] = obj.topk_overlap([excess[m]], [valids[m]], [mask])
        noise = None
        if provenance is not None:
            noise = torch.from_numpy(np.asarray(provenance[idx, 1:]) != 0).to(t.device, non_blocking=True)
        t.metrics.add(tl.detach(), valids[m], mask, excess[m] if obj.uses_reference else None, noise, overlaps[m])
    if masks is not None and excess[0] is not None and (o := obj.topk_overlap(excess, valids, masks)) is not None:
        t.metrics.acc["overlap"] += o
    if t.selection is not None:
        t.selection.add(step, chosen, [idx for idx, _, _ in micro])
    params = [p for p in t.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    bad = ~torch.isfinite(grad_norm)  # a non-finite loss gives a non-finite norm too
    t.optimizer.found_inf = bad.to(torch.float32)  # the fused AdamW skips the update when it is 1
    t.nonfinite += bad
    t.first_nonfinite = torch.where(bad & (t.first_nonfinite < 0), step, t.first_nonfinite)
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    return grad_norm


