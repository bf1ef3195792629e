"""A study's stages and the ETA printed before each: estimated from the speed measured on the finished ones."""
from __future__ import annotations

from dataclasses import dataclass

@dataclass
class Stage:
    name: str
    detail: str
    cost: float  # estimated seconds (a stage with a `kind` is estimated from its tokens instead)
    done: bool
    run: object  # a training or scoring stage's run() returns the tokens it processed
    tokens: float = 0.0  # tokens trained ("train") or scored ("forward")
    kind: str = ""  # "train" / "forward": estimated at the speed measured on the finished stages of that kind


# tokens/s assumed for a kind of stage until one of that kind has run
PRIOR_RATES = {"train": 12_000.0, "forward": 40_000.0}


def measured_rates(done: dict[str, tuple[float, float]], prior: dict[str, float] = PRIOR_RATES) -> dict[str, float]:
    """Tokens/s per kind of stage: tokens done / seconds taken by the stages of that kind run so far
    (``done[kind] = (tokens, seconds)``); the prior for a kind none of whose stages ran yet."""
    rates = dict(prior)
    for kind, (tokens, seconds) in done.items():
        if tokens > 0 and seconds > 0:
            rates[kind] = tokens / seconds
    return rates


def stage_seconds(stage: Stage, rates: dict[str, float]) -> float:
    return stage.tokens / rates[stage.kind] if stage.kind in rates else stage.cost


def eta(stages: list[Stage], rates: dict[str, float]) -> float:
    """Seconds left for the stages not done, at the given speeds."""
    return sum(stage_seconds(s, rates) for s in stages if not s.done)


