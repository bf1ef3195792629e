"""`slm study`: Rho-1's experiment end to end, cached stage by stage, with a report.

The study is the experiment, an application of the library (data, model, scoring, objective, train,
evaluate, analysis) and of the embedded data (:mod:`selective_lm.corpora`), kept apart from both:
``config`` (StudyConfig), ``layout`` (paths, arms, index.json), ``plan`` (stages and ETA), ``stages``
(what each stage runs), ``runner`` (the loop and ``run_study``), ``results`` (a finished study read
back), ``tokens`` and ``claims`` (token-level sections, verdicts; with ``stats``), ``collect``
(results.json from all of them), ``report`` (report.md) and ``plots``.
Stages: corpora → tokenizer → prepare → base → reference → score → arms → evaluate → report.
"""
from __future__ import annotations

_LAZY = {"StudyConfig": "config", "Study": "layout", "Stage": "plan", "eta": "plan", "measured_rates": "plan",
         "PRIOR_RATES": "plan", "run_study": "runner", "STRATEGY_NAMES": "config", "QUICK": "config"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
