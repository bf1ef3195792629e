"""SLM inside the Hugging Face ``Trainer`` and TRL, with the objective ``slm train`` uses.

Two ways in:

- :class:`SLMTrainerMixin`: put it first in the bases of any ``transformers.Trainer`` subclass
  (:class:`SLMTrainer` is the mixin on ``Trainer``; ``class SLMSFTTrainer(SLMTrainerMixin, trl.SFTTrainer)``
  works the same way; with offline scores pass ``data_collator=SLMCollator(...)``, as TRL's own collator drops
  the column, and do not pack). Reference losses come from a reference model (``ref_model=``, online) or from
  a dataset column (offline; written by ``slm score --hf-out`` or :func:`selective_lm.columns.score_dataset`).
  The Trainer fetches all micro-batches of an optimizer step before the first forward
  (``get_batch_samples``), so the mixin knows the selected count of the whole step over all devices
  in advance. That makes the loss exact: gradient accumulation and data parallelism give the gradient
  that ``slm train`` gives on the same windows, and ``selection_scope='step'`` ranks the step's tokens
  in a no-grad pre-pass (then accumulation A × B/A equals 1 × B).
- :class:`SLMLoss`: a ``compute_loss_func`` for code that can only pass a function to ``Trainer``. It
  needs an online reference (the function never sees which rows it is given), selects over each
  micro-batch across devices, and divides by round(ratio × ``num_items_in_batch``), the step's
  selected count up to the rounding of each micro-batch's share.

Evaluation (``trainer.evaluate()``) reports the plain CLM loss, so ``eval_loss`` is comparable across
arms. The logs use ``slm train``'s metric names: ``loss`` (every token), ``loss_selected`` (the objective),
``selected_fraction``, ``excess_mean``, ``lr``; ``eval_NAME/loss`` for each named eval dataset.
"""
from __future__ import annotations

import dataclasses

import torch
from transformers import Trainer

from .columns import ENTROPY_COLUMN, REF_COLUMN
from .config import ENTROPY_SCORES, MODEL_SCORES, SCOPES, SCORES, STRATEGIES, TEMPERATURE_UNITS
from .loss import IGNORE_INDEX, token_losses
from .model import model_token_losses
from .objective import Objective
from .reference import RefStats, online_stats, token_score
from .selection import num_selected
from .step import StepMetrics

FORWARD_KEYS = ("attention_mask", "position_ids")  # what else a batch may carry that the model's forward needs


