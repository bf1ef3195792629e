"""A synthetic finished study directory (hand-made loss dumps, metrics, weights) for the analysis tests."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from selective_lm.data import train_tokenizer
from selective_lm.evaluate import dump_token_losses
from selective_lm.files import write_json

SEQ, NW, NT = 16, 4, 4  # seq_len, noisy validation windows in the dumps, target windows
STEPS = ((10, 1000.0), (20, 2000.0))
KEYS = ("study", "config", "base", "reference", "runs", "data_efficiency", "groups", "dynamics", "buckets",
        "selected_vs_unselected", "cosine", "selection", "claims")
_TOKENIZER: dict = {}


def _dataset(path: Path, tmp_root: Path, rng, windows: int, provenance: bool) -> None:
    if "dir" not in _TOKENIZER:
        _TOKENIZER["dir"] = tmp_root / "tok"
        text = ["x = 3 + 4 so x = 7. The derivative of x^2 is 2x. Buy now!!! click here"] * 20
        _TOKENIZER["vocab"] = len(train_tokenizer(text, 300, _TOKENIZER["dir"]))
    path.mkdir(parents=True)
    import shutil

    shutil.copytree(_TOKENIZER["dir"], path / "tokenizer")
    rng.integers(1, 20, size=(windows, SEQ + 1)).astype(np.uint16).tofile(path / "validation.bin")
    split = {"file": "validation.bin", "windows": windows, "provenance": None}
    if provenance:
        rng.integers(0, 3, size=(windows, SEQ + 1)).astype(np.uint8).tofile(path / "validation.prov.bin")
        split["provenance"] = "validation.prov.bin"
    write_json(path / "manifest.json", {
        "format_version": 1, "kind": "selective-lm-dataset", "seq_len": SEQ, "window_len": SEQ + 1,
        "dtype": "uint16", "vocab_size": _TOKENIZER["vocab"], "eos_id": 0, "tokenizer": "tokenizer",
        "fingerprint": "synthetic", "splits": {"validation": split},
        "provenance_labels": {"0": "content", "1": "noise", "2": "offtopic"} if provenance else None})


def _eval(d: Path, step: int, tokens: float, target: np.ndarray, noisy: np.ndarray, acc: float | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    dump_token_losses(target.reshape(NT, SEQ), d / "target.losses.bin")
    dump_token_losses(noisy.reshape(NW, SEQ), d / "noisy.losses.bin")
    m = {"step": step, "tokens": tokens}
    for name, arr in (("target", target), ("noisy", noisy)):
        loss = float(arr.astype(np.float16).astype(np.float64).mean())
        m[name] = {"loss": loss, "ppl": math.exp(loss), "tokens": arr.size}
    if acc is not None:
        m["fewshot"] = {"accuracy": acc, "correct": int(acc * 100), "n": 100, "per_family": {}, "examples": []}
    write_json(d / "metrics.json", m)


def build_study(root: Path, *, slm_better: bool = True, seeds=(0,), ratios=(0.6, 0.3), lora: bool = False,
                strategies=("topk", "random"), slm_seed_jitter: float = 0.0, relative: bool = False) -> Path:
    """Write a synthetic finished study under root/study and return its path."""
    rng = np.random.default_rng(0)
    study = root / "study"
    p = (lambda q: str(Path(q).relative_to(study))) if relative else (lambda q: str(q))
    _dataset(study / "data" / "web_math", root, rng, NW + 2, provenance=True)
    _dataset(study / "data" / "hq_math", root, rng, NT, provenance=False)
    n = NW * SEQ
    base_noisy = rng.uniform(1.0, 5.0, n)
    excess = rng.normal(0.0, 1.0, n)
    top = excess >= np.quantile(excess, 0.4)  # roughly the tokens top-k selects
    base_target = rng.uniform(2.5, 3.5, NT * SEQ)
    _eval(study / "evals" / "base" / "step_000000", 0, 5000.0, base_target, base_noisy, 0.1)
    _eval(study / "evals" / "reference" / "step_final", 300, 3000.0, base_target - 0.5, base_noisy - excess, 0.5)
    shapes = {"layer.weight": (4, 4), "layer.bias": (4,), "emb.weight": (8, 4)}
    base_state = {k: torch.randn(*s, generator=torch.Generator().manual_seed(1)) for k, s in shapes.items()}
    (study / "runs" / "base" / "final").mkdir(parents=True)
    save_file(base_state, str(study / "runs" / "base" / "final" / "model.safetensors"))
    (study / "runs" / "base" / "config.yaml").write_text("model: tiny\nmax_tokens: 5000\nlr: 0.001\n")
    drops = {"clm": 0.2, "topk": 0.35 if slm_better else 0.05, "random": 0.15, "stochastic": 0.25}
    accs = {"clm": 0.3, "topk": 0.45 if slm_better else 0.15, "random": 0.28, "stochastic": 0.35}
    runs = []
    shared = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    for seed in seeds:
        arms = [("clm", None, 1.0)] + [("slm", s, r) for r in ratios for s in strategies]
        for arm, strategy, ratio in arms:
            name = f"clm-s{seed}" if arm == "clm" else f"{strategy}-r{ratio:g}-s{seed}"
            key = strategy or "clm"
            jitter = (slm_seed_jitter * (1 if seed % 2 else -1)) if arm == "slm" else 0.0
            run_dir, eval_dir = study / "runs" / name, study / "evals" / name
            for c, (step, tokens) in enumerate(STEPS, 1):
                target = base_target - drops[key] * c - jitter * c + 0.002 * seed
                noisy = base_noisy + np.where(top, -0.4 * c, 0.15 * c) * (1.5 if key == "topk" else 1.0)
                noisy = noisy + rng.normal(0, 0.05, n)
                _eval(eval_dir / f"step_{step:06d}", step, tokens, target, noisy, accs[key] * c / 2 + 0.1)
            final = run_dir / "final"
            final.mkdir(parents=True)
            g = torch.Generator().manual_seed(100 + len(runs))
            if lora:
                save_file({"base_model.model.layer.lora_A.weight": torch.randn(2, 4, generator=g),
                           "base_model.model.layer.lora_B.weight": torch.randn(4, 2, generator=g)},
                          str(final / "adapter_model.safetensors"))
                write_json(final / "adapter_config.json", {"r": 2, "lora_alpha": 4, "peft_type": "LORA"})
            else:
                state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
                state["layer.weight"] = state["layer.weight"] + shared
                save_file(state, str(final / "model.safetensors"))
            rows = [{"type": "train", "step": s, "tokens": s * 100, "loss": 3.0, "noise_share_all": 0.3,
                     **({"noise_share_selected": 0.2 - 0.01 * s} if arm == "slm" else {})} for s in range(1, 21)]
            rows += [{"type": "eval", "step": st, "tokens": t, "loss": 3.0 - drops[key] * c, "ppl": 1.0}
                     for c, (st, t) in enumerate(STEPS, 1)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run_dir / "config.yaml").write_text(f"model: {study / 'runs/base/final'}\nmax_tokens: 2000\n")
            runs.append({"name": name, "arm": arm, "strategy": strategy, "ratio": ratio, "seed": seed,
                         "run_dir": p(run_dir), "eval_dir": p(eval_dir)})
    (study / "study.yaml").write_text("model: tiny\nbase_tokens: 5000\ncontinual_tokens: 2000\n")
    write_json(study / "index.json", {
        "seeds": list(seeds), "ratios": list(ratios), "lora": {"r": 2, "alpha": 4} if lora else None,
        "datasets": {"target": p(study / "data" / "hq_math"), "noisy": p(study / "data" / "web_math")},
        "base": {"run_dir": p(study / "runs/base"), "checkpoint": p(study / "runs/base/final"),
                 "eval_dir": p(study / "evals/base")},
        "reference": {"run_dir": p(study / "runs/reference"), "checkpoint": p(study / "runs/reference/final"),
                      "eval_dir": p(study / "evals/reference")},
        "ref_val_losses": p(study / "evals/reference/step_final/noisy.losses.bin"),
        "runs": runs, "timings": {"base": 1.5, "reference": 0.5, "runs": 3.0}})
    return study
