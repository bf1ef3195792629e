"""The SLM objective: excess loss → selection over a scope → Σ selected losses / selected count of the step.

One object holds everything that decides which tokens train and how the loss is normalised, so the
training loop (and any other trainer) calls it instead of re-deriving it:

- ``selection_scope='microstep'`` (default): the tokens of each micro-batch step are selected jointly
  over **all ranks** of that micro-step, exactly as one process would select over the concatenation
  of the ranks' micro-batches (rank order). N ranks × batch B give the run of 1 rank × batch N·B.
- ``selection_scope='step'``: one selection over **all micro-batches and all ranks** of the optimizer
  step (the paper's "tokens of the batch"); the training loop computes the step's excess losses in
  a no-grad pre-pass first. Accumulation A × B/A gives the run of 1 × B.
- ``random`` and ``stochastic`` draw from a generator seeded by (seed, step) on every rank alike and
  over the global tensor, so the selection is reproducible and independent of the world size.
- The loss is Σ selected token losses / (selected tokens of the whole step, all micro-batches and
  ranks); the count is known before any forward and stays on the device.

Everything stays on the device: the only collectives are one all-reduce of the step's valid counts
and one all-gather of the (excess, valid) pairs per selection.
"""
from __future__ import annotations

import numpy as np
import torch

from . import dist
from .config import SCOPES
from .selection import num_selected, select_tokens


class Objective:
    """CLM (every valid token) or SLM (the selected ones), normalised over the whole optimizer step."""

    def __init__(self, objective: str = "clm", strategy: str = "topk", ratio: float = 1.0,
                 temperature: float = 1.0, scope: str = "microstep", seed: int = 0, temperature_unit: str = "std"):
        if scope not in SCOPES:
            raise ValueError(f"unknown selection scope {scope!r}: choose one of {', '.join(SCOPES)}")
        self.selective = objective == "slm"
        self.strategy, self.ratio, self.temperature = strategy, ratio, temperature
        self.scope, self.seed, self.temperature_unit = scope, seed, temperature_unit

    @classmethod
    def from_config(cls, cfg) -> Objective:
        return cls(cfg.objective, cfg.strategy, cfg.ratio if cfg.objective == "slm" else 1.0, cfg.temperature,
                   cfg.selection_scope, cfg.seed, cfg.temperature_unit)

    @property
    def needs_prepass(self) -> bool:
        """Step scope ranks the whole step's tokens before any backward; random selection needs no losses."""
        return self.selective and self.scope == "step" and self.strategy != "random"

    def generator(self, step: int) -> torch.Generator | None:
        """The selection generator of optimizer step ``step``: seeded by (seed, step), the same on every rank."""
        if not self.selective or self.strategy == "topk":
            return None
        s = int(np.random.SeedSequence([self.seed, step, 0x534C4D]).generate_state(1, np.uint64)[0] >> 1)
        # drawn on the CPU and copied: a CUDA generator's stream depends on the GPU model (its SM count)
        return torch.Generator(device="cpu").manual_seed(s)

    def denominator(self, valids: list[torch.Tensor]) -> torch.Tensor:
        """Selected tokens of the whole step over all ranks, divided by the world size (DDP and FSDP
        average gradients over ranks), as a float32 device scalar; ``valids`` are this rank's
        micro-batch masks of the step."""
        counts = dist.all_reduce_sum(torch.stack([v.sum() for v in valids]))  # [grad_accum], global per micro-step
        if not self.selective:
            n = counts.sum()
        elif self.scope == "microstep":
            n = num_selected(counts, self.ratio).sum()
        else:
            n = num_selected(counts.sum(), self.ratio)
        return n.to(torch.float32).clamp(min=1.0) / dist.world_size()

    def select(self, excess: list[torch.Tensor], valid: list[torch.Tensor],
               generator: torch.Generator | None) -> list[torch.Tensor]:
        """Masks for this rank's micro-batches, selected jointly with the other ranks' (same call on every rank).

        The global order is the one of a single process: micro-batch major, then rank, then window,
        so the selected set (ties and random draws included) does not depend on how the batch is split.
        """
        return self._select(excess, valid, generator, self.strategy)

    def _select(self, excess, valid, generator, strategy: str) -> list[torch.Tensor]:
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
        mask = select_tokens(g[0], self.ratio, strategy, valid=g[1] > 0,
                             temperature=self.temperature, generator=generator, temperature_unit=self.temperature_unit)
        mine = mask.view(len(shapes), world, n)[:, dist.rank()]
        return [m.view(sh) for m, sh in zip(mine, shapes)]

    def topk_overlap(self, excess: list[torch.Tensor], valid: list[torch.Tensor],
                     masks: list[torch.Tensor]) -> torch.Tensor | None:
        """Selected tokens that top-k over the same set would also select (a device count; None for
        top-k and CLM, where it is the selection itself): where stochastic sits between top-k and random."""
        if not self.selective or self.strategy == "topk":
            return None
        top = self._select(excess, valid, None, "topk")
        return sum((t & m).sum() for t, m in zip(top, masks))

    @staticmethod
    def loss(token_losses: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the step loss: Σ selected losses / denominator of the step."""
        return (token_losses * mask.to(token_losses.dtype)).sum() / denom
