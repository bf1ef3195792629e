"""The reference side of SLM: per-token reference losses (and predictive entropies) of a micro-batch, from
one or several offline score directories or an online reference model, and the score that ranks tokens.

Scores (``TrainConfig.score``; higher = selected first), all in nats::

    excess          L_θ − L_ref            the paper's excess loss
    self            L_θ − L_ref            the same, with a self-reference (recorded in the run's metadata)
    reference       −L_ref                 what the reference predicts well
    entropy         −H_ref                 where the reference is confident
    excess+entropy  L_θ − L_ref − λ·H_ref  excess loss, less what the reference was unsure of
    loss            L_θ                    ESLM (reference-free): the model's own loss; its top k% are the
                                           tokens above the batch's value-at-risk of L_θ, and their mean is CVaR
    model-entropy   H_θ                    ESLM: the model's own predictive entropy (where it is unsure)

H_ref = logsumexp(z) − Σ softmax(z)·z is the reference's predictive entropy at the position (z its logits); H_θ
is the training model's, from the logits of the same forward that gives L_θ (no gradient through it).
Sign: the later version of the paper adds the reference's entropy to its loss so that tokens the reference
is *confident and right* on rank high; a high entropy marks a token the reference itself cannot predict from
its context (a random digit, a name, noise), so the entropy scores subtract it. λ = 0 gives ``excess``.

Every score is a function of one token's own values, computed before any selection: how the batch is split
into micro-batches and ranks never changes it, so selection stays exact (the :class:`~selective_lm.objective.
Objective` ranks the global tensor). Several references combine per token (``ref_combine``) before the score:
``min`` (the most favourable reference for each token), ``mean`` or ``weighted`` (weights normalised to sum
1); loss and entropy combine alike. A reference's size does not matter (weak-to-strong): its scores are per
token of this dataset's windows.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from . import dist
from .config import ENTROPY_SCORES
from .data import TokenDataset
from .files import read_json
from .mixture import Mixture
from .model import autocast_ctx, check_compatible, load_model, model_token_losses
from .scores import load_entropy, load_scores


@dataclasses.dataclass
class RefStats:
    """A micro-batch's per-token reference values: loss [B, T] and, when the score needs it, entropy [B, T]."""

    loss: torch.Tensor
    entropy: torch.Tensor | None = None


