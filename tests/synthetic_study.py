"""A synthetic finished study directory in the v3 layout for the report tests.

One pipeline per seed under ``study/seed-{s}/`` (datasets with test/validation splits and provenance labels
0..6, base/reference/arm runs, scores manifest, eval dirs with test+validation metrics, multiple choice at every
checkpoint, exact match at the last, and per-token loss dumps), optional HQ-size sweep arms (their end only),
``study/index.json`` version 3 and ``study/study.yaml``. Numbers are hand-made: SLM top-k learns the target
domain faster than CLM, random slower, etc. (see ``DROPS``).
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
from selective_lm.study.config import ratio_label as label

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


MC_N = 120


def _eval(d: Path, step: int, tokens: float, target: np.ndarray, noisy: np.ndarray, val: np.ndarray | None,
          acc: float | None, ext: float | None, n_q: int = 200, mc: float | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    dump_token_losses(target.reshape(NT, SEQ), d / "test.target.losses.bin")
    dump_token_losses(noisy.reshape(NW, SEQ), d / "test.noisy.losses.bin")
    m = {"checkpoint": str(d), "step": step, "tokens": tokens,
         "test": {"target": _summary(target), "noisy": _summary(noisy)}}
    if val is not None:
        dump_token_losses(val.reshape(NT, SEQ), d / "validation.target.losses.bin")
        m["validation"] = {"target": _summary(val)}
    if acc is not None and val is not None:  # exact match at a run's end only, as the study evaluates
        m["fewshot"] = {k: {"accuracy": round(a * n_q) / n_q, "correct": round(a * n_q), "n": n_q, "per_family": {}}
                        for k, a in (("own", acc), ("external", ext))}
    if mc is not None:
        m["mc"] = {k: {"acc": round(a * MC_N) / MC_N, "acc_norm": round(a * MC_N) / MC_N, "correct": round(a * MC_N),
                       "correct_norm": round(a * MC_N), "n": MC_N, "choices": 4, "chance": 0.25,
                       "answer_nll": 6.0 - 8.0 * a, "shots": 2} for k, a in (("own", mc), ("external", mc * 0.9))}
    write_json(d / "metrics.json", m)


def build_study(root: Path, *, seeds=(0, 1, 2), ratios=(0.6, 0.3), strategies=("topk", "random", "stochastic"),
                checkpoints: int = 10, slm_better: bool = True, val_shift: dict | None = None,
                test_shift: dict | None = None, acc_floor: bool = False, quick: bool = False, lora: bool = False,
                relative: bool = False, seed_jitter: float = 0.004, variants: dict | None = None,
                sweep: tuple = (), mc_chance_level: bool = False) -> Path:
    """Write a synthetic finished v3 study under root/study and return its path.

    ``sweep``: further HQ : budget ratios (besides 0.1) with an HQ-only and a top-k arm per seed (their end only;
    HQ-only gets better and SLM worse as the ratio grows). ``mc_chance_level``: multiple choice at chance.

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
        mc0 = 0.25
        _eval(ev / "base" / "step_000000", 0, 0, base_t, base_noisy, base_v, 0.0, 0.0, mc=mc0)
        _eval(ev / "reference" / "step_final", -1, -1, base_t - 1.0, ref_noisy, base_v - 1.0, 0.5, 0.3,
              mc=mc0 if mc_chance_level else 0.6)
        for r in sweep:
            _eval(ev / f"reference-hq{label(r).replace(':', 'in')}" / "step_final", -1, -1, base_t - 1.0 - r, ref_noisy,
                  base_v - 1.0 - r, 0.5, 0.3, mc=mc0 if mc_chance_level else 0.6)
        shapes = {"layer.weight": (4, 4), "layer.bias": (4,), "emb.weight": (8, 4)}
        base_state = {k: torch.randn(*s, generator=torch.Generator().manual_seed(1 + seed)) for k, s in shapes.items()}
        (sd / "runs/base/final").mkdir(parents=True)
        save_file(base_state, str(sd / "runs/base/final/model.safetensors"))
        write_json(sd / "runs/base/final/config.json", {"num_hidden_layers": 1, "hidden_size": 4})
        (sd / "runs/base/config.yaml").write_text("model: tiny\nmax_tokens: 5000\nlr: 0.001\n")
        ref = sd / "runs/reference"
        ref.mkdir(parents=True)
        write_json(ref / "run.json", {"status": "complete", "tokens": REF_TOKENS, "steps": 30})
        (ref / "config.yaml").write_text("model: base\nmax_tokens: 3000\nlr: 0.002\n")
        refs = {label(0.1): {"hq_ratio": 0.1, "run_dir": p(ref), "scores": p(sd / "scores/web_math"),
                             "eval_dir": p(ev / "reference")}}
        for r in sweep:
            slug = label(r).replace(":", "in")
            rd = sd / f"runs/reference-hq{slug}"
            rd.mkdir(parents=True)
            write_json(rd / "run.json", {"status": "complete", "tokens": round(REF_TOKENS * r * 10), "steps": 10})
            write_json(sd / f"scores/web_math-hq{slug}/manifest.json", {"shape": [SCORED_WINDOWS, SEQ],
                                                                        "windows": SCORED_WINDOWS, "seq_len": SEQ})
            refs[label(r)] = {"hq_ratio": r, "run_dir": p(rd), "scores": p(sd / f"scores/web_math-hq{slug}"),
                              "eval_dir": p(ev / f"reference-hq{slug}")}
        write_json(sd / "scores/web_math/manifest.json", {"kind": "selective-lm-scores", "shape": [SCORED_WINDOWS, SEQ],
                                                          "windows": SCORED_WINDOWS, "seq_len": SEQ, "mean_loss": 2.0})
        pipelines[str(seed)] = {
            "references": refs, "data_sizes": {"hq_math": 40, "web_math": SCORED_WINDOWS}, "base_seed": seed,
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
        arms += [(f"sweep:{r}:{a}", s_, ratios[0]) for r in sweep for a, s_ in (("hq", None), ("slm", "topk"))]
        for arm, strategy, ratio in arms:
            name = f"{arm}-s{seed}" if arm != "slm" else f"{strategy}-r{ratio:g}-s{seed}"
            key = strategy or arm
            hq_ratio, is_sweep = 0.1, arm.startswith("sweep:")
            if is_sweep:
                _, r, kind = arm.split(":")
                hq_ratio, slug = float(r), label(float(r)).replace(":", "in")
                name = f"hq-{slug}-s{seed}" if kind == "hq" else f"topk-r{ratio:g}-{slug}-s{seed}"
                key = kind if kind == "hq" else "topk"
            if arm.startswith("v:"):
                key, name = arm, f"v-{arm[2:].replace('+', '-').replace(':', '-')}-r{ratio:g}-s{seed}"
                timings[f"arm {name}"] = 10.0 + list(variants).index(arm[2:])
            elif arm == "slm" and strategy == "topk" and variants:
                timings[f"arm {name}"] = 10.0
            run_dir, eval_dir = sd / "runs" / name, ev / name
            jitter = seed_jitter * (seed - 1) + (0.003 * (1 - ratio) if key == "topk" else 0.0)
            if is_sweep:  # more HQ data: HQ-only better, SLM's reference no help beyond it
                jitter += (-0.3 * hq_ratio if key == "hq" else 0.2 * hq_ratio)
            for c in range(checkpoints if is_sweep else 1, checkpoints + 1):
                last = c == checkpoints
                target = base_t - drops[key] * c * 10 / checkpoints + jitter
                val = base_v - drops[key] * 10 + jitter + val_shift.get((strategy, ratio), 0.0) if last else None
                if last:
                    target = target + test_shift.get((strategy, ratio), 0.0)
                scale = {"topk": 1.5, "stochastic": 1.2}.get(key, 1.0) * c / checkpoints
                noisy = base_noisy + np.where(top, -0.8, 0.3) * scale + rng.normal(0, 0.05, n)
                acc = accs[key] * c / checkpoints + 0.02 * seed if not acc_floor else 0.01
                mc = 0.25 if mc_chance_level else 0.25 + (0.25 + accs[key]) * c / checkpoints + 0.01 * seed
                _eval(eval_dir / f"step_{c * 10:06d}", c * 10, c * TOKENS_PER_CKPT, target, noisy, val, acc, acc / 2,
                      mc=mc)
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
            kind = "variant" if arm.startswith("v:") else (arm.split(":")[2] if is_sweep else arm)
            runs.append({"name": name, "arm": kind, "strategy": strategy, "ratio": ratio if kind == "slm" or
                         kind == "variant" else 1.0, "seed": seed, "run_dir": p(run_dir), "eval_dir": p(eval_dir),
                         "data": p(sd / "data/web_math"), "hq_ratio": hq_ratio, "hq_label": label(hq_ratio),
                         "sweep": is_sweep, **({"variant": arm[2:]} if arm.startswith("v:") else {})})
    (study / "study.yaml").write_text(f"model: tiny\ncpt_tokens: 10000\nquick: {str(quick).lower()}\n")
    write_json(study / "index.json", {
        "version": 3, "corpus": "default", "share_base": False,
        "regime": {"hq_ratio": 0.1, "hq_label": "1:10", "hq_ratios": [0.1, *sweep], "sweep_ratio": ratios[0] if sweep
                   else None, "reference_epochs": 3.0, "hq_tokens": 1000},
        "seeds": list(seeds), "ratios": list(ratios), "strategies": list(strategies),
        "temperature": 1.0, "temperature_unit": "std", "model": "tiny", "seq_len": SEQ, "cpt_tokens": 10000,
        "checkpoints": checkpoints, "lora": {"r": 2, "alpha": 4} if lora else None, "quick": quick,
        "tune_split": "validation", "report_split": "test", "eval_windows": {"target": NT, "noisy": NW},
        "pipelines": pipelines, "runs": runs, "timings": timings,
        "variants": {v: f"synthetic variant {v}" for v in variants}, "variant_ratio": ratios[-1] if variants else None})
    return study