@dataclasses.dataclass
class SLMArguments:
    """How the Trainer integration selects tokens (the same meaning as ``slm train``'s options)."""

    ratio: float = 0.6
    """Fraction of the valid tokens of each selection scope that get the loss, in (0, 1]."""
    strategy: str = "topk"
    """topk (highest excess loss, the paper's SLM), random or stochastic (sampling ∝ exp(excess / temperature))."""
    temperature: float = 1.0
    """Temperature τ of stochastic selection, in `temperature_unit`s."""
    temperature_unit: str = "std"
    """std: τ in units of the selection set's excess-loss std (scale-free); nats: raw nats."""
    selection_scope: str = "microstep"
    """microstep: select over each micro-batch step across all devices; step: over the whole optimizer step;
    sequence: within each row (window) alone, round(ratio × its valid tokens)."""
    ref_column: str = REF_COLUMN
    """Dataset column with the reference loss of every token (offline scores; index 0 of a row has none)."""
    seed: int = 0
    """Seed of the random and stochastic draws (with the optimizer step)."""
    score: str = "excess"
    """Per-token score, higher selected first (as `slm train`'s score): excess, reference, entropy, excess+entropy, self,
    or the reference-free loss and model-entropy (ESLM: the trained model's own loss or predictive entropy)."""
    entropy_weight: float = 1.0
    """λ ≥ 0 of score=excess+entropy."""
    entropy_column: str = ENTROPY_COLUMN
    """Dataset column with the reference's predictive entropy of every token, for the entropy scores with offline scores (`slm score --hf-out` writes it); an online ref_model computes it instead."""
    weighting: str = "hard"
    """hard (select by strategy), soft (weights from the score, mean weight = ratio), dft (weights p = exp(−loss) over
    the valid count: DFT's and TRL's loss, reference-free)."""
    weight_temperature: float = 1.0
    """Temperature of soft weights, in temperature_units."""
    ratio_schedule: str = "constant"
    """constant, linear or cosine from ratio to ratio_end over the Trainer's max_steps (after clm_warmup)."""
    ratio_end: float | None = None
    """Ratio of the last step of a ratio schedule."""
    clm_warmup: float = 0.0
    """Fraction of the Trainer's max_steps, in [0, 1), trained as plain CLM before selection starts."""

    def __post_init__(self):
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"SLMArguments.ratio must be in (0, 1], got {self.ratio}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.selection_scope not in SCOPES:
            raise ValueError(f"unknown selection_scope {self.selection_scope!r}: choose one of {', '.join(SCOPES)}")
        if self.strategy == "stochastic" and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.temperature_unit not in TEMPERATURE_UNITS:
            raise ValueError(f"unknown temperature_unit {self.temperature_unit!r}: choose one of {', '.join(TEMPERATURE_UNITS)}")
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}: choose one of {', '.join(SCORES)}")
        if not self.entropy_weight >= 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if (self.ratio_schedule == "constant") != (self.ratio_end is None):
            raise ValueError("ratio_schedule linear/cosine needs ratio_end, and ratio_end needs one of them")
        self.objective()  # the objective's own checks (weighting, ratio_schedule, ratio_end, clm_warmup)

    def objective(self) -> Objective:
        return Objective("slm", self.strategy, self.ratio, self.temperature, self.selection_scope, self.seed,
                         self.temperature_unit, weighting=self.weighting, weight_temperature=self.weight_temperature,
                         ratio_schedule=self.ratio_schedule, ratio_end=self.ratio_end, clm_warmup=self.clm_warmup)

    @property
    def needs_entropy(self) -> bool:
        """Whether the reference's entropy is needed (a column, or computed by ref_model)."""
        return self.weighting != "dft" and self.score in ENTROPY_SCORES

    @property
    def uses_reference(self) -> bool:
        """Whether reference losses are needed at all (dft and ESLM's scores use the trained model's own)."""
        return self.weighting != "dft" and self.score not in MODEL_SCORES

    @property
    def needs_model_entropy(self) -> bool:
        """Whether the trained model's own predictive entropy ranks the tokens (score=model-entropy)."""
        return self.weighting != "dft" and self.score == "model-entropy"


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """HF labels [B, L] → the targets [B, L − 1] of the inputs ``input_ids[:, :-1]`` (the layout of ``slm train``)."""
    return labels[:, 1:]


def shifted_refs(ref: torch.Tensor) -> torch.Tensor:
    """A per-token reference-loss column [B, L] (index t: loss of token t) → aligned with shifted_targets."""
    return ref[:, 1:].float().nan_to_num(0.0)


def model_inputs(inputs: dict) -> tuple[torch.Tensor, dict]:
    """(input_ids without the last position, which predicts nothing; the forward's other tensors, cut alike)."""
    kwargs = {k: inputs[k][:, :-1] for k in FORWARD_KEYS if inputs.get(k) is not None}
    return inputs["input_ids"][:, :-1], kwargs


def _pad_to(t: torch.Tensor, shape: tuple[int, int], fill) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, shape[1] - t.shape[1], 0, shape[0] - t.shape[0]), value=fill)


def _max_shape(tensors: list[torch.Tensor]) -> tuple[int, int]:
    """The largest [rows, positions] over these tensors and every process (batches may be padded differently)."""
    from . import dist

    dims = torch.tensor([max(t.shape[0] for t in tensors), max(t.shape[1] for t in tensors)], device=tensors[0].device)
    if dist.world_size() > 1:
        torch.distributed.all_reduce(dims, op=torch.distributed.ReduceOp.MAX)
    return tuple(int(d) for d in dims.tolist())


def select_padded(obj: Objective, excess: list[torch.Tensor], valid: list[torch.Tensor], generator,
                  shape: tuple[int, int]) -> list[torch.Tensor]:
    """Objective.select over micro-batches (and processes) whose rows or lengths differ: each is padded to
    ``shape`` with invalid positions, which are never selected, and its mask cut back."""
    masks = obj.select([_pad_to(e, shape, 0.0) for e in excess], [_pad_to(v, shape, False) for v in valid], generator)
    return [m[:v.shape[0], :v.shape[1]] for m, v in zip(masks, valid)]


def _prepare_ref(ref_model, device) -> torch.nn.Module:
    ref_model = ref_model.to(device)
    ref_model.eval()
    ref_model.requires_grad_(False)
    return ref_model


