"""Per-token losses and the selective (SLM) loss.

One function computes per-token next-token cross-entropy; perplexity, reference scoring, CLM and
SLM all build on it. Selection is masking: unselected tokens contribute nothing and get no gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .selection import select_tokens

IGNORE_INDEX = -100


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per position, shape [B, T], computed in float32.

    ``logits[:, t]`` predicts ``targets[:, t]`` (already aligned: no shift happens here).
    Targets equal to -100 are ignored and get loss 0.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be [B, T, V] and targets [B, T]; got {tuple(logits.shape)} and {tuple(targets.shape)}")
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view(B, T)


def selective_loss(token_losses: torch.Tensor, ref_losses: torch.Tensor, ratio: float,
                   strategy: str = "topk", *, valid: torch.Tensor | None = None,
                   temperature: float = 1.0, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """SLM loss: mean of the training losses of the selected tokens, and the selection mask.

    excess = token_losses − ref_losses (detached; it only ranks). With ratio 1.0 the loss is
    exactly the mean over valid tokens, i.e. the CLM loss.
    """
    if ref_losses.shape != token_losses.shape:
        raise ValueError(f"ref_losses has shape {tuple(ref_losses.shape)} but token_losses {tuple(token_losses.shape)}")
    excess = token_losses.detach() - ref_losses.to(token_losses.dtype)
    selected = select_tokens(excess, ratio, strategy, valid=valid, temperature=temperature, generator=generator)
    weight = selected.to(token_losses.dtype)
    loss = (token_losses * weight).sum() / weight.sum().clamp(min=1.0)
    return loss, selected
