"""The study's configuration: every budget and choice of `slm study`, with why in configs/study-default.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import LoraConfig, check_ratio
from ..files import UserError

STRATEGY_NAMES = ("topk", "random", "stochastic")
BASELINE_NAMES = ("hq", "content")
# Token-selection variants (the `variants` study section): each is one arm per seed, top-k at variant_ratio,
# compared with top-k at that ratio and with CLM. name -> what the arm changes against plain top-k SLM.
VARIANTS = {
    "reference": "score = −reference loss (what the reference predicts well; no training loss)",
    "entropy": "score = −reference entropy (where the reference is confident)",
    "excess+entropy": "score = excess − λ·reference entropy (the later paper's entropy-augmented score)",
    "self": "excess against a self-reference: the base continued on a held-out share of the web corpus "
            "(no HQ data); the arm trains on the other windows",
    "soft": "soft weights w = min(1, c·exp(excess/(τ·std))) with mean weight = ratio, instead of a hard top-k",
    "dft": "reference-free control: DFT as published, loss = mean of sg(p)·L with p = exp(−L), every token",
    "sequence": "top-k within each window (selection_scope=sequence, as the public SLM code does), not over the batch",
    "eslm-loss": "ESLM, reference-free: top-k of the model's own loss (above its batch VaR at 1 − ratio: CVaR)",
    "eslm-entropy": "ESLM, reference-free: top-k of the model's own predictive entropy",
    "warmup": "plain CLM for the first variant_warmup of the steps, then top-k",
    "schedule": "ratio from 1 (every token) down to the ratio, linearly over training",
}
VARIANT_KEYS = ("variant_ratio", "self_fraction", "variant_warmup", "entropy_weight")
# variants that take a setting as `name:value` (e.g. excess+entropy:0.3), to compare several in one study:
# name -> (what the value is, lowest allowed, highest allowed or None, lowest excluded)
VARIANT_SETTINGS = {"excess+entropy": ("λ", 0.0, None, False), "warmup": ("CLM warm-up fraction", 0.0, 1.0, False),
                    "soft": ("weight temperature τ", 0.0, None, True)}


def parse_variant(spec: str) -> tuple[str, float | None]:
    """`name` or `name:value` -> (name, value or None); UserError names the problem and the fix."""
    name, sep, value = str(spec).partition(":")
    if name not in VARIANTS:
        raise UserError(f"unknown variant '{name}' in variants: choose from {', '.join(VARIANTS)}")
    if not sep:
        return name, None
    if name not in VARIANT_SETTINGS:
        raise UserError(f"variant '{name}' takes no setting (got '{spec}'): settings exist for "
                        f"{', '.join(f'{k}:<{v[0]}>' for k, v in VARIANT_SETTINGS.items())}")
    what, lo, hi, open_lo = VARIANT_SETTINGS[name]
    try:
        x = float(value)
    except ValueError:
        raise UserError(f"variant '{spec}': '{value}' is not a number (the {what})") from None
    if x < lo or (open_lo and x == lo) or (hi is not None and x >= hi):
        bounds = f"{'(' if open_lo else '['}{lo:g}, {hi:g})" if hi is not None else f"{'>' if open_lo else '>='} {lo:g}"
        raise UserError(f"variant '{spec}': the {what} must be {'in ' if hi is not None else ''}{bounds}")
    return name, x


def describe_variant(spec: str) -> str:
    name, x = parse_variant(spec)
    return VARIANTS[name] + (f" ({VARIANT_SETTINGS[name][0]} = {x:g})" if x is not None else "")
CORPUS_FILES = ("hq_math.jsonl", "web_math.jsonl", "prose.jsonl", "fewshot_eval.jsonl", "fewshot_exemplars.jsonl")
# Keys that may change between invocations on the same study directory.
FREE_KEYS = {"out", "overwrite", "progress", "seeds", "device", "quick"}

# `--quick`: the same stages and report sections on a small budget (45 s measured; used by the end-to-end test).
QUICK = dict(corpora_scale=0.12, base_tokens=120_000, reference_epochs=1.0, cpt_tokens=40_000,
             ratios=[0.6], checkpoints=3, fewshot_checkpoints=2, eval_windows_target=24, eval_windows_noisy=24,
             fewshot_questions=48, fewshot_external=48, batch_size=8, warmup_steps=3)


@dataclass
class StudyConfig:
    """Rho-1's experiment: base → reference → score → CLM and SLM arms → evaluation → report."""

    out: str = "slm-study"
    """Study directory (every stage is cached there)."""
    quick: bool = False
    """Smaller budgets with the same stages and report sections (45 s on 2 CPU cores, measured 2026-11-25)."""
    corpora: str | None = None
    """Directory with hq_math.jsonl, web_math.jsonl, prose.jsonl, fewshot_eval.jsonl and fewshot_exemplars.jsonl; unset = the embedded default, generated into out/corpora."""
    corpora_scale: float = 1.0
    """Size of the embedded default corpora (1.0 ≈ 1.5M chars of HQ math, 5M of noisy web math, 3M of prose)."""
    corpora_seed: int = 0
    """Seed of the embedded default corpora."""
    model: str = "tiny"
    """Preset for the base model (pretrained on prose here), or a local HF checkpoint used as the base directly."""
    tokenizer: str | None = None
    """Local tokenizer directory; default: the checkpoint's own tokenizer, or a byte-level BPE trained on the corpora."""
    vocab_size: int = 2048
    """Vocabulary of the trained tokenizer."""
    seq_len: int = 256
    """Window length in tokens (few-shot prompts must fit in it)."""
    batch_size: int = 16
    """Windows per optimizer step in every training stage."""
    base_tokens: int = 1_200_000
    """Base pretraining budget on general prose (tokens)."""
    base_lr: float = 3e-3
    """Base pretraining peak learning rate."""
    reference_epochs: float = 2.5
    """Reference training epochs over the high-quality math corpus (continued from the base)."""
    reference_lr: float = 4e-3
    """Reference peak learning rate."""
    cpt_tokens: int = 450_000
    """Continual-pretraining budget of every arm (tokens seen, selected or not)."""
    cpt_lr: float = 6e-3
    """Continual-pretraining peak learning rate (the same for every arm)."""
    warmup_steps: int = 10
    """Warmup steps of every training stage."""
    strategies: list[str] = field(default_factory=lambda: list(STRATEGY_NAMES))
    """SLM selection strategies to run."""
    ratios: list[float] = field(default_factory=lambda: [0.6, 0.3])
    """SLM token ratios (the paper used 0.6–0.7)."""
    temperature: float = 1.0
    """Temperature τ of stochastic selection, in units of the selection set's excess-loss std (temperature_unit)."""
    temperature_unit: str = "std"
    """std (τ relative to the excess spread, scale-free) or nats (raw τ, as in earlier versions)."""
    baselines: list[str] = field(default_factory=lambda: list(BASELINE_NAMES))
    """Baselines beside CLM: hq (CLM continued on the HQ math alone, same budget) and content (CLM on the same noisy windows with the loss on content tokens only: pure noise filtering)."""
    variants: list[str] = field(default_factory=list)
    """Token-selection variants run as extra arms, each top-k at variant_ratio against top-k at that ratio and CLM (off by default; configs/study-variants.yaml turns them on): reference, entropy, excess+entropy, self, soft, dft, sequence, eslm-loss, eslm-entropy, warmup, schedule. excess+entropy:λ, warmup:fraction and soft:τ set that variant's value (several of one variant compare settings; the report marks the best on validation). Adding variants to a finished study directory runs only the new arms."""
    variant_ratio: float | None = None
    """Token ratio of the variant arms; default: the first of `ratios` (top-k at this ratio is their baseline)."""
    self_fraction: float = 0.2
    """Share of the web-math train windows held out to train the self-reference (continued from the base for reference_epochs over them); the self arm trains on the rest."""
    variant_warmup: float = 0.25
    """CLM warm-up fraction of the warmup variant."""
    entropy_weight: float = 1.0
    """λ of the excess+entropy variant (nats per nat of entropy)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of whole pipelines (each: corpus sample corpora_seed+seed, base, reference, arms, data order, selection draws); a claim is tested only with >= 3, e.g. 0,1,2."""
    lora: LoraConfig | None = None
    """Train every arm with LoRA, e.g. {r: 16, alpha: 32}; unset = full-parameter."""
    checkpoints: int = 10
    """Evaluated checkpoints per arm (evenly spaced; the base is checkpoint 0): the loss and data-efficiency curves."""
    eval_windows_target: int = 64
    """Target-domain (HQ math) test windows evaluated at every checkpoint (and validation windows at the last, for tuning)."""
    eval_windows_noisy: int = 64
    """Noisy web-math test windows evaluated at every checkpoint (token dynamics, selection analyses)."""
    fewshot_questions: int = 200
    """Test-split questions of our own generator for few-shot exact match (greedy)."""
    fewshot_external: int = 200
    """Questions from the external generator (reasoning-gym, pinned) for few-shot exact match; 0 = none."""
    fewshot_checkpoints: int = 5
    """Checkpoints per arm (evenly spaced, always the last) where few-shot accuracy is measured; generation is the costly part of evaluation."""
    shots: int = 2
    """Few-shot exemplars per prompt."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    overwrite: bool = False
    """Delete the study directory's stages and start over."""
    progress: bool = True
    """Progress bars inside stages."""

    @staticmethod
    def base_values(values: dict) -> dict:
        """The defaults under what the user gave: QUICK's budgets when quick is true (--quick, quick=true or
        `quick: true` in YAML alike)."""
        quick = values.get("quick", False)
        if isinstance(quick, str):
            quick = quick.strip().lower() in ("true", "1", "yes")
        return dict(QUICK) if quick is True or quick == 1 else {}

    def validate(self) -> None:
        for r in self.ratios:
            check_ratio(r, "ratios")
        if not self.ratios or not self.seeds:
            raise UserError("ratios and seeds must not be empty")
        for s in self.strategies:
            if s not in STRATEGY_NAMES:
                raise UserError(f"unknown strategy '{s}' in strategies: choose from {', '.join(STRATEGY_NAMES)}")
        for b in self.baselines:
            if b not in BASELINE_NAMES:
                raise UserError(f"unknown baseline '{b}' in baselines: choose from {', '.join(BASELINE_NAMES)}")
        self.variants = [str(v) for v in self.variants]
        for v in self.variants:
            parse_variant(v)
        if len(set(self.variants)) != len(self.variants):
            raise UserError(f"variants must be distinct, got {self.variants}")
        if self.variants:
            if self.variant_ratio is None:
                self.variant_ratio = self.ratios[0]
            check_ratio(self.variant_ratio, "variant_ratio")
            if "topk" not in self.strategies or float(self.variant_ratio) not in [float(r) for r in self.ratios]:
                raise UserError(f"the variants are compared with top-k at variant_ratio {self.variant_ratio:g}: keep "
                                "topk in strategies and variant_ratio in ratios")
        if not 0 < self.self_fraction < 1:
            raise UserError(f"self_fraction must be in (0, 1), got {self.self_fraction}")
        if not 0 <= self.variant_warmup < 1:
            raise UserError(f"variant_warmup must be in [0, 1), got {self.variant_warmup}")
        if not self.entropy_weight >= 0:
            raise UserError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.temperature_unit not in ("std", "nats"):
            raise UserError(f"unknown temperature_unit '{self.temperature_unit}': choose one of std, nats")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct, got {self.seeds}")
        if self.lora is not None:
            if self.lora.r <= 0:
                raise UserError(f"lora.r must be > 0, got {self.lora.r} (drop `lora` for full-parameter training)")
        if self.corpora is not None:
            for f in CORPUS_FILES:
                if not (Path(self.corpora) / f).is_file():
                    raise UserError(f"corpus file missing: {Path(self.corpora) / f} (corpora must hold {', '.join(CORPUS_FILES)})")
        if self.tokenizer is not None and not (Path(self.tokenizer) / "tokenizer.json").is_file():
            raise UserError(f"tokenizer not found: {self.tokenizer}/tokenizer.json")
        for name in ("base_tokens", "cpt_tokens", "batch_size", "checkpoints", "seq_len", "fewshot_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reference_epochs <= 0:
            raise UserError(f"reference_epochs must be > 0, got {self.reference_epochs}")
        self._check_model()

    def _check_model(self) -> None:
        from ..model import PRESETS, checkpoint_vocab, is_checkpoint

        if self.model in PRESETS:
            return
        if not is_checkpoint(self.model):
            raise UserError(f"model '{self.model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
        vocab, _ = checkpoint_vocab(self.model)
        tok = self.tokenizer or (self.model if (Path(self.model) / "tokenizer.json").is_file() else None)
        if tok is None:
            raise UserError(f"checkpoint {self.model} has no tokenizer: pass tokenizer=DIR with the tokenizer it was trained with")
        from ..data import load_tokenizer

        n = len(load_tokenizer(tok))
        if n > vocab or (self.tokenizer and n != vocab):
            raise UserError(f"checkpoint {self.model} has vocabulary {vocab} but tokenizer {tok} has {n} tokens: "
                            "use the checkpoint's own tokenizer")