class SLMTrainerMixin:
    """Selective Language Modeling for a ``transformers.Trainer`` subclass (put it first in the bases).

    Keyword arguments on top of the Trainer's: ``slm_args`` (:class:`SLMArguments`) and ``ref_model``
    (a causal LM sharing the tokenizer; without it every batch needs the ``slm_args.ref_column`` column).
    """

    def __init__(self, *args, slm_args: SLMArguments | None = None, ref_model=None, **kwargs):
        self.slm_args = slm_args or SLMArguments()
        self.ref_model = ref_model
        targs = kwargs.get("args", args[1] if len(args) > 1 else None)
        if targs is not None and targs.ddp_find_unused_parameters is None:
            # the loss takes the output head's weight outside the model's forward (chunked, no [B·T, vocab]
            # logits): DDP's search for unused parameters would mark the head ready twice
            targs.ddp_find_unused_parameters = False
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("SLM needs one device per process (DataParallel over several GPUs in one process is not "
                             "supported): launch with torchrun or accelerate")
        self.slm_objective = self.slm_args.objective()
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the selected count of the whole step
        if ref_model is not None:
            self.ref_model = _prepare_ref(ref_model, self.args.device)
        elif self.slm_args.uses_reference:  # dft and ESLM's scores need no reference
            cols = getattr(self.train_dataset, "column_names", None)
            if cols is not None and self.slm_args.ref_column not in cols:
                raise ValueError(f"the training dataset has no '{self.slm_args.ref_column}' column (it has "
                                 f"{', '.join(cols)}): attach reference losses with `slm score --hf-out` or "
                                 "selective_lm.columns.score_dataset, or pass ref_model= for online reference losses")
            if cols is not None and self.slm_args.needs_entropy and self.slm_args.entropy_column not in cols:
                raise ValueError(f"score={self.slm_args.score} needs the reference's entropies but the training dataset "
                                 f"has no '{self.slm_args.entropy_column}' column: export the scores with `slm score "
                                 "--hf-out` (with entropies, its default) or pass ref_model=")
        self.slm_metrics = StepMetrics(self.args.device)
        self._slm_step: dict | None = None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.ref_model is None and self._signature_columns is not None:  # remove_unused_columns keeps the scores
            for col in (self.slm_args.ref_column, self.slm_args.entropy_column):
                if col not in self._signature_columns:
                    self._signature_columns = [*self._signature_columns, col]

    # ------------------------------------------------------------------ one optimizer step
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._slm_step = self._plan_step(batches) if batches else None
        return batches, num_items

    def _plan_step(self, batches: list[dict]) -> dict:
        """The step's denominator (selected tokens over all micro-batches and devices) and, for
        selection_scope='step', the masks of every micro-batch; the same on every process."""
        obj = self.slm_objective.at_step(self.state.global_step, self.state.max_steps)  # warm-up, scheduled ratio
        batches = [self._prepare_inputs(b) for b in batches]
        if any("labels" not in b for b in batches):
            raise ValueError("SLM needs 'labels' in every batch: use a data collator that sets them "
                             "(e.g. selective_lm.columns.SLMCollator or DataCollatorForLanguageModeling(mlm=False))")
        self.model.train()  # the Trainer sets train mode only after this: the pre-pass must not depend on it
        targets = [shifted_targets(b["labels"]) for b in batches]
        valids = [self._valid(b, t) for b, t in zip(batches, targets)]
        plan = {"obj": obj, "denom": obj.denominator(valids), "gen": obj.generator(self.state.global_step), "next": 0,
                "masks": None, "excess": [None] * len(batches), "shape": _max_shape(valids)}
        if obj.scope == "step" and len(batches) > 1:  # one micro-batch: the micro-step is the step
            if obj.needs_prepass:
                with torch.no_grad(), self.compute_loss_context_manager():
                    for m, (b, t) in enumerate(zip(batches, targets)):
                        ids, kw = model_inputs(b)
                        tl, ent = self._losses(self.model, ids, t, **kw)
                        plan["excess"][m] = self._score(tl, b, t, valids[m], ent)
            plan["masks"] = select_padded(obj, [e if e is not None else v.float() for e, v in zip(plan["excess"], valids)],
                                          valids, plan["gen"], plan["shape"])
        return plan

    def _valid(self, inputs: dict, targets: torch.Tensor) -> torch.Tensor:
        """Positions with a target (and, for offline scores, a score: a NaN score is no score)."""
        valid = targets != IGNORE_INDEX
        ref = inputs.get(self.slm_args.ref_column) if self.ref_model is None else None
        if ref is not None and ref.shape == inputs["input_ids"].shape:
            valid = valid & ~torch.isnan(ref[:, 1:].to(valid.device))
        return valid

    def _ref(self, inputs: dict, targets: torch.Tensor) -> RefStats:
        entropy = self.slm_args.needs_entropy
        if self.ref_model is not None:
            ids, kw = model_inputs(inputs)
            return online_stats(self.ref_model, ids, targets, entropy, **kw)
        cols = (self.slm_args.ref_column, self.slm_args.entropy_column)[:1 + entropy]
        vals = []
        for col in cols:
            ref = inputs.get(col)
            if ref is None:
                raise ValueError(f"the batch has no '{col}' column: keep it through the data collator "
                                 "(selective_lm.columns.SLMCollator does) or pass ref_model=")
            if ref.shape != inputs["input_ids"].shape:
                raise ValueError(f"'{col}' has shape {tuple(ref.shape)} but input_ids {tuple(inputs['input_ids'].shape)}: "
                                 "the scores must be one per token of the same rows")
            vals.append(shifted_refs(ref.to(targets.device)))
        return RefStats(*vals)

    def _losses(self, model, ids: torch.Tensor, targets: torch.Tensor, sparse: bool = False, **kw):
        """(per-token losses, the model's own entropies for score=model-entropy else None)."""
        if self.slm_args.needs_model_entropy:
            return model_token_losses(model, ids, targets, sparse_backward=sparse, entropy=True, **kw)
        return model_token_losses(model, ids, targets, sparse_backward=sparse, **kw), None

    def _score(self, tl: torch.Tensor, inputs: dict, targets: torch.Tensor, valid: torch.Tensor,
               ent: torch.Tensor | None = None) -> torch.Tensor:
        """The per-token score (slm_args.score; the model's own loss for dft), 0 where not valid."""
        a, own = self.slm_args, tl.detach().float()
        if a.weighting == "dft":
            s = own
        else:
            ref = self._ref(inputs, targets) if a.uses_reference else None
            s = token_score(a.score, own, ref, a.entropy_weight, train_entropy=ent)
        return torch.where(valid, s, torch.zeros_like(s))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        plan = self._slm_step
        if not model.training or plan is None:  # evaluation: the plain CLM loss, comparable across arms
            inputs = {k: v for k, v in inputs.items() if k != self.slm_args.ref_column}
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        obj, m = plan["obj"], plan["next"]
        if m >= len(plan["excess"]):
            raise RuntimeError("compute_loss was called more often than the step has micro-batches")
        plan["next"] += 1
        targets = shifted_targets(inputs["labels"])
        valid = self._valid(inputs, targets)
        ids, kw = model_inputs(inputs)
        tl, ent = self._losses(model, ids, targets, obj.sparse_backward, **kw)
        excess = plan["excess"][m]
        if excess is None and obj.selective:
            excess = self._score(tl, inputs, targets, valid, ent)
        if plan["masks"] is not None:
            mask = plan["masks"][m]
        else:
            mask = select_padded(obj, [excess if excess is not None else valid.float()], [valid], plan["gen"],
                                 plan["shape"])[0]
        loss = obj.loss(tl, mask, plan["denom"])
        self.slm_metrics.add(tl.detach(), valid, mask, excess if obj.uses_reference else None, None)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The metric names of `slm train` (trackers see them as ``train/...`` and ``eval/...``): ``loss`` is the loss
        on every token and ``loss_selected`` the loss on the selected tokens (what the step optimises), ``lr``; an
        evaluation gives ``eval_loss``/``eval_ppl`` and, per named eval dataset, ``eval_NAME/loss``/``/ppl``
        (trackers: ``eval/NAME/loss``). ``trainer.evaluate()`` still returns the Trainer's own keys."""
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):  # a training log (every process)
            v = self.slm_metrics.reduce()
            n_all, n_sel = max(v["n_all"], 1.0), max(v["n_sel"], 1.0)
            logs = {**logs, "loss": v["loss_all"] / n_all, "loss_selected": v["loss_sel"] / n_sel,
                    "selected_fraction": v["n_sel"] / n_all, "excess_mean": v["ex_sum"] / n_all,
                    **({"lr": logs["learning_rate"]} if "learning_rate" in logs else {})}
        else:
            logs = eval_names(logs, self.eval_dataset)
        return super().log(logs, *args, **kwargs)