def token_score(score: str, train_losses: torch.Tensor, ref: RefStats | None, entropy_weight: float = 1.0,
                train_entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The per-token selection score (higher = selected first); see the module docstring. ``train_entropy``: the
    training model's predictive entropy (score=model-entropy); ``ref`` is not read by the reference-free scores."""
    if score == "loss":
        return train_losses
    if score == "model-entropy":
        if train_entropy is None:
            raise ValueError("score 'model-entropy' needs the training model's entropy")
        return train_entropy
    if score in ("excess", "self"):
        return train_losses - ref.loss
    if score == "reference":
        return -ref.loss
    if ref.entropy is None:
        raise ValueError(f"score {score!r} needs the reference's entropy")
    if score == "entropy":
        return -ref.entropy
    if score == "excess+entropy":
        return train_losses - ref.loss - entropy_weight * ref.entropy
    raise ValueError(f"unknown score {score!r}")


def online_stats(model, inputs: torch.Tensor, targets: torch.Tensor, entropy: bool, **forward_kwargs) -> RefStats:
    """A reference model's no-grad losses (and entropies, from the same logits) of a micro-batch, in float32."""
    with torch.no_grad():
        if entropy:
            loss, ent = model_token_losses(model, inputs, targets, entropy=True, **forward_kwargs)
            return RefStats(loss.float(), ent.float())
        return RefStats(model_token_losses(model, inputs, targets, **forward_kwargs).float())


def combine(values: list[torch.Tensor], how: str = "mean", weights: list[float] | None = None) -> torch.Tensor:
    """Several references' per-token values → one, elementwise: min, mean or weighted (weights sum to 1)."""
    if len(values) == 1:
        return values[0]
    stacked = torch.stack(values)
    if how == "min":
        return stacked.min(0).values
    if how == "mean":
        return stacked.mean(0)
    if how == "weighted":
        if weights is None or len(weights) != len(values):
            raise ValueError(f"weighted combine needs {len(values)} weights, got {weights}")
        w = torch.tensor(weights, dtype=torch.float64)
        w = (w / w.sum()).to(stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
        return (stacked * w).sum(0)
    raise ValueError(f"unknown ref_combine {how!r}")


class RefLosses:
    """Reference values of a micro-batch: rows of the offline score memmaps (one or several, combined per
    token), or an online no-grad forward of the reference model; and the score they give."""

    def __init__(self, cfg, ds: TokenDataset, device: torch.device):
        self.device, self.precision = device, cfg.precision
        self.score_name = getattr(cfg, "score", "excess")
        self.entropy_weight = getattr(cfg, "entropy_weight", 1.0)
        self.how, self.weights = getattr(cfg, "ref_combine", "mean"), getattr(cfg, "ref_weights", None)
        self.needs_entropy = self.score_name in ENTROPY_SCORES
        self.dirs = [cfg.ref_scores] if isinstance(cfg.ref_scores, (str, Path)) else list(cfg.ref_scores or [])
        self.scores, self.entropies, self.model = [], [], None
        self.mixture = isinstance(ds, Mixture)
        if self.dirs and isinstance(ds, Mixture):  # one scores directory per dataset, read as one by global index
            verify = dist.is_main()
            self.scores = [ds.rows("train", [load_scores(d, part, "train", verify=verify)
                                             for d, part in zip(self.dirs, ds.datasets)], np.float16, ds.seq_len)]
            if self.needs_entropy:
                self.entropies = [ds.rows("train", [load_entropy(d, part, "train", verify=verify)
                                                    for d, part in zip(self.dirs, ds.datasets)], np.float16, ds.seq_len)]
        elif self.dirs:
            verify = dist.is_main()
            self.scores = [load_scores(d, ds, "train", verify=verify) for d in self.dirs]
            if self.needs_entropy:  # one line naming the fix when a directory was scored without entropy
                self.entropies = [load_entropy(d, ds, "train", verify=verify) for d in self.dirs]
        else:
            check_compatible(cfg.ref_model, ds, role="reference model")
            ref = load_model(cfg.ref_model, "cpu" if cfg.parallel == "fsdp" else device)
            self.model = dist.shard_frozen(ref, device, cfg.parallel, cfg.precision)
        self.ref_model = cfg.ref_model

    def __call__(self, idx: np.ndarray, inputs: torch.Tensor, targets: torch.Tensor) -> RefStats:
        if self.scores:
            return RefStats(self._rows(self.scores, idx), self._rows(self.entropies, idx) if self.needs_entropy else None)
        with autocast_ctx(self.device, self.precision):
            return online_stats(self.model, inputs, targets, self.needs_entropy)

    def _rows(self, maps: list[np.ndarray], idx: np.ndarray) -> torch.Tensor:
        vals = [torch.from_numpy(np.asarray(m[idx], dtype=np.float32)) for m in maps]
        return combine(vals, self.how, self.weights).to(self.device, non_blocking=True)

    def score(self, train_losses: torch.Tensor, ref: RefStats, train_entropy: torch.Tensor | None = None) -> torch.Tensor:
        """The selection score of a micro-batch's tokens from their (detached) training losses."""
        return token_score(self.score_name, train_losses, ref, self.entropy_weight)

    def meta(self) -> dict:
        """What a run records about its references (run.json and every checkpoint's meta)."""
        models = [read_json(Path(d) / "manifest.json").get("model") for d in self.dirs]
        out = {"score": self.score_name, "self_reference": self.score_name == "self",
               "reference_models": models if self.dirs else [self.ref_model]}
        if self.score_name == "excess+entropy":
            out["entropy_weight"] = self.entropy_weight
        if len(self.dirs) > 1 and not self.mixture:
            out.update(ref_combine=self.how, ref_weights=self.weights)
        return out
