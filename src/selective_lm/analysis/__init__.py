"""Analysis library for the selective-LM study report.

Pure functions over numpy arrays, tensors and state dicts:

* :mod:`.dynamics` - :func:`classify_dynamics`, :func:`dynamics_examples`,
  :class:`DynamicsResult`, :data:`CATEGORIES` (token loss dynamics, paper §2.1).
* :mod:`.buckets` - :func:`high_low_threshold`, :func:`bucket_transitions`.
* :mod:`.cosine` - :func:`full_delta`, :func:`lora_delta`, :func:`flatten_delta`,
  :func:`cosine_matrix` (update-direction similarity).
* :mod:`.efficiency` - :func:`tokens_to_reach`, :func:`data_efficiency`.
* :mod:`.selection_diag` - :func:`provenance_shares`, :func:`token_selection_rates`,
  :func:`most_least_selected`, :func:`selection_html`, :func:`split_losses`.
"""
from __future__ import annotations

from .buckets import bucket_transitions, high_low_threshold
from .cosine import cosine_matrix, flatten_delta, full_delta, lora_delta
from .dynamics import CATEGORIES, DynamicsResult, classify_dynamics, dynamics_examples
from .efficiency import data_efficiency, tokens_to_reach
from .selection_diag import (
    most_least_selected,
    provenance_shares,
    selection_html,
    split_losses,
    token_selection_rates,
)

__all__ = [
    "CATEGORIES",
    "DynamicsResult",
    "bucket_transitions",
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
    "selection_html",
    "split_losses",
    "token_selection_rates",
    "tokens_to_reach",
]
