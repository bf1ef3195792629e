"""selective-lm: Selective Language Modeling (Rho-1) — data, reference scoring, CLM/SLM training, analyses.

Library API:

- :func:`token_losses` — per-position next-token cross-entropy, [B, T] (targets already aligned).
- :func:`select_tokens` — exactly k = round(ratio × valid) positions by ``topk``, ``random`` or ``stochastic``.
- :func:`selective_loss` — mean loss over the tokens selected by excess loss (training − reference).
"""
from .loss import IGNORE_INDEX, selective_loss, token_losses
from .selection import num_selected, select_tokens

__all__ = ["IGNORE_INDEX", "num_selected", "select_tokens", "selective_loss", "token_losses"]
__version__ = "0.1.0"
