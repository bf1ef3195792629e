"""Where a study keeps its stages' outputs, which arms it runs, and its index.json."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ..config import TrainConfig, first_change, load_yaml
from ..files import UserError, read_json, write_json
from .config import FREE_KEYS, VARIANT_KEYS, StudyConfig, describe_variant, ratio_label, ratio_slug

class Study:
    """Builds the stage list of a study directory and runs the unfinished ones."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.root = Path(cfg.out)
        self.timings: dict[str, float] = {}

    # paths -------------------------------------------------------------------------------
    def p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def seed_dir(self, seed: int) -> Path:
        """One whole pipeline per seed: corpus sample, tokenizer, data, base, reference, scores, arms."""
        return self.p(f"seed-{seed}")

    def corpora(self, seed: int) -> Path:
        return Path(self.cfg.corpora) if self.cfg.corpora else self.seed_dir(seed) / "corpora"

    def base_seed(self, seed: int) -> int:
        """The seed whose pipeline trains the tokenizer and base that ``seed`` uses (itself unless share_base)."""
        return self.cfg.seeds[0] if self.cfg.share_base else seed

    def tokenizer(self, seed: int) -> Path:
        return self.seed_dir(self.base_seed(seed)) / "tokenizer"

    def external(self, seed: int) -> Path:
        """The external few-shot questions (written by the corpora stage, never into a user's corpora)."""
        return self.seed_dir(seed) / "external" / "fewshot_external.jsonl"

    def data(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / "data" / name

    def run_dir(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / "runs" / name

    def eval_dir(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / "evals" / name

    def scores(self, seed: int, hq_ratio: float | None = None) -> Path:
        """The web-math scores of the reference trained on ``hq_ratio`` × the budget of HQ data (default hq_ratio)."""
        return self.seed_dir(seed) / "scores" / ("web_math" + self._sweep_suffix(hq_ratio))

    def _sweep_suffix(self, hq_ratio: float | None) -> str:
        main = hq_ratio is None or float(hq_ratio) == float(self.cfg.hq_ratio)
        return "" if main else f"-hq{ratio_slug(hq_ratio)}"

    def steps(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / (self.cfg.batch_size * self.cfg.seq_len)))

    def arm_checkpoints(self, sweep: bool = False) -> tuple[int, int]:
        """(steps between an arm's checkpoints, checkpoints of a finished arm); the last is the final step. A
        sweep arm keeps its last checkpoint only."""
        steps = self.steps(self.cfg.cpt_tokens)
        every = steps if sweep else max(1, math.ceil(steps / self.cfg.checkpoints))
        return every, math.ceil(steps / every)

    def hq_windows(self, n_train: int, hq_ratio: float | None = None) -> int:
        """HQ train windows a reference (and HQ-only arm) at ``hq_ratio`` uses: round(ratio × budget / seq_len)."""
        c = self.cfg
        return max(1, round(float(c.hq_ratio if hq_ratio is None else hq_ratio) * c.cpt_tokens / c.seq_len))

    def filter_dir(self, seed: int) -> Path:
        """Document scores of the web-math train rows (`slm filter`, CHAMP studies)."""
        return self.seed_dir(seed) / "filter" / "web_math"

    def self_scores(self, seed: int) -> Path:
        """The self-reference's scores of the web-math train split (the `self` variant)."""
        return self.seed_dir(seed) / "scores" / "web_math-self"

    def self_reference_ckpt(self, seed: int) -> Path:
        return self.run_dir(seed, "self-reference") / "final"

    def base_ckpt(self, seed: int) -> Path:
        from ..model import PRESETS

        return (self.run_dir(self.base_seed(seed), "base") / "final" if self.cfg.model in PRESETS
                else Path(self.cfg.model))

    def reference_dir(self, seed: int, hq_ratio: float | None = None) -> Path:
        return self.run_dir(seed, "reference" + self._sweep_suffix(hq_ratio))

    def reference_ckpt(self, seed: int, hq_ratio: float | None = None) -> Path:
        return self.reference_dir(seed, hq_ratio) / "final"

    def reference_eval_dir(self, seed: int, hq_ratio: float | None = None) -> Path:
        return self.eval_dir(seed, "reference" + self._sweep_suffix(hq_ratio))

    def arms(self) -> list[dict]:
        """Every continual-pretraining run: per seed CLM, the baselines, SLM × ratios × strategies, the variants,
        then per further HQ : budget ratio of the sweep an HQ-only and a top-k arm (``sweep``: evaluated at the
        end only). Every arm records the HQ : budget ratio of the reference (or the HQ data) it uses."""
        c, runs = self.cfg, []
        for seed in c.seeds:
            runs.append({"name": f"clm-s{seed}", "arm": "clm", "strategy": None, "ratio": 1.0, "seed": seed})
            for b in c.baselines:
                runs.append({"name": f"{b}-s{seed}", "arm": b, "strategy": None, "ratio": 1.0, "seed": seed})
            for ratio in c.ratios:
                for strategy in c.strategies:
                    runs.append({"name": f"{strategy}-r{ratio:g}-s{seed}", "arm": "slm", "strategy": strategy,
                                 "ratio": ratio, "seed": seed})
            for v in c.variants:  # top-k at variant_ratio, changed in one way (config.VARIANTS)
                slug = v.replace("+", "-").replace(":", "-")
                runs.append({"name": f"v-{slug}-r{c.variant_ratio:g}-s{seed}", "arm": "variant",
                             "variant": v, "strategy": "topk", "ratio": c.variant_ratio, "seed": seed})
            sr = c.ratios[0] if c.sweep_ratio is None else c.sweep_ratio  # (validate() sets it)
            for r in c.hq_ratios()[1:]:
                runs.append({"name": f"hq-{ratio_slug(r)}-s{seed}", "arm": "hq", "strategy": None, "ratio": 1.0,
                             "seed": seed, "hq_ratio": r, "sweep": True})
                runs.append({"name": f"topk-r{sr:g}-{ratio_slug(r)}-s{seed}", "arm": "slm",
                             "strategy": "topk", "ratio": sr, "seed": seed, "hq_ratio": r, "sweep": True})
        for r in runs:
            short = r["name"].rsplit("-s", 1)[0]
            r.setdefault("hq_ratio", float(c.hq_ratio))
            r.setdefault("sweep", False)
            r["hq_label"] = ratio_label(r["hq_ratio"])
            r["run_dir"] = str(self.run_dir(r["seed"], short))
            r["eval_dir"] = str(self.eval_dir(r["seed"], short))
            r["data"] = str(self.data(r["seed"], "hq_math" if r["arm"] == "hq" else "web_math"))
        return runs

    # config identity -----------------------------------------------------------------------
    def check_dir(self) -> None:
        saved = self.p("study.yaml")  # (--overwrite moved an earlier study aside: see run_study)
        # variants only add arms: the variant settings of a study made without variants are not a change
        was = load_yaml(saved) if saved.is_file() else {}
        free = FREE_KEYS | {"variants"} | ({k for k in VARIANT_KEYS if k not in was} if was.get("variants")
                                           else set(VARIANT_KEYS))
        if saved.is_file() and (change := first_change(self.cfg, saved, free)):
            k, was, now = change
            raise UserError(f"{self.root} was made with {k}={was!r}, now {now!r}: "
                            "use another --out or pass --overwrite to start over")
        from ..config import save_config

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

    def all_timings(self) -> dict[str, float]:
        """Seconds of each stage over every invocation: a stage's seconds add up over the invocations that ran
        part of it (a resumed evaluation, a rescoring); the report is rewritten every time, so it keeps the last."""
        if not hasattr(self, "_prior_timings"):  # what earlier invocations spent, read once per invocation
            saved = self.p("timings.json") if self.p("timings.json").is_file() else self.p("index.json")
            self._prior_timings = read_json(saved).get("timings", {}) if saved.is_file() else {}
        timings = dict(self._prior_timings)
        for k, v in self.timings.items():
            timings[k] = v if k == "report" else round(timings.get(k, 0.0) + v, 2)
        return timings

    def save_timings(self) -> None:
        """After each stage: its seconds survive a kill of this invocation (index.json is written at the end)."""
        write_json(self.p("timings.json"), {"timings": self.all_timings()})

    def write_index(self) -> None:
        timings = self.all_timings()
        c = self.cfg
        pipelines = {}
        for seed in c.seeds:
            pipelines[str(seed)] = {
                "root": str(self.seed_dir(seed)), "corpora": str(self.corpora(seed)),
                "external": str(self.external(seed)),
                "datasets": {"target": str(self.data(seed, "hq_math")), "noisy": str(self.data(seed, "web_math")),
                             "prose": str(self.data(seed, "prose"))},
                "tokenizer": str(self.tokenizer(seed)), "base_seed": self.base_seed(seed),
                "base": {"run_dir": str(self.run_dir(self.base_seed(seed), "base")),
                         "checkpoint": str(self.base_ckpt(seed)), "eval_dir": str(self.eval_dir(seed, "base"))},
                "reference": {"run_dir": str(self.reference_dir(seed)),
                              "checkpoint": str(self.reference_ckpt(seed)),
                              "eval_dir": str(self.eval_dir(seed, "reference"))},
                "scores": str(self.scores(seed)),
                "references": {ratio_label(r): {"hq_ratio": r, "run_dir": str(self.reference_dir(seed, r)),
                                                "scores": str(self.scores(seed, r)),
                                                "eval_dir": str(self.reference_eval_dir(seed, r)),
                                                "hq_windows": self.hq_windows(0, r)} for r in c.hq_ratios()},
                "data_sizes": self._data_sizes(seed),
                **({"filter": str(self.filter_dir(seed))} if c.corpus == "champ" else {})}
            if "self" in c.variants:
                pipelines[str(seed)]["self_reference"] = {
                    "run_dir": str(self.run_dir(seed, "self-reference")), "checkpoint": str(self.self_reference_ckpt(seed)),
                    "scores": str(self.self_scores(seed)), "fraction": c.self_fraction}
        index = {
            "version": 3, "quick": c.quick, "corpus": c.corpus, "share_base": c.share_base,
            "regime": {"hq_ratio": c.hq_ratio, "hq_label": ratio_label(c.hq_ratio), "hq_ratios": c.hq_ratios(),
                       "sweep_ratio": c.sweep_ratio if c.hq_sweep else None, "reference_epochs": c.reference_epochs,
                       "hq_tokens": self.hq_windows(0) * c.seq_len,
                       "hq_tokens_by_ratio": {ratio_label(r): self.hq_windows(0, r) * c.seq_len for r in c.hq_ratios()}}, "seeds": c.seeds, "ratios": c.ratios, "strategies": c.strategies,
            "baselines": c.baselines, "variants": {v: describe_variant(v) for v in c.variants},
            "variant_ratio": c.variant_ratio if c.variants else None, "temperature": c.temperature, "temperature_unit": c.temperature_unit,
            "lora": dataclasses.asdict(c.lora) if c.lora else None, "model": c.model, "seq_len": c.seq_len,
            "cpt_tokens": c.cpt_tokens, "checkpoints": c.checkpoints, "tune_split": "validation", "report_split": "test",
            "eval_windows": {"target": c.eval_windows_target, "noisy": c.eval_windows_noisy},
            "pipelines": pipelines, "runs": self.arms(), "timings": timings,
        }
        write_json(self.p("index.json"), index)

    def _data_sizes(self, seed: int) -> dict:
        """Train windows of the prepared datasets of a seed (None before its prepare stage ran)."""
        out = {}
        for name in ("hq_math", "web_math"):
            m = self.data(seed, name) / "manifest.json"
            out[name] = read_json(m)["splits"]["train"]["windows"] if m.is_file() else None
        return out