def eval_names(logs: dict, eval_dataset) -> dict:
    """``eval_NAME_loss`` (the Trainer's key for eval dataset NAME) -> ``eval_NAME/loss``, plus a perplexity per loss."""
    import math

    names = sorted(eval_dataset, key=len, reverse=True) if isinstance(eval_dataset, dict) else []
    out = {}
    for k, v in logs.items():
        name = next((n for n in names if k.startswith(f"eval_{n}_")), None)
        key = f"eval_{name}/{k[len(name) + 6:]}" if name is not None else k
        out[key] = v
        if key.endswith(("/loss", "eval_loss")) and isinstance(v, (int, float)):
            out[key[:-4] + "ppl"] = math.exp(min(v, 50.0))
    return out


class SLMTrainer(SLMTrainerMixin, Trainer):
    """``transformers.Trainer`` training with Selective Language Modeling (see :class:`SLMTrainerMixin`)."""


class SLMLoss:
    """An SLM ``compute_loss_func`` for ``Trainer(compute_loss_func=SLMLoss(ref_model, model))``.

    The Trainer passes the function only (outputs, labels, num_items_in_batch); a forward pre-hook on
    ``model`` keeps the inputs of the current forward for the reference model. Prefer
    :class:`SLMTrainerMixin` where you can subclass: it also takes offline scores and is exact for
    ``selection_scope='step'``.
    """

    def __init__(self, ref_model, model, slm_args: SLMArguments | None = None):
        self.slm_args = slm_args or SLMArguments()
        if self.slm_args.selection_scope != "microstep":
            raise ValueError(f"SLMLoss selects over each micro-batch step; for selection_scope='{self.slm_args.selection_scope}' "
                             "use SLMTrainer")
        a = self.slm_args
        if (a.score, a.weighting, a.ratio_schedule, a.clm_warmup) != ("excess", "hard", "constant", 0.0):
            raise ValueError("SLMLoss ranks by excess loss with hard selection at a constant ratio; for other scores, "
                             "weightings, ratio schedules or a CLM warm-up use SLMTrainer (or SLMTrainerMixin)")
        self.objective = self.slm_args.objective()
        self.ref_model = _prepare_ref(ref_model, next(model.parameters()).device)
        self.calls = 0
        self._inputs: dict | None = None
        self._hook = model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True)

    def _keep_inputs(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._inputs = None if ids is None else {"input_ids": ids, **{k: kwargs[k] for k in FORWARD_KEYS
                                                                     if kwargs.get(k) is not None}}
        self._training = module.training

    def remove(self) -> None:
        """Detach the input hook from the model."""
        self._hook.remove()

    def __call__(self, outputs, labels, num_items_in_batch=None):
        if self._inputs is None:
            raise RuntimeError("SLMLoss saw no forward with input_ids: pass the model being trained as SLMLoss(ref, model)")
        obj = self.objective
        targets = shifted_targets(labels)
        valid = targets != IGNORE_INDEX
        tl = token_losses(outputs.logits[:, :-1], targets)
        if num_items_in_batch is None:
            raise ValueError("SLMLoss needs num_items_in_batch (the Trainer passes it when batches carry labels)")
        k = num_selected(torch.as_tensor(num_items_in_batch).reshape(-1)[0], obj.ratio).clamp(min=1)
        if not self._training:  # evaluation: the plain CLM loss, and no draw of the training generator
            return tl.sum() / torch.as_tensor(num_items_in_batch, dtype=tl.dtype, device=tl.device).reshape(-1)[0]
        ids, kw = model_inputs(self._inputs)
        ref = online_stats(self.ref_model, ids, targets, False, **kw).loss
        excess = torch.where(valid, tl.detach() - ref, torch.zeros_like(ref))
        mask = select_padded(obj, [excess], [valid], obj.generator(self.calls), _max_shape([valid]))[0]
        self.calls += 1
        # the Trainer multiplies by the number of processes and DDP averages: Σ selected / K of the step
        return (tl * mask.to(tl.dtype)).sum() / k.to(tl.device, tl.dtype)
