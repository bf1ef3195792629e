"""Analysis library: what the study report and `slm analyze` compute, usable on any runs.

Functions over numpy arrays, tensors, state dicts and run directories; nothing here imports the study
or the command layer (:mod:`selective_lm.analyze` and :mod:`selective_lm.study` call these):

* :mod:`.dynamics` - :func:`classify_dynamics`, :func:`dynamics_examples`,
  :class:`DynamicsResult`, :data:`CATEGORIES` (token loss dynamics, paper §2.1).
* :mod:`.buckets` - :func:`high_low_threshold`, :func:`bucket_transitions`.
* :mod:`.cosine` - :func:`full_delta`, :func:`lora_delta`, :func:`flatten_delta`,
  :func:`cosine_matrix` (update-direction similarity); :func:`read_state`, :func:`checkpoint_delta`
  (a checkpoint directory's weights and its update: full Δθ or LoRA B·A·α/r).
* :mod:`.efficiency` - :func:`tokens_to_reach`, :func:`data_efficiency`.
* :mod:`.selection_diag` - :func:`provenance_shares`, :func:`token_selection_rates`,
  :func:`most_least_selected`, :func:`selection_html`, :func:`split_losses`, :func:`topk_mask` (SLM's
  top-k of an excess-loss array), :func:`training_shares` (a run's logged noise shares and top-k overlap).
* :mod:`.selection_tables` - :class:`SelectionCounter`, :func:`run_selection`, :func:`selection_markdown`,
  :func:`run_selection_page` (what a run selected, per provenance label and token class, from the masks it saved
  with ``save_selection``).
"""
from __future__ import annotations

from importlib import import_module

__all__ = [
    "CATEGORIES",
    "DynamicsResult",
    "SelectionCounter",
    "bucket_transitions",
    "checkpoint_delta",
    "classify_dynamics",
    "cosine_matrix",
    "data_efficiency",
    "dynamics_examples",
    "flatten_delta",
    "full_delta",
    "high_low_threshold",
    "lora_delta",
    "most_least_selected",
    "provenance_shares",
    "read_state",
    "run_selection",
    "run_selection_page",
    "selection_html",
    "selection_markdown",
    "split_losses",
    "token_selection_rates",
    "tokens_to_reach",
    "topk_mask",
    "training_shares",
]

# imported on first use: `slm --help` builds the `analyze` parser without importing torch
_LAZY = {"bucket_transitions": "buckets", "high_low_threshold": "buckets", "cosine_matrix": "cosine",
         "flatten_delta": "cosine", "full_delta": "cosine", "lora_delta": "cosine",
         "read_state": "cosine", "checkpoint_delta": "cosine", "topk_mask": "selection_diag",
         "training_shares": "selection_diag", "CATEGORIES": "dynamics",
         "DynamicsResult": "dynamics", "classify_dynamics": "dynamics", "dynamics_examples": "dynamics",
         "data_efficiency": "efficiency", "tokens_to_reach": "efficiency", "most_least_selected": "selection_diag",
         "provenance_shares": "selection_diag", "selection_html": "selection_diag", "split_losses": "selection_diag",
         "token_selection_rates": "selection_diag", "SelectionCounter": "selection_tables",
         "run_selection": "selection_tables", "run_selection_page": "selection_tables",
         "selection_markdown": "selection_tables"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
