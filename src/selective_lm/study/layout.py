"""Where a study keeps its stages' outputs, which arms it runs, and its index.json."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig, first_change, load_yaml
from ..files import UserError, read_json, write_json
from .config import FREE_KEYS, VARIANT_KEYS, StudyConfig, describe_variant

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

    def external(self, seed: int) -> Path:
        """The external few-shot questions (written by the corpora stage, never into a user's corpora)."""
        return self.seed_dir(seed) / "external" / "fewshot_external.jsonl"

    def data(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / "data" / name

    def run_dir(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / "runs" / name

    def eval_dir(self, seed: int, name: str) -> Path:
        return self.seed_dir(seed) / "evals" / name

    def scores(self, seed: int) -> Path:
        return self.seed_dir(seed) / "scores" / "web_math"

    def self_scores(self, seed: int) -> Path:
        """The self-reference's scores of the web-math train split (the `self` variant)."""
        return self.seed_dir(seed) / "scores" / "web_math-self"

    def self_reference_ckpt(self, seed: int) -> Path:
        return self.run_dir(seed, "self-reference") / "final"

    def base_ckpt(self, seed: int) -> Path:
        from ..model import PRESETS

        return self.run_dir(seed, "base") / "final" if self.cfg.model in PRESETS else Path(self.cfg.model)

    def reference_ckpt(self, seed: int) -> Path:
        return self.run_dir(seed, "reference") / "final"

    def arms(self) -> list[dict]:
        """Every continual-pretraining run: per seed CLM, the baselines, then SLM × ratios × strategies."""
        runs = []
        for seed in self.cfg.seeds:
            runs.append({"name": f"clm-s{seed}", "arm": "clm", "strategy": None, "ratio": 1.0, "seed": seed})
            for b in self.cfg.baselines:
                runs.append({"name": f"{b}-s{seed}", "arm": b, "strategy": None, "ratio": 1.0, "seed": seed})
            for ratio in self.cfg.ratios:
                for strategy in self.cfg.strategies:
                    runs.append({"name": f"{strategy}-r{ratio:g}-s{seed}", "arm": "slm", "strategy": strategy,
                                 "ratio": ratio, "seed": seed})
            for v in self.cfg.variants:  # top-k at variant_ratio, changed in one way (config.VARIANTS)
                slug = v.replace("+", "-").replace(":", "-")
                runs.append({"name": f"v-{slug}-r{self.cfg.variant_ratio:g}-s{seed}", "arm": "variant",
                             "variant": v, "strategy": "topk", "ratio": self.cfg.variant_ratio, "seed": seed})
        for r in runs:
            short = r["name"].rsplit("-s", 1)[0]
            r["run_dir"] = str(self.run_dir(r["seed"], short))
            r["eval_dir"] = str(self.eval_dir(r["seed"], short))
            r["data"] = str(self.data(r["seed"], "hq_math" if r["arm"] == "hq" else "web_math"))
        return runs

    # config identity -----------------------------------------------------------------------
    def check_dir(self) -> None:
        saved = self.p("study.yaml")  # (--overwrite moved an earlier study aside: see run_study)
        # variants only add arms; the variant settings of a study made before they existed are not a change
        free = FREE_KEYS | {"variants"} | ({k for k in VARIANT_KEYS if k not in load_yaml(saved)} if saved.is_file()
                                           else set())
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

    def write_index(self) -> None:
        if not hasattr(self, "_prior_timings"):  # what earlier invocations spent, read once per invocation
            self._prior_timings = (read_json(self.p("index.json")).get("timings", {})
                                   if self.p("index.json").is_file() else {})
        # a stage's seconds add up over the invocations that ran part of it (a resumed evaluation, a rescoring);
        # the report is rewritten every time, so it keeps the last
        timings = dict(self._prior_timings)
        for k, v in self.timings.items():
            timings[k] = v if k == "report" else round(timings.get(k, 0.0) + v, 2)
        c = self.cfg
        pipelines = {}
        for seed in c.seeds:
            pipelines[str(seed)] = {
                "root": str(self.seed_dir(seed)), "corpora": str(self.corpora(seed)),
                "external": str(self.external(seed)),
                "datasets": {"target": str(self.data(seed, "hq_math")), "noisy": str(self.data(seed, "web_math")),
                             "prose": str(self.data(seed, "prose"))},
                "base": {"run_dir": str(self.run_dir(seed, "base")), "checkpoint": str(self.base_ckpt(seed)),
                         "eval_dir": str(self.eval_dir(seed, "base"))},
                "reference": {"run_dir": str(self.run_dir(seed, "reference")),
                              "checkpoint": str(self.reference_ckpt(seed)),
                              "eval_dir": str(self.eval_dir(seed, "reference"))},
                "scores": str(self.scores(seed))}
            if "self" in c.variants:
                pipelines[str(seed)]["self_reference"] = {
                    "run_dir": str(self.run_dir(seed, "self-reference")), "checkpoint": str(self.self_reference_ckpt(seed)),
                    "scores": str(self.self_scores(seed)), "fraction": c.self_fraction}
        index = {
            "version": 2, "quick": c.quick, "seeds": c.seeds, "ratios": c.ratios, "strategies": c.strategies,
            "baselines": c.baselines, "variants": {v: describe_variant(v) for v in c.variants},
            "variant_ratio": c.variant_ratio if c.variants else None, "temperature": c.temperature, "temperature_unit": c.temperature_unit,
            "lora": dataclasses.asdict(c.lora) if c.lora else None, "model": c.model, "seq_len": c.seq_len,
            "cpt_tokens": c.cpt_tokens, "checkpoints": c.checkpoints, "tune_split": "validation", "report_split": "test",
            "eval_windows": {"target": c.eval_windows_target, "noisy": c.eval_windows_noisy},
            "pipelines": pipelines, "runs": self.arms(), "timings": timings,
        }
        write_json(self.p("index.json"), index)
