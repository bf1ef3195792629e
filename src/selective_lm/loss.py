"""Per-token losses and the selective (SLM) loss.

One function computes per-token next-token cross-entropy; perplexity, reference scoring, CLM and
SLM all build on it. Selection is masking: unselected tokens contribute nothing and get no gradient.

:func:`head_token_losses` is the memory-lean form used in training and scoring: it takes the last
hidden states and the output-head weight and never materialises the [positions, vocab] logits at
once (chunks of positions, logits recomputed in backward). Its backward skips the positions whose
upstream gradient is zero (SLM's unselected tokens), so the head's backward costs ~ratio × the plain one.
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


def token_entropy(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Predictive entropy per position, H = logsumexp(z) − Σ softmax(z)·z = −Σ p log p, shape [B, T], in float32.

    With ``targets``, positions whose target is -100 get 0 (as their losses do). No gradient.
    """
    with torch.no_grad():
        ent = _entropy(F.log_softmax(logits.float(), dim=-1))
        return ent if targets is None else ent.masked_fill(targets == IGNORE_INDEX, 0.0)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


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


# Elements of one chunk's [positions, vocab] logits: small enough to stay cache-resident on CPU,
# large enough to keep a GPU's matmul units busy.
CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}


def _chunk_positions(n: int, vocab: int, device: torch.device, chunk: int) -> int:
    if chunk > 0:
        return chunk
    return max(64, min(n, CHUNK_ELEMENTS.get(device.type, 1 << 24) // max(vocab, 1)))


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


class _HeadCrossEntropy(torch.autograd.Function):
    """Per-position CE of ``hidden @ weight.T`` computed chunk by chunk; logits recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, dtype, sparse, entropy):
        n = hidden.shape[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ents = torch.zeros(n if entropy else 0, dtype=torch.float32, device=hidden.device)
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, n, chunk):
                t = targets[i:i + chunk]
                logits = F.linear(hidden[i:i + chunk].to(dtype), w).float()
                loss = F.cross_entropy(logits, t, ignore_index=IGNORE_INDEX, reduction="none")
                losses[i:i + chunk] = loss
                # log-sum-exp for the backward: loss + target logit (ignored targets get no gradient)
                lse[i:i + chunk] = loss + logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
                if entropy:  # the predictive entropy from the same logits (no gradient flows through it)
                    ents[i:i + chunk] = _entropy(F.log_softmax(logits, -1)).masked_fill(t == IGNORE_INDEX, 0.0)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.dtype, ctx.sparse = chunk, dtype, sparse
        ctx.mark_non_differentiable(ents)
        return losses, ents

    @staticmethod
    def backward(ctx, grad_losses, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad_losses.float() * (targets != IGNORE_INDEX)
        # Only positions with a non-zero upstream gradient (SLM's selected tokens) need any work:
        # one nonzero() per micro-batch (a host sync on GPU) buys skipping (1 - ratio) of the head's backward.
        rows = g.nonzero().squeeze(1) if ctx.sparse else torch.arange(g.numel(), device=g.device)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, rows.numel(), chunk):
                r = rows[i:i + chunk]
                h = hidden.index_select(0, r).to(dtype)
                t = targets.index_select(0, r).clamp(min=0)  # ignored positions: g is 0 there
                p = torch.exp(F.linear(h, w).float() - lse.index_select(0, r).unsqueeze(1))
                p.scatter_add_(1, t.unsqueeze(1), torch.full_like(p[:, :1], -1.0))
                p.mul_(g.index_select(0, r).unsqueeze(1))
                p = p.to(dtype)
                if need_h:
                    grad_h.index_copy_(0, r, (p @ w).to(hidden.dtype))
                if need_w:
                    grad_w += (p.t() @ h).float()
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None, None


def head_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      chunk: int = 0, sparse_backward: bool = False,
                      entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [B, T] of ``logits = hidden @ weight.T`` without materialising the logits.

    ``hidden`` is [B, T, H] (the model's last hidden states), ``weight`` the output head [V, H],
    ``targets`` [B, T] aligned with ``hidden`` (-100 ignored). Values and gradients equal
    ``token_losses(hidden @ weight.T, targets)`` to floating-point tolerance; under autocast the
    matmuls run in the autocast dtype and the softmax in float32. ``chunk`` = positions per chunk
    (0: about 2M logits per chunk on CPU, 64M on GPU). ``sparse_backward`` skips the positions whose
    upstream gradient is zero in backward (one ``nonzero``, a host sync on GPU); off, every position
    is processed and nothing syncs (CLM, ratio 1). ``entropy=True`` returns ``(losses, entropies)``: the
    predictive entropy of every position from the same chunk logits, detached (0 where the target is -100),
    e.g. for ESLM's score=model-entropy in training.
    """
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, H] and targets [B, T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    B, T, H = hidden.shape
    c = _chunk_positions(B * T, weight.shape[0], hidden.device, chunk)
    out, ent = _HeadCrossEntropy.apply(hidden.reshape(B * T, H), weight, targets.reshape(B * T), c,
                                       _compute_dtype(hidden), sparse_backward, entropy)
    return (out.view(B, T), ent.view(B, T)) if entropy else out.view(B, T)


@torch.no_grad()
def head_token_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, entropies) [B, T] of ``logits = hidden @ weight.T``, chunked like :func:`head_token_losses`
    and without gradient: the reference's per-token loss and predictive entropy from the same logits.

    The losses equal :func:`head_token_losses`' bit for bit (same chunks, same dtypes; cross-entropy is
    nll of log-softmax); the entropy reuses that log-softmax, in float32. Positions whose target is -100
    get 0 for both.
    """
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, H] and targets [B, T]; got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    B, T, H = hidden.shape
    n, dtype = B * T, _compute_dtype(hidden)
    c = _chunk_positions(n, weight.shape[0], hidden.device, chunk)
    h, t_all = hidden.reshape(n, H), targets.reshape(n)
    losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
    ents = torch.empty(n, dtype=torch.float32, device=hidden.device)
    w = weight.to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        for i in range(0, n, c):
            t = t_all[i:i + c]
            logp = F.log_softmax(F.linear(h[i:i + c].to(dtype), w).float(), dim=-1)
            losses[i:i + c] = F.nll_loss(logp, t, ignore_index=IGNORE_INDEX, reduction="none")
            ents[i:i + c] = _entropy(logp).masked_fill(t == IGNORE_INDEX, 0.0)
    return losses.view(B, T), ents.view(B, T)
