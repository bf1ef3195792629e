"""selective-lm: Selective Language Modeling (Rho-1) — data, reference scoring, CLM/SLM training, analyses.

Library API:

- :func:`token_losses` — per-position next-token cross-entropy, [B, T] (targets already aligned).
- :func:`select_tokens` — exactly k = round(ratio × valid) positions by ``topk``, ``random`` or ``stochastic``.
- :func:`selective_loss` — mean loss over the tokens selected by excess loss (training − reference).
- :func:`soft_weights` — token weights in [0, 1] from scores, summing to exactly ratio × valid (soft selection).
- :func:`dft_weights` — reference-free DFT weights p = exp(−loss) (as published; ``normalise=True``: p / mean(p)).
"""
from importlib import import_module

__all__ = ["IGNORE_INDEX", "dft_weights", "num_selected", "select_tokens", "selective_loss", "soft_weights",
           "token_losses"]
__version__ = "0.1.0"

# imported on first use: `import selective_lm.cli` (and so `slm --help`) does not import torch
_LAZY = {"IGNORE_INDEX": "loss", "selective_loss": "loss", "token_losses": "loss", "num_selected": "selection",
         "select_tokens": "selection", "soft_weights": "selection", "dft_weights": "selection"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
