"""A synthetic finished study directory in the v2 layout (/work/study-v2-schema.md) for the report tests.

One pipeline per seed under ``study/seed-{s}/`` (datasets with test/validation splits and provenance labels
0..6, base/reference/arm runs, scores manifest, eval dirs with test+validation metrics and per-token loss
dumps), ``study/index.json`` version 2 and ``study/study.yaml``. Numbers are hand-made: SLM top-k learns
the target domain faster than CLM, random slower, etc. (see ``DROPS``).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from selective_lm.data import train_tokenizer
from selective_lm.evaluate import dump_token_losses
from selective_lm.files import write_json

SEQ, NW, NT = 16, 4, 4  # seq_len, noisy test windows in the dumps, target windows
TOKENS_PER_CKPT = 1000.0
LABELS = {"0": "content", "1": "noise", "2": "offtopic", "3": "wrong_solution", "4": "near_duplicate",
          "5": "perturbed_table", "6": "other_notation"}
DROPS = {"clm": 0.02, "hq": 0.03, "content": 0.025, "topk": 0.035, "random": 0.012, "stochastic": 0.03}
ACCS = {"clm": 0.30, "hq": 0.35, "content": 0.32, "topk": 0.45, "random": 0.28, "stochastic": 0.40}
REF_TOKENS, SCORED_WINDOWS = 3000, 50
_TOKENIZER: dict = {}


def arm_key(run: dict) -> str:
    return run["strategy"] or run["arm"]


def _tokenizer(tmp_root: Path) -> Path:
    if "dir" not in _TOKENIZER or not _TOKENIZER["dir"].is_dir():
        _TOKENIZER["dir"] = tmp_root / "tok"
        text = ["x = 3 + 4 so x = 7. The derivative of x^2 is 2x. Buy now!!! click here"] * 20
        _TOKENIZER["vocab"] = len(train_tokenizer(text, 300, _TOKENIZER["dir"]))
    return _TOKENIZER["dir"]


def _dataset(path: Path, tok: Path, rng, splits: dict[str, int], provenance: bool) -> None:
    path.mkdir(parents=True)
    shutil.copytree(tok, path / "tokenizer")
    meta = {}
    for split, windows in splits.items():
        rng.integers(1, 20, size=(windows, SEQ + 1)).astype(np.uint16).tofile(path / f"{split}.bin")
        meta[split] = {"file": f"{split}.bin", "windows": windows, "provenance": None}
        if provenance:
            rng.integers(0, 7, size=(windows, SEQ + 1)).astype(np.uint8).tofile(path / f"{split}.prov.bin")
            meta[split]["provenance"] = f"{split}.prov.bin"
    write_json(path / "manifest.json", {
        "format_version": 1, "kind": "selective-lm-dataset", "seq_len": SEQ, "window_len": SEQ + 1,
        "dtype": "uint16", "vocab_size": _TOKENIZER["vocab"], "eos_id": 0, "tokenizer": "tokenizer",
        "fingerprint": "synthetic", "splits": meta, "provenance_labels": LABELS if provenance else None})


def _summary(arr: np.ndarray) -> dict:
    loss = float(arr.astype(np.float16).astype(np.float64).mean())
    return {"loss": loss, "ppl": math.exp(loss), "tokens": int(arr.size)}


def _eval(d: Path, step: int, tokens: float, target: np.ndarray, noisy: np.ndarray, val: np.ndarray | None,
          acc: float | None, ext: float | None, n_q: int = 200) -> None:
    d.mkdir(parents=True, exist_ok=True)
    dump_token_losses(target.reshape(NT, SEQ), d / "test.target.losses.bin")
    dump_token_losses(noisy.reshape(NW, SEQ), d / "test.noisy.losses.bin")
    m = {"checkpoint": str(d), "step": step, "tokens": tokens,
         "test": {"target": _summary(target), "noisy": _summary(noisy)}}
    if val is not None:
        dump_token_losses(val.reshape(NT, SEQ), d / "validation.target.losses.bin")
        m["validation"] = {"target": _summary(val)}
    if acc is not None:
        m["fewshot"] = {k: {"accuracy": round(a * n_q) / n_q, "correct": round(a * n_q), "n": n_q, "per_family": {}}
                        for k, a in (("own", acc), ("external", ext))}
    write_json(d / "metrics.json", m)


def build_study(root: Path, *, seeds=(0, 1, 2), ratios=(0.6, 0.3), strategies=("topk", "random", "stochastic"),
                checkpoints: int = 10, slm_better: bool = True, val_shift: dict | None = None,
                test_shift: dict | None = None, acc_floor: bool = False, quick: bool = False, lora: bool = False,
                relative: bool = False, seed_jitter: float = 0.004, variants: dict | None = None) -> Path:
    """Write a synthetic finished v2 study under root/study and return its path.

    ``val_shift`` / ``test_shift``: {(strategy, ratio): nats} added to that group's final validation / test target
    loss (to make validation and test disagree on the best ratio).
    ``variants``: {variant name: target-loss drop per 10 checkpoints (top-k's is DROPS["topk"])}: one variant arm
    per seed at the last ratio, each with a stage timing of 10 + its index seconds.
    """
    variants = variants or {}
    study = root / "study"
    p = (lambda q: str(Path(q).relative_to(study))) if relative else (lambda q: str(q))
    tok = _tokenizer(root)
    drops = dict(DROPS, topk=DROPS["topk"] if slm_better else 0.005, **{f"v:{v}": d for v, d in variants.items()})
    accs = {k: (0.01 if acc_floor else v) for k, v in dict(ACCS, topk=ACCS["topk"] if slm_better else 0.15).items()}
    accs.update({f"v:{v}": accs["topk"] for v in variants})
    timings = {"corpora": 1.0, "base": 1.5, "reference": 0.5, "arms": 3.0}
    val_shift, test_shift = val_shift or {}, test_shift or {}
    runs, pipelines = [], {}
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        sd = study / f"seed-{seed}"
        _dataset(sd / "data" / "web_math", tok, rng, {"train": SCORED_WINDOWS, "test": NW + 2}, provenance=True)
        _dataset(sd / "data" / "hq_math", tok, rng, {"test": NT, "validation": NT}, provenance=False)
        prov = np.fromfile(sd / "data/web_math/test.prov.bin", dtype=np.uint8).reshape(-1, SEQ + 1)[:NW, 1:]
        n = NW * SEQ
        base_noisy = rng.uniform(1.0, 5.0, n)
        # the reference knows content (label 0) better than the other kinds: content has the largest excess
        excess = rng.normal(0.0, 0.5, n) + np.where(prov.reshape(-1) == 0, 1.5, -0.2 * prov.reshape(-1))
        ref_noisy = base_noisy - excess
        top = excess >= np.quantile(excess, 0.4)
        base_t, base_v = rng.uniform(2.5, 3.5, NT * SEQ), rng.uniform(2.5, 3.5, NT * SEQ)
        ev = sd / "evals"
        _eval(ev / "base" / "step_000000", 0, 0, base_t, base_noisy, base_v, 0.0, 0.0)
        _eval(ev / "reference" / "step_final", -1, -1, base_t - 1.0, ref_noisy, base_v - 1.0, 0.5, 0.3)
        shapes = {"layer.weight": (4, 4), "layer.bias": (4,), "emb.weight": (8, 4)}
        base_state = {k: torch.randn(*s, generator=torch.Generator().manual_seed(1 + seed)) for k, s in shapes.items()}
        (sd / "runs/base/final").mkdir(parents=True)
        save_file(base_state, str(sd / "runs/base/final/model.safetensors"))
        (sd / "runs/base/config.yaml").write_text("model: tiny\nmax_tokens: 5000\nlr: 0.001\n")
        ref = sd / "runs/reference"
        ref.mkdir(parents=True)
        write_json(ref / "run.json", {"status": "complete", "tokens": REF_TOKENS, "steps": 30})
        (ref / "config.yaml").write_text("model: base\nmax_tokens: 3000\nlr: 0.002\n")
        write_json(sd / "scores/web_math/manifest.json", {"kind": "selective-lm-scores", "shape": [SCORED_WINDOWS, SEQ],
                                                          "mean_loss": 2.0})
        pipelines[str(seed)] = {
            "root": p(sd), "corpora": p(sd / "corpora"),
            "datasets": {"target": p(sd / "data/hq_math"), "noisy": p(sd / "data/web_math"),
                         "prose": p(sd / "data/prose")},
            "base": {"run_dir": p(sd / "runs/base"), "checkpoint": p(sd / "runs/base/final"),
                     "eval_dir": p(ev / "base")},
            "reference": {"run_dir": p(ref), "checkpoint": p(ref / "final"), "eval_dir": p(ev / "reference")},
            "scores": p(sd / "scores/web_math")}
        shared = torch.randn(4, 4, generator=torch.Generator().manual_seed(50 + seed))
        arms = [("clm", None, 1.0), ("hq", None, 1.0), ("content", None, 1.0)]
        arms += [("slm", s, r) for r in ratios for s in strategies]
        arms += [(f"v:{v}", "topk", ratios[-1]) for v in variants]
        for arm, strategy, ratio in arms:
            name = f"{arm}-s{seed}" if arm != "slm" else f"{strategy}-r{ratio:g}-s{seed}"
            key = strategy or arm
            if arm.startswith("v:"):
                key, name = arm, f"v-{arm[2:].replace('+', '-').replace(':', '-')}-r{ratio:g}-s{seed}"
                timings[f"arm {name}"] = 10.0 + list(variants).index(arm[2:])
            elif arm == "slm" and strategy == "topk" and variants:
                timings[f"arm {name}"] = 10.0
            run_dir, eval_dir = sd / "runs" / name, ev / name
            jitter = seed_jitter * (seed - 1) + (0.003 * (1 - ratio) if key == "topk" else 0.0)
            for c in range(1, checkpoints + 1):
                last = c == checkpoints
                target = base_t - drops[key] * c * 10 / checkpoints + jitter
                val = base_v - drops[key] * 10 + jitter + val_shift.get((strategy, ratio), 0.0) if last else None
                if last:
                    target = target + test_shift.get((strategy, ratio), 0.0)
                scale = {"topk": 1.5, "stochastic": 1.2}.get(key, 1.0) * c / checkpoints
                noisy = base_noisy + np.where(top, -0.8, 0.3) * scale + rng.normal(0, 0.05, n)
                acc = accs[key] * c / checkpoints + 0.02 * seed if not acc_floor else 0.01
                _eval(eval_dir / f"step_{c * 10:06d}", c * 10, c * TOKENS_PER_CKPT, target, noisy, val, acc, acc / 2)
            final = run_dir / "final"
            final.mkdir(parents=True)
            g = torch.Generator().manual_seed(1000 + len(runs))
            if lora:
                save_file({"base_model.model.layer.lora_A.weight": torch.randn(2, 4, generator=g),
                           "base_model.model.layer.lora_B.weight": torch.randn(4, 2, generator=g)},
                          str(final / "adapter_model.safetensors"))
                write_json(final / "adapter_config.json", {"r": 2, "lora_alpha": 4, "peft_type": "LORA"})
            else:
                state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
                state["layer.weight"] = state["layer.weight"] + shared
                save_file(state, str(final / "model.safetensors"))
            overlap = {"topk": 1.0, "random": ratio, "stochastic": (1 + ratio) / 2}.get(key)
            rows = [{"type": "train", "step": s, "tokens": s * 500, "loss": 3.0, "noise_share_all": 0.3,
                     **({"noise_share_selected": 0.2 - 0.005 * s, "selected_fraction": ratio,
                         "topk_overlap": overlap} if arm == "slm" else {})} for s in range(1, 21)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run_dir / "config.yaml").write_text(f"model: {sd / 'runs/base/final'}\nmax_tokens: 10000\nlr: 0.006\n")
            runs.append({"name": name, "arm": "variant" if arm.startswith("v:") else arm, "strategy": strategy,
                         "ratio": ratio, "seed": seed, "run_dir": p(run_dir), "eval_dir": p(eval_dir),
                         "data": p(sd / "data/web_math"), **({"variant": arm[2:]} if arm.startswith("v:") else {})})
    (study / "study.yaml").write_text(f"model: tiny\ncpt_tokens: 10000\nquick: {str(quick).lower()}\n")
    write_json(study / "index.json", {
        "version": 2, "seeds": list(seeds), "ratios": list(ratios), "strategies": list(strategies),
        "temperature": 1.0, "temperature_unit": "std", "model": "tiny", "seq_len": SEQ, "cpt_tokens": 10000,
        "checkpoints": checkpoints, "lora": {"r": 2, "alpha": 4} if lora else None, "quick": quick,
        "tune_split": "validation", "report_split": "test", "eval_windows": {"target": NT, "noisy": NW},
        "pipelines": pipelines, "runs": runs, "timings": timings,
        "variants": {v: f"synthetic variant {v}" for v in variants}, "variant_ratio": ratios[-1] if variants else None})
    return study
