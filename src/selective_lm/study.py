"""`slm study`: Rho-1's experiment end to end, cached stage by stage, with a report.

Stages (each skipped when its artefact is already complete, so an interrupted study resumes):
corpora → tokenizer → prepare → base → reference → score → arms (CLM, SLM × strategies × ratios ×
seeds, all from the same base on the same windows in the same order) → evaluate every checkpoint
→ report. The default values below were chosen as documented in configs/study-default.yaml.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import LoraConfig, TrainConfig, check_ratio, first_change
from .files import UserError, read_json, write_json

STRATEGY_NAMES = ("topk", "random", "stochastic")
CORPUS_FILES = ("hq_math.jsonl", "web_math.jsonl", "prose.jsonl", "fewshot_eval.jsonl", "fewshot_exemplars.jsonl")
# Keys that may change between invocations on the same study directory.
FREE_KEYS = {"out", "overwrite", "progress", "seeds", "device", "quick"}

# `--quick`: the same stages and report sections on a small budget (45 s measured; used by the end-to-end test).
QUICK = dict(corpora_scale=0.12, base_tokens=120_000, reference_epochs=1.0, cpt_tokens=40_000,
             ratios=[0.6], checkpoints=2, eval_windows_target=24, eval_windows_noisy=24,
             fewshot_questions=48, batch_size=8, warmup_steps=3)


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
    """Temperature of stochastic selection."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the continual-pretraining arms (window order and selection randomness); e.g. 0,1,2."""
    lora: LoraConfig | None = None
    """Train every arm with LoRA, e.g. {r: 16, alpha: 32}; unset = full-parameter."""
    checkpoints: int = 4
    """Evaluated checkpoints per arm (evenly spaced; the base is checkpoint 0)."""
    eval_windows_target: int = 64
    """Target-domain (HQ math) validation windows evaluated at every checkpoint."""
    eval_windows_noisy: int = 64
    """Noisy web-math validation windows evaluated at every checkpoint (token dynamics, selection analyses)."""
    fewshot_questions: int = 200
    """Held-out math questions for few-shot exact match (greedy)."""
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
        if self.lora is not None:
            if self.lora.r <= 0:
                raise UserError(f"lora.r must be > 0, got {self.lora.r} (drop `lora` for full-parameter training)")
        if self.corpora is not None:
            for f in CORPUS_FILES:
                if not (Path(self.corpora) / f).is_file():
                    raise UserError(f"corpus file missing: {Path(self.corpora) / f} (corpora must hold {', '.join(CORPUS_FILES)})")
        if self.tokenizer is not None and not (Path(self.tokenizer) / "tokenizer.json").is_file():
            raise UserError(f"tokenizer not found: {self.tokenizer}/tokenizer.json")
        for name in ("base_tokens", "cpt_tokens", "batch_size", "checkpoints", "seq_len"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reference_epochs <= 0:
            raise UserError(f"reference_epochs must be > 0, got {self.reference_epochs}")
        self._check_model()

    def _check_model(self) -> None:
        from .model import PRESETS, checkpoint_vocab, is_checkpoint

        if self.model in PRESETS:
            return
        if not is_checkpoint(self.model):
            raise UserError(f"model '{self.model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint directory")
        vocab, _ = checkpoint_vocab(self.model)
        tok = self.tokenizer or (self.model if (Path(self.model) / "tokenizer.json").is_file() else None)
        if tok is None:
            raise UserError(f"checkpoint {self.model} has no tokenizer: pass tokenizer=DIR with the tokenizer it was trained with")
        from .data import load_tokenizer

        n = len(load_tokenizer(tok))
        if n > vocab or (self.tokenizer and n != vocab):
            raise UserError(f"checkpoint {self.model} has vocabulary {vocab} but tokenizer {tok} has {n} tokens: "
                            "use the checkpoint's own tokenizer")


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


class Study:
    """Builds the stage list of a study directory and runs the unfinished ones."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.timings: dict[str, float] = {}

    # paths -------------------------------------------------------------------------------
    def p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def corpora(self) -> Path:
        return Path(self.cfg.corpora) if self.cfg.corpora else self.p("corpora")

    def arms(self) -> list[dict]:
        runs = []
        for seed in self.cfg.seeds:
            runs.append({"name": f"clm-s{seed}", "arm": "clm", "strategy": None, "ratio": 1.0, "seed": seed})
            for ratio in self.cfg.ratios:
                for strategy in self.cfg.strategies:
                    runs.append({"name": f"{strategy}-r{ratio:g}-s{seed}", "arm": "slm", "strategy": strategy,
                                 "ratio": ratio, "seed": seed})
        for r in runs:
            r["run_dir"] = str(self.p("runs", r["name"]))
            r["eval_dir"] = str(self.p("evals", r["name"]))
        return runs

    @property
    def base_ckpt(self) -> Path:
        from .model import PRESETS

        return self.p("runs", "base", "final") if self.cfg.model in PRESETS else Path(self.cfg.model)

    # config identity -----------------------------------------------------------------------
    def check_dir(self) -> None:
        saved = self.p("study.yaml")  # (--overwrite moved an earlier study aside: see run_study)
        if saved.is_file() and (change := first_change(self.cfg, saved, FREE_KEYS)):
            k, was, now = change
            raise UserError(f"{self.root} was made with {k}={was!r}, now {now!r}: "
                            "use another --out or pass --overwrite to start over")
        from .config import save_config

        self.root.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, saved)

    # stages ---------------------------------------------------------------------------------
    def train_cfg(self, **kw) -> TrainConfig:
        c = self.cfg
        base = dict(batch_size=c.batch_size, warmup_steps=c.warmup_steps, device=c.device, progress=c.progress,
                    log_every=10, eval_windows=c.eval_windows_target)
        base.update(kw)
        cfg = TrainConfig(**base)
        cfg.validate()  # absolute paths, as on the command line
        return cfg

    def stages(self) -> list[Stage]:
        from . import stages as S

        return S.build_stages(self)

    def run(self) -> Path:
        from .report import write_report

        self.check_dir()
        stages = self.stages()
        total = len(stages)
        t_start = time.perf_counter()
        done: dict[str, tuple[float, float]] = {}  # kind -> (tokens, seconds) of the stages run so far
        for i, st in enumerate(stages, 1):
            if st.done:
                print(f"[{i}/{total}] {st.name}: cached", flush=True)
                continue
            rates = measured_rates(done)  # refined by every training/scoring stage that finished
            speed = f" at {rates[st.kind]:,.0f} tok/s measured" if st.kind in done else ""
            print(f"[{i}/{total}] {st.name}: {st.detail} (stage ~{_fmt(stage_seconds(st, rates))}{speed}, "
                  f"study ETA {_fmt(eta(stages[i - 1:], rates))})", flush=True)
            t0 = time.perf_counter()
            work = st.run()
            seconds = time.perf_counter() - t0
            self.timings[st.name] = round(seconds, 2)
            if st.kind:
                tokens = work if isinstance(work, (int, float)) and work > 0 else st.tokens
                was = done.get(st.kind, (0.0, 0.0))
                done[st.kind] = (was[0] + tokens, was[1] + seconds)
        t0 = time.perf_counter()
        self.write_index()
        report = write_report(self.root)
        self.timings["report"] = round(time.perf_counter() - t0, 2)
        self.write_index()
        print(f"study finished in {_fmt(time.perf_counter() - t_start)}: {report}", flush=True)
        return report

    def write_index(self) -> None:
        old = read_json(self.p("index.json")).get("timings", {}) if self.p("index.json").is_file() else {}
        index = {
            "seeds": self.cfg.seeds, "ratios": self.cfg.ratios, "strategies": self.cfg.strategies,
            "lora": dataclasses.asdict(self.cfg.lora) if self.cfg.lora else None,
            "model": self.cfg.model, "seq_len": self.cfg.seq_len, "cpt_tokens": self.cfg.cpt_tokens,
            "datasets": {"target": str(self.p("data", "hq_math")), "noisy": str(self.p("data", "web_math")),
                         "prose": str(self.p("data", "prose"))},
            "base": {"run_dir": str(self.p("runs", "base")), "checkpoint": str(self.base_ckpt),
                     "eval_dir": str(self.p("evals", "base"))},
            "reference": {"run_dir": str(self.p("runs", "reference")), "checkpoint": str(self.p("runs", "reference", "final")),
                          "eval_dir": str(self.p("evals", "reference"))},
            "ref_val_losses": str(self.p("evals", "reference", "step_final", "noisy.losses.bin")),
            "runs": self.arms(),
            "timings": {**old, **self.timings},
        }
        write_json(self.p("index.json"), index)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_study(cfg: StudyConfig) -> Path:
    """Run (or resume) the study, holding its directory's lock; ``--overwrite`` deletes the earlier
    study only once the new report exists (a failed new study brings the old one back)."""
    from .files import DirLock, replacing

    root = Path(cfg.out)
    with DirLock(root, "study directory", inside=False), \
            replacing(root, cfg.overwrite, lambda p: (p / "report" / "report.md").is_file(),
                      lambda p: (p / "study.yaml").is_file()):
        return Study(cfg).run()


__all__ = ["Stage", "Study", "StudyConfig", "eta", "measured_rates", "run_study"]
