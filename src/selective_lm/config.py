"""Typed run configurations: dataclasses with a docstring per field, YAML + ``key=value`` overrides.

Every command of the CLI has one dataclass here. A field's docstring (the string literal under
it, as in litgpt) is its ``--help`` text; the machinery that reads them (flags, YAML, overrides,
coercion, saving) is in :mod:`selective_lm.options`. The resolved config is written to every run's
output directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .files import UserError
from .options import (BOS_CHOICES, DOC_SCORES, ENTROPY_SCORES, LR_SCHEDULES, MODEL_SCORES, OBJECTIVES, PARALLEL,
                      RATIO_SCHEDULES, REF_COMBINE, SCOPES, SCORES, STRATEGIES, TEMPERATURE_UNITS, WEIGHTINGS,
                      _check_choice, absolute, add_arguments, apply_overrides, check_data, check_ratio, check_schedule,
                      check_score, check_weighting, dump_yaml, field_docs, first_change, from_args, from_dict, load_yaml,
                      resolve, save_config, to_dict)

__all__ = ["EvalConfig", "ExportConfig", "FilterConfig", "LoraConfig", "PrepareConfig", "ScoreConfig", "TrainConfig", "add_arguments",
           "apply_overrides", "check_ratio", "dump_yaml", "field_docs", "first_change", "from_args", "from_dict",
           "load_yaml", "resolve", "save_config", "to_dict", "BOS_CHOICES", "DOC_SCORES", "ENTROPY_SCORES", "LR_SCHEDULES",
           "MODEL_SCORES", "OBJECTIVES", "PARALLEL", "RATIO_SCHEDULES", "REF_COMBINE", "SCOPES", "SCORES", "STRATEGIES",
           "TEMPERATURE_UNITS", "WEIGHTINGS"]


# --------------------------------------------------------------------------- configs
@dataclass
class PrepareConfig:
    """Turn a corpus into a dataset directory of fixed token windows."""

    inputs: list[str] = field(default_factory=list)
    """Text (.txt/.md), JSONL (.jsonl/.json), Parquet files, directories or globs, or a HF `datasets` dataset saved with save_to_disk. Text and JSONL files may be compressed: .gz, .zst, .bz2, .xz (e.g. data.jsonl.zst)."""
    out: str = ""
    """Output dataset directory."""
    text_field: str = "text"
    """Field holding the document text in JSONL, Parquet and HF datasets."""
    spans_field: str = "spans"
    """Optional JSONL field of provenance spans [[start, end, label], ...] (labels kept per token for diagnostics only)."""
    label_names: list[str] = field(default_factory=list)
    """Names of provenance labels 0, 1, 2, ... in the manifest (default: the embedded corpora's content, noise, offtopic, wrong_solution, near_duplicate, perturbed_table, other_notation)."""
    tokenizer: str | None = None
    """Local HF tokenizer directory to use; when unset a byte-level BPE of `vocab_size` is trained on the inputs."""
    vocab_size: int = 2048
    """Vocabulary size of the trained byte-level BPE (ignored with `tokenizer`)."""
    bos: str = "auto"
    """Start every document with the tokenizer's BOS token: auto (when the tokenizer itself adds one, as Llama-style tokenizers do; never for the trained BPE), true or false."""
    seq_len: int = 128
    """Tokens of context per training window; windows hold seq_len + 1 tokens."""
    val_fraction: float = 0.05
    """Fraction of documents held out for the validation split (chosen by a seeded hash; documents with a `split_field` value keep it)."""
    test_fraction: float = 0.0
    """Fraction of documents held out for the test split (seeded hash, after validation); report final numbers on it, tune on validation."""
    split_field: str = "split"
    """JSONL/Parquet/HF field that names a document's split (train, validation or test) and overrides the hash, e.g. to split by problem rather than by document."""
    context_field: str | None = None
    """Optional JSONL/Parquet/HF field holding context placed before the text (a prompt, a problem statement): the document is that field followed directly by `text_field` (end the context with a separator such as a newline), and its tokens are context only: their targets are ignored in training, scoring, selection and evaluation (provenance label 255, "context"; a span labelled "context" or 255 marks context inside the text)."""
    seed: int = 0
    """Seed for the train/validation/test hash split (and the order the tokenizer's sample visits the input)."""
    num_workers: int = 1
    """Processes that tokenize, each taking whole units of about 64 MiB of input (per rank under torchrun, which also spreads the units over the ranks); 1 = this process. Any number gives the same dataset, byte for byte."""
    tokenizer_sample: int = 200_000_000
    """Characters of train documents the byte-level BPE is trained on (ignored with `tokenizer`): an equal share from every unit of the input, so memory and time stay bounded; 0 = every train document."""
    overwrite: bool = False
    """Replace an existing dataset directory."""
    progress: bool = True
    """Show progress bars (on a terminal only)."""

    def validate(self) -> None:
        if not self.inputs:
            raise UserError("no inputs given: pass --inputs FILE_OR_DIR [...]")
        if not self.out:
            raise UserError("no output directory: pass --out DIR")
        if self.seq_len < 2:
            raise UserError(f"seq_len must be >= 2, got {self.seq_len}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0 or self.val_fraction + self.test_fraction >= 1.0:
            raise UserError(f"test_fraction must be in [0, 1) with val_fraction + test_fraction < 1, got "
                            f"{self.test_fraction} (+ {self.val_fraction})")
        if self.num_workers < 1 or self.tokenizer_sample < 0:
            raise UserError(f"need num_workers >= 1 and tokenizer_sample >= 0, got {self.num_workers} and "
                            f"{self.tokenizer_sample}")
        if self.tokenizer is None and self.vocab_size < 259:
            raise UserError(f"vocab_size must be >= 259 for a byte-level BPE, got {self.vocab_size}")
        self.bos = str(self.bos).lower()  # YAML reads `bos: true` as a bool
        _check_choice("bos", self.bos, BOS_CHOICES)
        if self.bos == "true" and self.tokenizer is None:
            raise UserError("bos=true needs a tokenizer with a BOS token, and the byte-level BPE that prepare trains "
                            "has none: pass tokenizer=DIR (one with a bos_token) or bos=auto")


@dataclass
class ScoreConfig:
    """Score every window of a dataset split with a reference model."""

    data: str = ""
    """Dataset directory made by `slm prepare`, or a Hugging Face dataset of token ids (a save_to_disk directory
    with an input_ids column): then `out` becomes that dataset with a ref_loss column."""
    model: str = ""
    """Reference model: a local HF checkpoint directory (e.g. a run's final/ directory)."""
    out: str = ""
    """Output directory for ref_losses.bin and its manifest (or the scored HF dataset)."""
    split: str = "train"
    """Dataset split to score."""
    batch_size: int = 32
    """Windows per forward pass."""
    entropy: bool = True
    """Also write the reference's per-token predictive entropy (ref_entropy.bin, aligned with the losses; from the same logits), which `slm train` needs for score=entropy and score=excess+entropy. Datasets of token ids from Hugging Face get the ref_loss column only."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    precision: str = "auto"
    """fp32, bf16, or auto (bf16 autocast on GPU, fp32 on CPU)."""
    checks: bool = True
    """After scoring, compare the corpus with the reference's training data and warn, one line each, of n-gram overlap (text the reference memorised) and format mismatch (a token class the reference hardly saw and scores far worse); the figures go to the manifest's `checks`."""
    ref_data: str | None = None
    """The reference's training data for the checks: a dataset directory of `slm prepare` with the corpus's tokenizer (default: the dataset the reference's run trained on, from its slm_meta.json)."""
    base_model: str | None = None
    """The model SLM will train, whose loss minus the reference's is the excess the overlap check reports (default: the checkpoint the reference's run started from; none: the reference loss is reported instead)."""
    check_windows: int = 256
    """Windows of the split, evenly spaced, that the checks look at (0 = all)."""
    hf_out: str | None = None
    """Also write the scored split as a Hugging Face dataset (save_to_disk) with input_ids and ref_loss columns,
    for the HF Trainer integration (selective_lm.hf) and other pipelines."""
    overwrite: bool = False
    """Replace finished scores in `out` (and `hf_out`)."""
    progress: bool = True
    """Show a progress bar (on a terminal only)."""

    def validate(self) -> None:
        for name in ("data", "model", "out"):
            if not getattr(self, name):
                raise UserError(f"missing --{name}")
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        if self.batch_size < 1 or self.check_windows < 0:
            raise UserError(f"batch_size must be >= 1 and check_windows >= 0, got {self.batch_size} and "
                            f"{self.check_windows}")
        self.ref_data, self.base_model = absolute(self.ref_data), absolute(self.base_model)


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT) instead of full-parameter training; r = 0 turns LoRA off."""

    r: int = 0
    """LoRA rank; 0 = full-parameter training."""
    alpha: float = 32.0
    """LoRA alpha; the update is B·A·(alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    targets: list[str] = field(default_factory=lambda: ["all-linear"])
    """Linear modules to adapt: all-linear (every linear layer except the output head, in any architecture) or names as the model calls them (e.g. q_proj,v_proj; c_attn for GPT-2; query_key_value for GPT-NeoX)."""

    def validate(self) -> None:
        if self.r < 0:
            raise UserError(f"lora.r must be > 0 (or 0 to disable LoRA), got {self.r}")


@dataclass
class TrainConfig:
    """Train a causal LM with CLM (all tokens) or SLM (selected tokens)."""

    data: str = ""
    """Dataset directory made by `slm prepare`, or a mixture of several with sampling weights, e.g. ds/web:6,ds/code:3,ds/owm:1 (one tokenizer and seq_len; each step's windows drawn by (data_seed, step); with ref_scores, one scores directory per dataset in this order)."""
    eval_data: list[str] | None = None
    """Named datasets evaluated (validation split, eval_windows each) at every evaluation besides data's own validation, logged as eval/NAME/loss and /ppl, e.g. target=ds/hq,web=ds/owm: the target domain the run is meant to improve."""
    out: str = ""
    """Run directory (checkpoints, metrics.jsonl, config.yaml, final/)."""
    model: str = "tiny"
    """Preset name (tiny, small, 125m, tinyllama-1.1b) for a fresh model, or a local HF checkpoint directory to continue from."""
    objective: str = "clm"
    """clm: loss on every token; slm: loss on the selected tokens only."""
    strategy: str = "topk"
    """SLM selection: topk (highest excess loss), random (uniform, the control), stochastic (sampled ∝ exp(excess / temperature))."""
    ratio: float = 0.6
    """Fraction of the batch's valid tokens selected by SLM, in (0, 1]."""
    temperature: float = 1.0
    """Temperature τ of stochastic selection (sampling ∝ exp(excess / τ)), in `temperature_unit`s."""
    temperature_unit: str = "std"
    """std: τ (and weight_temperature) is in units of the standard deviation of the selection set's excess losses (τ = 1 keeps the same sharpness whatever the loss scale; the raw-nats τ = 1 of earlier versions overlapped top-k by ~90%); nats: τ in raw nats."""
    weighting: str = "hard"
    """SLM token weights: hard (a 0/1 mask from `strategy`, the paper); soft (w = min(1, c·exp(excess / weight_temperature)) over the selection set, c chosen so the mean weight over its valid tokens is exactly `ratio`: top-k's token budget, with weights capped at 1 and the surplus spread over the rest; strategy topk only); dft (reference-free control, Dynamic Fine-Tuning as published and in TRL: w = p = exp(−loss), the model's own detached probability of the target, over CLM's denominator, i.e. the mean of p·loss over the valid tokens; needs no ref_scores/ref_model (any given are not used) and ignores ratio). The loss is Σ w·loss / (the step's selected count, ratio × its valid tokens for soft, its valid tokens for dft); loss_selected logs Σ w·loss / Σ w and selected_fraction the mean weight (for dft: the mean probability of the targets)."""
    weight_temperature: float = 1.0
    """Temperature of soft weighting, in `temperature_unit`s (std: units of the selection set's excess std): → 0 gives the top-k mask, large values give every token the weight `ratio`."""
    ratio_schedule: str = "constant"
    """How the SLM ratio moves over training: constant (`ratio` throughout), linear or cosine (half a cosine) from `ratio` at the first selective step to `ratio_end` at the last; a pure function of (step, total steps). The current ratio is logged as `ratio` in metrics.jsonl."""
    ratio_end: float | None = None
    """Ratio of the last optimizer step for ratio_schedule linear/cosine, in (0, 1] (required by them, refused with constant)."""
    clm_warmup: float = 0.0
    """Fraction of the optimizer steps, in [0, 1), trained as plain CLM (every token, no reference) before selection starts: the first round(clm_warmup × steps) steps (at most all but one); the ratio schedule starts after them. Logged ratio 1 during the warm-up."""
    keep_labels: list[int] | None = None
    """Train only on target tokens whose provenance label (from `slm prepare` spans) is in this list, e.g. [0] = content only: the oracle noise-filtering control. Needs a dataset with provenance."""
    save_selection: bool = False
    """Save the tokens every optimizer step selects (one bit per target, with the step's windows) to out/selection/, for `slm analyze selection --runs RUN`: what training selected, per provenance label and token class. Costs seq_len / 8 bytes per window trained on; weighting=hard only."""
    holdout_fraction: float = 0.0
    """Share of the train windows, in [0, 1), held out by a seeded draw (holdout_seed) for a self-reference: holdout=only trains on that share (the reference), holdout=exclude on the rest (the run it scores), so no window is in both. 0 = every window."""
    holdout: str = "exclude"
    """Which side of holdout_fraction to train on: exclude (the windows outside the held-out share) or only (the held-out share alone)."""
    holdout_seed: int = 0
    """Seed of the held-out draw: the self-reference and the run it scores must use the same fraction and seed."""
    selection_scope: str = "microstep"
    """Tokens SLM ranks together: microstep (each micro-batch step, jointly over all ranks: N ranks × batch B select as 1 rank × N·B), step (every micro-batch and rank of the optimizer step, as in one big batch; costs one extra no-grad forward) or sequence (each window alone: round(ratio × its valid tokens), at least 1, as the public SLM code of open_lm, rho-1-reproduce and nanoGPT forks does; soft weights get ratio × the window's valid tokens each)."""
    ref_scores: list[str] | None = None
    """Directory made by `slm score` on this dataset's train split (offline reference losses, the default for SLM); several directories (comma-separated, or a YAML list) are several references, combined per token by ref_combine, each scored on this dataset's train split whatever the reference model's size."""
    ref_model: str | None = None
    """Reference model directory for online reference losses (and entropies when the score needs them), computed under no_grad in the same step."""
    score: str = "excess"
    """Per-token score SLM ranks by, higher selected first: excess (training loss − reference loss, the paper's), reference (−reference loss: what the reference predicts well), entropy (−the reference's predictive entropy: where the reference is confident), excess+entropy (excess − entropy_weight × reference entropy), self (excess against a self-reference, a model continued from the same base on a held-out part of this corpus: needs ref_scores, and the run records the reference as self-trained); loss and model-entropy (ESLM, reference-free: the training model's own loss or predictive entropy, so the top `ratio` are the tokens at or above the value-at-risk of that score at level 1 − ratio; no ref_scores/ref_model). The entropy scores need `slm score` entropies (its default) or ref_model."""
    entropy_weight: float = 1.0
    """λ ≥ 0 of score=excess+entropy (score = L − L_ref − λ·H_ref, all in nats); the other scores ignore it."""
    ref_combine: str = "mean"
    """How several ref_scores combine per token, reference loss and entropy alike: min (the lowest: the most favourable reference for each token), mean, or weighted (the ref_weights-weighted mean)."""
    ref_weights: list[float] | None = None
    """One weight ≥ 0 per ref_scores directory, in the same order, for ref_combine=weighted (normalised to sum 1)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings (lora.r=16 lora.alpha=32 enables it)."""
    batch_size: int = 16
    """Windows per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_steps: int = 0
    """Optimizer steps; 0 derives them from max_tokens."""
    max_tokens: int = 0
    """Token budget (target tokens seen); used when max_steps is 0; 0 means `epochs` passes over the train windows."""
    epochs: float = 1.0
    """Passes over the train windows when max_steps and max_tokens are 0 (e.g. 3 for a reference on the HQ data)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    lr_schedule: str = "cosine"
    """Learning rate after the warm-up: cosine (to min_lr_ratio × lr at the last step), wsd (warmup-stable-decay: lr until the last decay_fraction of the steps, then linear to min_lr_ratio × lr) or constant (lr to the end)."""
    decay_fraction: float = 0.1
    """wsd: share of the optimizer steps, in (0, 1], of the final linear decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine and wsd schedules as a fraction of lr."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (matrices only; norms and biases get none)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    seed: int = 0
    """Seed for initialisation and for random/stochastic selection."""
    data_seed: int = 0
    """Seed of the window order (keep it equal across arms so they see the same windows in the same order)."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    precision: str = "auto"
    """fp32, bf16, or auto (bf16 autocast on GPU, fp32 on CPU)."""
    compile: bool = False
    """torch.compile the model."""
    parallel: str = "ddp"
    """Under torchrun: ddp (a replica per rank; models that fit on one device) or fsdp (FSDP2: each decoder block, then the root, sharded over the ranks; bf16 parameters on GPU)."""
    activation_checkpointing: bool = False
    """Recompute each decoder block's activations in backward: less memory for about one more forward of compute."""
    log_every: int = 10
    """Steps between metric lines: the loop syncs with the host there (and, for hard SLM with ratio < 1, once per micro-batch in the output head's backward)."""
    eval_every: int = 0
    """Steps between validation evaluations; 0 = only at the end."""
    eval_windows: int = 64
    """Validation windows used by periodic evaluation (0 = all)."""
    ckpt_every: int = 0
    """Steps between checkpoints; 0 = only the final one."""
    ckpt_minutes: float = 15.0
    """Also save a resumable checkpoint when this many minutes passed since the last one (checked at log steps; it replaces the previous such checkpoint once ckpt_keep_states newer ones exist); 0 = off."""
    ckpt_keep_states: int = 2
    """The newest checkpoints that keep the training state a resume needs (older ones keep their weights only): with 2, a damaged newest checkpoint costs one interval, not the run. At least 1."""
    max_nonfinite_steps: int = 0
    """Optimizer steps with a non-finite loss or gradient norm that are skipped (weights and optimizer state left unchanged) before the run stops; 0 stops at the first one."""
    resume: bool = False
    """Continue from the latest checkpoint in `out` (the config must be unchanged)."""
    overwrite: bool = False
    """Replace a finished run in `out`."""
    progress: bool = True
    """Show a progress bar (on a terminal; elsewhere a plain line per log step)."""
    report_to: list[str] = field(default_factory=list)
    """Trackers that also get every metrics.jsonl row: tensorboard (out/tensorboard), wandb (offline unless logged in or WANDB_MODE says otherwise), trackio; none (the default) = metrics.jsonl only. Each needs its extra, e.g. pip install 'selective-lm[tensorboard]'."""

    def __post_init__(self) -> None:
        if isinstance(self.ref_scores, (str, os.PathLike)):  # one directory, as Python callers pass it
            self.ref_scores = [os.fspath(self.ref_scores)]

    def validate(self) -> None:
        from .tracking import trackers

        self.report_to = trackers(self.report_to)
        if not self.data:
            raise UserError("missing --data: pass a dataset directory made by `slm prepare`")
        if not self.out:
            raise UserError("missing --out: pass a run directory")
        # absolute paths: a run resumes the same whether it was named relatively or absolutely
        check_data(self)
        self.out = absolute(self.out)
        if self.ref_scores is not None:
            self.ref_scores = [absolute(p) for p in self.ref_scores] or None
        self.ref_model = absolute(self.ref_model)
        if Path(self.model).expanduser().exists():  # a checkpoint directory (not a preset name)
            self.model = absolute(self.model)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("selection_scope", self.selection_scope, SCOPES)
        _check_choice("parallel", self.parallel, PARALLEL)
        if self.parallel == "fsdp" and self.lora.r > 0:
            raise UserError("parallel=fsdp with LoRA is not supported: use parallel=ddp (the adapters are small "
                            "enough to replicate)")
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        check_ratio(self.ratio)
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        _check_choice("temperature_unit", self.temperature_unit, TEMPERATURE_UNITS)
        check_weighting(self)
        if self.keep_labels is not None and (not self.keep_labels or not all(
                isinstance(x, int) and 0 <= x < 256 for x in self.keep_labels)):
            raise UserError(f"keep_labels must be a non-empty list of provenance labels 0..255, got {self.keep_labels!r}")
        if self.save_selection and self.objective == "slm" and self.weighting != "hard":
            raise UserError(f"save_selection saves 0/1 masks, but weighting={self.weighting} gives weights: use "
                            "weighting=hard or drop save_selection")
        _check_choice("holdout", self.holdout, ("exclude", "only"))
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise UserError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}: e.g. 0.2 holds out 20% "
                            "of the train windows for a self-reference")
        if self.holdout == "only" and self.holdout_fraction == 0:
            raise UserError("holdout=only trains on the held-out share: set holdout_fraction > 0 (e.g. 0.2)")
        self.lora.validate()
        if self.lora.r == 0:  # LoRA off: its other keys mean nothing (a run saved with other ones resumes)
            self.lora = LoraConfig()
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0:
            raise UserError(f"epochs must be > 0, got {self.epochs}")
        for name in ("max_steps", "max_tokens", "warmup_steps", "eval_every", "ckpt_every", "eval_windows",
                     "ckpt_minutes", "max_nonfinite_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"lr must be > 0, got {self.lr}: pick e.g. 3e-4")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        check_schedule(self)
        for name in ("log_every", "ckpt_keep_states"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ref_scores and self.ref_model:
            raise UserError("pass only one of ref_scores and ref_model")
        check_score(self)

@dataclass
class EvalConfig:
    """Perplexity on validation sets, optional per-token loss dumps and few-shot accuracy."""

    model: str = ""
    """Model: a local HF checkpoint directory (full or LoRA adapter)."""
    data: list[str] = field(default_factory=list)
    """One or more dataset directories; each is evaluated on `split`."""
    split: str = "validation"
    """Dataset split."""
    max_windows: int = 0
    """Evaluate at most this many windows per dataset (0 = all)."""
    batch_size: int = 32
    """Windows per forward pass."""
    dump: str | None = None
    """Directory for per-token loss dumps (float16 memmaps aligned with the targets)."""
    fewshot: str | None = None
    """JSONL of held-out questions {question, answer} for few-shot exact match."""
    exemplars: str | None = None
    """JSONL of few-shot exemplars {question, solution, answer}."""
    shots: int = 4
    """Exemplars per few-shot prompt."""
    fewshot_limit: int = 0
    """Evaluate at most this many questions (0 = all)."""
    max_new_tokens: int = 48
    """Greedy decoding length for few-shot answers."""
    lm_eval: list[str] = field(default_factory=list)
    """lm-evaluation-harness tasks to run on the model (comma list; needs pip install 'selective-lm[eval]'); slm_fewshot is the --fewshot questions with the --exemplars prompts as an lm-eval task."""
    lm_eval_tasks_dir: str | None = None
    """Directory of extra lm-eval task YAMLs (lm-eval's --include_path); slm_fewshot is written there, so `lm_eval --include_path DIR --tasks slm_fewshot` runs it later (default: a temporary directory)."""
    lm_eval_limit: int = 0
    """Evaluate at most this many examples per lm-eval task (0 = all)."""
    out: str | None = None
    """Write the metrics JSON here (printed in any case)."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    precision: str = "auto"
    """fp32, bf16, or auto."""
    progress: bool = True
    """Show progress bars (on a terminal only)."""

    def validate(self) -> None:
        if not self.model:
            raise UserError("missing --model: pass a checkpoint directory")
        if not self.data and not self.fewshot and not self.lm_eval:
            raise UserError("nothing to evaluate: pass --data DIR [...], --fewshot FILE and/or --lm-eval TASKS")
        if "slm_fewshot" in self.lm_eval and not self.fewshot:
            raise UserError("lm-eval task slm_fewshot needs the questions: pass --fewshot FILE (and --exemplars FILE)")
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        for name in ("shots", "max_windows", "fewshot_limit", "lm_eval_limit"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ExportConfig:
    """A run's final weights as a plain Hugging Face directory (no selective-lm or PEFT needed to load it)."""

    run: str = ""
    """Run directory (its final/ is exported) or a checkpoint directory."""
    out: str = ""
    """Output directory: config.json, weights, tokenizer (AutoModelForCausalLM/AutoTokenizer.from_pretrained)."""
    merge: bool = False
    """Merge a LoRA adapter into its base (required for LoRA runs: the output is one plain model)."""
    overwrite: bool = False
    """Replace an earlier `slm export` output in `out`."""

    def validate(self) -> None:
        if not self.run or not self.out:
            raise UserError("pass --run RUN_DIR and --out DIR")
        self.run, self.out = absolute(self.run), absolute(self.out)


@dataclass
class FilterConfig:
    """Score whole documents from token scores and write the kept documents (JSONL or Parquet) for any trainer."""

    data: str = ""
    """Dataset directory made by `slm prepare`."""
    ref_scores: str = ""
    """Directory made by `slm score` on this dataset's `split`."""
    inputs: list[str] = field(default_factory=list)
    """The inputs given to `slm prepare`, in the same order (checked against the dataset's source sha256s); the kept documents are copied from them."""
    out: str = ""
    """Output directory: kept.jsonl or kept.parquet, then manifest.json (written last)."""
    model: str | None = None
    """Training-model checkpoint: its per-token loss minus the reference loss is the excess loss (needed by mean_excess and selected_share; one forward pass over the split)."""
    split: str = "train"
    """Dataset split whose documents are filtered."""
    doc_score: str = "ref_loss"
    """Document score over its scored tokens: ref_loss (mean reference loss, lower is kept), mean_excess (mean model − reference loss, higher is kept; needs model), selected_share (share of its tokens in the split's top `ratio` by excess loss, higher is kept; needs model), ref_entropy (mean reference entropy, lower is kept; needs scores with entropies)."""
    ratio: float = 0.6
    """selected_share: fraction of all scored tokens of the split selected by excess loss (as SLM's ratio)."""
    keep_fraction: float | None = None
    """Keep the best-scoring fraction of the scored documents, in (0, 1] (see keep_by); one of keep_fraction and threshold."""
    keep_by: str = "documents"
    """What keep_fraction counts: documents (round(F × scored documents) best ones) or tokens (the fewest best documents holding at least F of the scored tokens)."""
    threshold: float | None = None
    """Keep the documents whose score is at least as good as this value (<= for ref_loss and ref_entropy, >= for mean_excess and selected_share)."""
    min_tokens: int = 8
    """Documents with fewer scored tokens (short ones, the one cut by the split's dropped tail, those wholly in it) get no score (null) and follow `unscored`."""
    unscored: str = "drop"
    """What happens to unscored documents: drop or keep (with slm_doc_score null). They are counted in the manifest either way."""
    format: str = "jsonl"
    """Output format: jsonl (kept.jsonl) or parquet (kept.parquet). Rows keep all their fields plus slm_doc_score."""
    verify_documents: int = 64
    """Documents re-tokenised and compared token for token with the windows (evenly spaced, plus the one cut by the tail); -1 = all, 0 = none."""
    batch_size: int = 32
    """Windows per forward pass of `model`."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    precision: str = "auto"
    """fp32, bf16, or auto (bf16 autocast on GPU, fp32 on CPU)."""
    overwrite: bool = False
    """Replace an earlier `slm filter` output in `out`."""
    progress: bool = True
    """Show progress bars (on a terminal only)."""

    def validate(self) -> None:
        for name in ("data", "ref_scores", "out"):
            if not getattr(self, name):
                raise UserError(f"missing --{name.replace('_', '-')}")
        if not self.inputs:
            raise UserError("missing --inputs: pass the files given to `slm prepare`, in the same order")
        self.data, self.ref_scores, self.out, self.model = (absolute(self.data), absolute(self.ref_scores),
                                                            absolute(self.out), absolute(self.model))
        _check_choice("doc_score", self.doc_score, DOC_SCORES)
        _check_choice("keep_by", self.keep_by, ("documents", "tokens"))
        _check_choice("unscored", self.unscored, ("drop", "keep"))
        _check_choice("format", self.format, ("jsonl", "parquet"))
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("precision", self.precision, ("auto", "fp32", "bf16"))
        check_ratio(self.ratio)
        if self.doc_score in ("mean_excess", "selected_share") and not self.model:
            raise UserError(f"doc_score {self.doc_score} needs the excess loss: pass --model DIR (a training-model "
                            "checkpoint), or use doc_score=ref_loss")
        if (self.keep_fraction is None) == (self.threshold is None):
            raise UserError("pass exactly one of --keep-fraction F (e.g. 0.5) and --threshold X")
        if self.keep_fraction is not None:
            check_ratio(self.keep_fraction, "keep_fraction")
        if self.min_tokens < 1 or self.batch_size < 1 or self.verify_documents < -1:
            raise UserError(f"need min_tokens >= 1, batch_size >= 1 and verify_documents >= -1, got {self.min_tokens}, "
                            f"{self.batch_size} and {self.verify_documents}")
