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
CORPUS_KINDS = ("default", "champ")
# Keys that may change between invocations on the same study directory.
FREE_KEYS = {"out", "overwrite", "progress", "seeds", "device", "quick"}

# `--quick`: the same stages and report sections on a small budget: a smoke test of the pipeline, whose
# numbers mean nothing (the report says so).
# --quick: a smoke test of every stage and report section (two seeds: its verdicts say "not tested"), under 2 minutes
QUICK = dict(prose_scale=0.08, base_tokens=40_000, cpt_tokens=24_576, hq_ratio=0.25, hq_sweep=[0.5],
             reference_epochs=1.0, ratios=[0.6], strategies=["topk", "random"], baselines=["hq"], checkpoints=2,
             eval_windows_target=8, eval_windows_noisy=8, mc_questions=16, fewshot_questions=8,
             fewshot_external=8, batch_size=8, warmup_steps=2, seeds=[0, 1])


def ratio_label(r: float) -> str:
    """An HQ : budget ratio as people write it: 0.1 -> "1:10", 0.0333 -> "1:30", 1 -> "1:1", 0.4 -> "0.4:1"."""
    r = float(r)
    n = 1 / r if r > 0 else float("inf")
    return f"1:{round(n)}" if r > 0 and abs(n - round(n)) <= 0.02 * n else f"{r:g}:1"


def ratio_slug(r: float) -> str:
    """A path-safe name for an HQ : budget ratio ("1in10", "0.4in1")."""
    return ratio_label(r).replace(":", "in")


