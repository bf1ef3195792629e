"""Where a study keeps its stages' outputs, which arms it runs, and its index.json."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig, first_change
from ..files import UserError, read_json, write_json
from .config import FREE_KEYS, StudyConfig

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
        from ..model import PRESETS

        return self.p("runs", "base", "final") if self.cfg.model in PRESETS else Path(self.cfg.model)

    # config identity -----------------------------------------------------------------------
    def check_dir(self) -> None:
        saved = self.p("study.yaml")  # (--overwrite moved an earlier study aside: see run_study)
        if saved.is_file() and (change := first_change(self.cfg, saved, FREE_KEYS)):
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


