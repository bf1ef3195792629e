"""The SLM objective: excess loss → selection over a scope → Σ selected losses / selected count of the step.

One object holds everything that decides which tokens train and how the loss is normalised, so the
training loop (and any other trainer) calls it instead of re-deriving it:

- ``selection_scope='microstep'`` (default): the tokens of each micro-batch step are selected jointly
  over **all ranks** of that micro-step, exactly as one process would select over the concatenation
  of the ranks' micro-batches (rank order). N ranks × batch B give the run of 1 rank × batch N·B.
- ``selection_scope='step'``: one selection over **all micro-batches and all ranks** of the optimizer
  step (the paper's "tokens of the batch"); the training loop computes the step's excess losses in
  a no-grad pre-pass first. Accumulation A × B/A gives the run of 1 × B.
- ``selection_scope='sequence'``: top-k (or the draws, or the soft mass) **within each window**, k =
  round(ratio × its valid tokens), at least 1 (the public SLM code of open_lm, rho-1-reproduce and
  nanoGPT forks). Every window is its own set, so micro-batches and ranks never change it; the
  denominator is the sum of the windows' k over the step.
- ``random`` and ``stochastic`` draw from a generator seeded by (seed, step) on every rank alike and
  over the global tensor, so the selection is reproducible and independent of the world size.
- The loss is Σ selected token losses / (selected tokens of the whole step, all micro-batches and
  ranks); the count is known before any forward and stays on the device.

Beyond the paper's hard top-k, the same path carries per-token **weights** (``weighting``) and a ratio
that changes over training (``ratio_schedule``, ``clm_warmup``):

- ``hard`` (default): a 0/1 mask, Σ w = the selected count (as above).
- ``soft``: w_i = min(1, c · exp(excess_i / τ)) over the selection set, c fixed so Σ w = ratio × valid
  tokens of the set exactly (:func:`selective_lm.selection.soft_weights`): the step's Σ w is
  ratio × its valid count, still known before any forward.
- ``dft``: reference-free, w_i = p_i = exp(−L_θ), the model's own detached probability
  (:func:`selective_lm.selection.dft_weights`), over CLM's denominator (the valid count): DFT's loss, the
  mean of sg(p)·L (the earlier p / mean(p) diverged the same way: benchmarks/dft_divergence.py).

The loss is Σ w · L / (Σ w known before the forward: the selected count, ratio × the valid count, or the
valid count) of the step in every case. :meth:`Objective.at_step` gives the objective of
one optimizer step: plain CLM during the warm-up, then the scheduled ratio, a pure function of
(step, total steps), so every rank and a resumed run use the same one.

Everything stays on the device: the only collectives are one all-reduce of the step's valid counts
and one all-gather of the (excess, valid) pairs per selection.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from . import dist
from .config import RATIO_SCHEDULES, SCOPES, WEIGHTINGS
from .selection import dft_weights, num_selected, select_tokens, soft_weights


class Objective:
    """CLM (every valid token) or SLM (selected or weighted ones), normalised over the whole optimizer step."""

    def __init__(self, objective: str = "clm", strategy: str = "topk", ratio: float = 1.0,
                 temperature: float = 1.0, scope: str = "microstep", seed: int = 0, temperature_unit: str = "std",
                 *, weighting: str = "hard", weight_temperature: float = 1.0, ratio_schedule: str = "constant",
                 ratio_end: float | None = None, clm_warmup: float = 0.0, total_steps: int = 0):
        if scope not in SCOPES:
            raise ValueError(f"unknown selection scope {scope!r}: choose one of {', '.join(SCOPES)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        if ratio_schedule not in RATIO_SCHEDULES:
            raise ValueError(f"unknown ratio_schedule {ratio_schedule!r}: choose one of {', '.join(RATIO_SCHEDULES)}")
        if weighting != "hard" and strategy != "topk":
            raise ValueError(f"weighting {weighting!r} weights every token: it takes strategy 'topk', not {strategy!r}")
        if not weight_temperature > 0:
            raise ValueError(f"weight_temperature must be > 0, got {weight_temperature}")
        if ratio_end is not None and not 0.0 < ratio_end <= 1.0:
            raise ValueError(f"ratio_end must be in (0, 1], got {ratio_end}")
        if not 0.0 <= clm_warmup < 1.0:
            raise ValueError(f"clm_warmup must be in [0, 1), got {clm_warmup}")
        self.selective = objective == "slm"
        self.strategy, self.ratio, self.temperature = strategy, ratio, temperature
        self.scope, self.seed, self.temperature_unit = scope, seed, temperature_unit
        self.weighting, self.weight_temperature = weighting, weight_temperature
        self.ratio_schedule, self.ratio_end, self.clm_warmup = ratio_schedule, ratio_end, clm_warmup
        self.total_steps = total_steps

    @classmethod
    def from_config(cls, cfg, total_steps: int = 0) -> Objective:
        """The objective of a :class:`~selective_lm.config.TrainConfig`; ``total_steps`` (the run's optimizer
        steps) drives the ratio schedule and the CLM warm-up."""
        slm = cfg.objective == "slm"
        return cls(cfg.objective, cfg.strategy, cfg.ratio if slm else 1.0, cfg.temperature,
                   cfg.selection_scope, cfg.seed, cfg.temperature_unit, weighting=cfg.weighting if slm else "hard",
                   weight_temperature=cfg.weight_temperature, ratio_schedule=cfg.ratio_schedule if slm else "constant",
                   ratio_end=cfg.ratio_end if slm else None, clm_warmup=cfg.clm_warmup if slm else 0.0,
                   total_steps=total_steps)

    # ------------------------------------------------------------------ the objective of one step
    def warmup_steps(self, total: int) -> int:
        """Optimizer steps trained as plain CLM first: round(clm_warmup × total), at most total − 1 (0 when off)."""
        if not self.selective or self.clm_warmup <= 0:
            return 0
        return max(0, min(total - 1, math.floor(self.clm_warmup * total + 0.5)))

    def ratio_at(self, step: int, total: int | None = None) -> float:
        """The ratio of optimizer step ``step`` (0-based) of ``total``: a pure function of the two, so it is the
        same on every rank and after a resume. ``ratio`` at the first selective step (after the warm-up),
        ``ratio_end`` at the last; linear or cosine (half a period) in between; 1.0 during the warm-up."""
        total = self.total_steps if total is None else total
        warm = self.warmup_steps(total)
        if not self.selective or step < warm:
            return 1.0
        if self.ratio_schedule == "constant" or self.ratio_end is None:
            return self.ratio
        progress = min(1.0, max(0.0, (step - warm) / max(1, total - 1 - warm)))
        if self.ratio_schedule == "linear":
            return self.ratio + (self.ratio_end - self.ratio) * progress
        return self.ratio_end + (self.ratio - self.ratio_end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def at_step(self, step: int, total: int | None = None) -> Objective:
        """The objective of optimizer step ``step``: CLM during the warm-up, else this one at the step's ratio
        (``self`` when nothing is scheduled, so the default path is unchanged)."""
        total = self.total_steps if total is None else total
        if not self.selective or (self.ratio_schedule == "constant" and self.warmup_steps(total) == 0):
            return self
        out = copy.copy(self)
        if step < self.warmup_steps(total):
            out.selective, out.ratio = False, 1.0
        else:
            out.ratio = self.ratio_at(step, total)
        out.ratio_schedule, out.ratio_end, out.clm_warmup = "constant", None, 0.0  # a fixed step: nothing scheduled
        return out

    @property
    def mean_weight(self) -> float:
        """The token budget per valid token: the ratio (hard, soft), 1 (CLM, and dft, whose denominator is CLM's)."""
        return self.ratio if self.selective and self.weighting != "dft" else 1.0

    @property
    def uses_reference(self) -> bool:
        """Whether the tokens are ranked by a score (excess loss by default); dft weighs by the model's own loss."""
        return self.selective and self.weighting != "dft"

    @property
    def sparse_backward(self) -> bool:
        """Whether many tokens get no gradient (hard selection below ratio 1): the output head's backward then
        skips them, at one host sync per micro-batch."""
        return self.selective and self.weighting == "hard" and self.ratio < 1.0

    @property
    def needs_prepass(self) -> bool:
        """Step scope ranks (or weights) the whole step's tokens before any backward; random selection needs
        no losses."""
        return self.selective and self.scope == "step" and self.strategy != "random"

    def generator(self, step: int) -> torch.Generator | None:
        """The selection generator of optimizer step ``step``: seeded by (seed, step), the same on every rank."""
        if not self.selective or self.strategy == "topk":
            return None
        s = int(np.random.SeedSequence([self.seed, step, 0x534C4D]).generate_state(1, np.uint64)[0] >> 1)
        # drawn on the CPU and copied: a CUDA generator's stream depends on the GPU model (its SM count)
        return torch.Generator(device="cpu").manual_seed(s)

    def denominator(self, valids: list[torch.Tensor]) -> torch.Tensor:
        """Selected tokens (Σ w) of the whole step over all ranks, divided by the world size (DDP and FSDP
        average gradients over ranks), as a float32 device scalar; ``valids`` are this rank's
        micro-batch masks of the step. Soft weights: ratio × valid tokens; dft: the valid tokens; sequence
        scope: the sum of round(ratio × valid tokens) over the windows."""
        counts = dist.all_reduce_sum(torch.stack([v.sum() for v in valids]))  # [grad_accum], global per micro-step
        if not self.selective or self.weighting == "dft":  # CLM's denominator
            n = counts.sum()
        elif self.weighting == "soft":  # Σ w = ratio × valid tokens of each selection set, not rounded
            n = counts.sum().to(torch.float64) * self.ratio
            return torch.where(n > 0, n, 1.0).to(torch.float32) / dist.world_size()
        elif self.scope == "microstep":
            n = num_selected(counts, self.ratio).sum()
        elif self.scope == "sequence":  # Σ over windows of round(ratio × the window's valid tokens)
            n = dist.all_reduce_sum(sum(num_selected(v.reshape(-1, v.shape[-1] if v.dim() else 1).sum(-1),
                                                     self.ratio).sum() for v in valids))
        else:
            n = num_selected(counts.sum(), self.ratio)
        return n.to(torch.float32).clamp(min=1.0) / dist.world_size()

    def select(self, excess: list[torch.Tensor], valid: list[torch.Tensor],
               generator: torch.Generator | None) -> list[torch.Tensor]:
        """Masks for this rank's micro-batches, selected jointly with the other ranks' (same call on every rank).

        ``hard`` weighting gives boolean masks; ``soft`` and ``dft`` give float32 weights (``excess`` is then
        the model's own token loss for dft). The global order is the one of a single process: micro-batch
        major, then rank, then window, so the selected set (ties and random draws included) does not
        depend on how the batch is split.
        """
        return self._select(excess, valid, generator, self.strategy, self.weighting)

    def _select(self, excess, valid, generator, strategy: str, weighting: str) -> list[torch.Tensor]:
        if not self.selective:
            return [v.bool() for v in valid]
        shapes = [e.shape for e in excess]
        local = torch.stack([torch.cat([e.detach().reshape(-1).float() for e in excess]),
                             torch.cat([v.reshape(-1).float() for v in valid])])  # [2, n_local]
        world = dist.world_size()
        glob = dist.all_gather_cat(local.unsqueeze(0))  # [world, 2, n_local]
        # [world, 2, micro, positions] -> [2, micro, world, positions]: a single process's order
        n = shapes[0].numel()
        if any(sh.numel() != n for sh in shapes):
            raise ValueError("micro-batches of one step must have the same number of positions")
        g = glob.view(world, 2, len(shapes), n).permute(1, 2, 0, 3).reshape(2, -1)
        rows = self.scope == "sequence"  # one set per window: rows of the windows' positions
        if rows:
            g = g.view(2, -1, shapes[0][-1] if len(shapes[0]) else 1)
        if weighting == "hard":
            mask = select_tokens(g[0], self.ratio, strategy, valid=g[1] > 0, temperature=self.temperature,
                                 generator=generator, temperature_unit=self.temperature_unit, per_row=rows)
        elif weighting == "soft":
            mask = soft_weights(g[0], self.ratio, valid=g[1] > 0, temperature=self.weight_temperature,
                                temperature_unit=self.temperature_unit, per_row=rows)
        else:  # dft: a weight per token, whatever the scope
            mask = dft_weights(g[0], valid=g[1] > 0)
        mine = mask.view(len(shapes), world, n)[:, dist.rank()]
        return [m.view(sh) for m, sh in zip(mine, shapes)]

    def topk_overlap(self, excess: list[torch.Tensor], valid: list[torch.Tensor],
                     masks: list[torch.Tensor]) -> torch.Tensor | None:
        """Selected tokens (weight, for soft weights) that top-k over the same set would also select (a device
        count; None for top-k, CLM and dft, where it is the selection itself or has no excess): where stochastic
        sits between top-k and random, and soft weighting between top-k and uniform weights."""
        if not self.selective or self.weighting == "dft" or (self.strategy == "topk" and self.weighting == "hard"):
            return None
        top = self._select(excess, valid, None, "topk", "hard")
        return sum((t & m).sum() if m.dtype == torch.bool else (t * m).sum() for t, m in zip(top, masks))

    @staticmethod
    def loss(token_losses: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the step loss: Σ selected (weighted) losses / denominator of the step."""
        return (token_losses * mask.to(token_losses.dtype)).sum() / denom