@dataclass
class StudyConfig:
    """Rho-1's experiment in the paper's regime: base → reference on scarce HQ data → score → CLM, HQ-only and SLM arms → evaluation → report."""

    out: str = "slm-study"
    """Study directory (every stage is cached there)."""
    quick: bool = False
    """A smoke test: the same stages and report sections on a tiny budget and two seeds (under two minutes on 2 CPU cores); its numbers mean nothing and its verdicts say 'not tested'."""
    corpus: str = "default"
    """The corpora: default (the embedded synthetic math and web text, generated per seed) or champ (real text from the champ-dataset package: human solutions as the HQ corpus, LLM solutions as the noisy one)."""
    corpora: str | None = None
    """Directory with hq_math.jsonl, web_math.jsonl, prose.jsonl, fewshot_eval.jsonl and fewshot_exemplars.jsonl used by every seed instead of generated corpora."""
    corpora_seed: int = 0
    """Seed of the generated corpora (seed s samples corpora_seed + s); it also keys the problem split, which every seed shares."""
    prose_scale: float = 1.0
    """Size of the prose corpus the base is pretrained on (1.0 ≈ 3M characters)."""
    hq_scale: float | None = None
    """Size of the generated HQ math corpus (1.0 ≈ 3400 documents, 1.5M characters); unset = just enough train text for the largest HQ : budget ratio (hq_ratio, hq_sweep)."""
    web_scale: float | None = None
    """Size of the generated noisy web-math corpus (1.0 ≈ 4450 pages, 5M characters); unset = just enough train text that no arm repeats a window."""
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
    share_base: bool = True
    """Train one tokenizer and one base (on the first seed's prose) for every seed; false = each seed trains its own (a seed is then a whole pipeline)."""
    base_tokens: int = 600_000
    """Base pretraining budget on general prose (tokens)."""
    base_lr: float = 3e-3
    """Base pretraining peak learning rate."""
    hq_ratio: float = 0.1
    """HQ train tokens the reference trains on (and the HQ-only arm repeats), as a share of cpt_tokens: 0.1 = 1:10. The paper had 0.5B HQ tokens against 15B of continual pretraining, about 1:30."""
    hq_sweep: list[float] = field(default_factory=lambda: [1 / 30])
    """Further HQ : budget ratios (besides hq_ratio) for the HQ-size sweep: per ratio and seed a reference on that much HQ data, its scores, an HQ-only arm and a top-k arm at sweep_ratio; [] = no sweep."""
    sweep_ratio: float | None = None
    """Token ratio of the sweep's top-k arms; default: the first of `ratios`."""
    reference_epochs: float = 3.0
    """Reference training epochs over its HQ data (continued from the base; the paper's 3)."""
    reference_lr: float = 4e-3
    """Reference peak learning rate."""
    reference_batch_size: int = 2
    """Windows per optimizer step of the reference's training: its HQ data is scarce, so a small batch gives its 3 epochs enough steps (at 1:10 of 160k tokens: 120 steps with 2 windows, 15 with 16)."""
    cpt_tokens: int = 160_000
    """Continual-pretraining budget of every arm (tokens seen, selected or not)."""
    cpt_lr: float = 6e-3
    """Continual-pretraining peak learning rate (the same for every arm)."""
    warmup_steps: int = 5
    """Warmup steps of every training stage."""
    strategies: list[str] = field(default_factory=lambda: ["topk", "random"])
    """SLM selection strategies to run (topk, random, stochastic)."""
    ratios: list[float] = field(default_factory=lambda: [0.6])
    """SLM token ratios (the paper used 0.6–0.7; configs/study-seeds.yaml adds 0.3)."""
    temperature: float = 1.0
    """Temperature τ of stochastic selection, in units of the selection set's excess-loss std (temperature_unit)."""
    temperature_unit: str = "std"
    """std (τ relative to the excess spread, scale-free) or nats (raw τ, as in earlier versions)."""
    baselines: list[str] = field(default_factory=lambda: ["hq"])
    """Baselines beside CLM: hq (CLM on the reference's HQ data alone, same budget: it repeats that data budget / HQ times) and content (CLM on the same noisy windows with the loss on content tokens only: pure noise filtering)."""
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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds; each samples its own corpora (corpora_seed + seed), reference, scores, data order and selection draws (share_base: one base for all). A claim is tested only with >= 3."""
    lora: LoraConfig | None = None
    """Train every arm with LoRA, e.g. {r: 16, alpha: 32}; unset = full-parameter."""
    checkpoints: int = 4
    """Evaluated checkpoints per main arm (evenly spaced; the base is checkpoint 0): the loss, accuracy and data-efficiency curves. Sweep arms are evaluated at their end only."""
    eval_windows_target: int = 48
    """Target-domain (HQ math) test windows evaluated at every checkpoint (and validation windows at the last, for tuning)."""
    eval_windows_noisy: int = 48
    """Noisy web-math test windows evaluated at every checkpoint (token dynamics, selection analyses)."""
    mc_questions: int = 120
    """Questions per generator (own, external) for multiple-choice accuracy and the gold answer's NLL at every evaluated checkpoint (the gold answer among 3 distractors; chance 25%)."""
    fewshot_questions: int = 100
    """Test-split questions of our own generator for few-shot exact match (greedy generation) at each arm's last checkpoint."""
    fewshot_external: int = 100
    """Questions from the external generator (reasoning-gym, pinned) for exact match and multiple choice; 0 = none."""
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
        if self.corpus not in CORPUS_KINDS:
            raise UserError(f"unknown corpus '{self.corpus}': choose one of {', '.join(CORPUS_KINDS)}")
        self._check_hq()
        if self.corpora is not None:
            for f in CORPUS_FILES:
                if not (Path(self.corpora) / f).is_file():
                    raise UserError(f"corpus file missing: {Path(self.corpora) / f} (corpora must hold {', '.join(CORPUS_FILES)})")
        if self.tokenizer is not None and not (Path(self.tokenizer) / "tokenizer.json").is_file():
            raise UserError(f"tokenizer not found: {self.tokenizer}/tokenizer.json")
        for name in ("base_tokens", "cpt_tokens", "batch_size", "reference_batch_size", "checkpoints", "seq_len"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mc_questions", "fewshot_questions", "fewshot_external", "eval_windows_target",
                     "eval_windows_noisy"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.reference_epochs <= 0:
            raise UserError(f"reference_epochs must be > 0, got {self.reference_epochs}")
        self._check_model()

    def hq_ratios(self) -> list[float]:
        """Every HQ : budget ratio the study runs: hq_ratio first, then the sweep's others in increasing order."""
        return [float(self.hq_ratio)] + sorted({float(r) for r in self.hq_sweep} - {float(self.hq_ratio)})

    def _check_hq(self) -> None:
        for key, values in (("hq_ratio", [self.hq_ratio]), ("hq_sweep", self.hq_sweep)):
            for r in values:
                if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 10:
                    raise UserError(f"{key} must hold HQ : budget ratios in (0, 10] (0.1 = 1:10), got {r!r}")
        if len(set(map(float, self.hq_sweep))) != len(self.hq_sweep):
            raise UserError(f"hq_sweep must be distinct, got {self.hq_sweep}")
        if self.hq_sweep:
            if self.sweep_ratio is None:
                self.sweep_ratio = self.ratios[0]
            check_ratio(self.sweep_ratio, "sweep_ratio")
            if "topk" not in self.strategies or float(self.sweep_ratio) not in [float(r) for r in self.ratios]:
                raise UserError(f"the HQ-size sweep runs top-k at sweep_ratio {self.sweep_ratio:g}: keep topk in "
                                "strategies and sweep_ratio in ratios")
            if "hq" not in self.baselines:
                raise UserError("the HQ-size sweep compares SLM with HQ-only: keep hq in baselines (or set hq_sweep=[])")
        for key in ("prose_scale", "hq_scale", "web_scale"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not 0 < v <= 100):
                raise UserError(f"{key} must be in (0, 100], got {v!r}")

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


