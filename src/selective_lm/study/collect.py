"""A finished study directory (`slm study`) -> the JSON-serialisable results dict of ``results.json``.

:func:`collect` runs every analysis; each ``section_*`` also runs alone for ``slm analyze``.
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from ..checkpoint import read_metrics
from ..evaluate import load_token_losses
from ..files import UserError, atomic_write_text, read_json
from ..selection import select_tokens
from ..analysis import selection_diag as diag
from ..analysis.buckets import bucket_transitions, high_low_threshold
from ..analysis.cosine import cosine_matrix, flatten_delta, full_delta, lora_delta
from ..analysis.dynamics import CATEGORIES, classify_dynamics, dynamics_examples
from ..analysis.efficiency import data_efficiency

PAPER_DYNAMICS = {"H→H": 0.11, "L→H": 0.12, "H→L": 0.26, "L→L": 0.51}
DYNAMICS_TOLERANCE = 0.10  # largest allowed |share - paper share| for claim 4
MASK_DEFINITION = ("fixed top-k mask over all noisy validation tokens: excess = base-model loss (the common start of "
                   "every continual run) - reference-model loss (ref_val_losses); the k = round(ratio x N) tokens with "
                   "the highest excess are 'selected'. The same mask is applied to every run and checkpoint.")
_ERRORS = (UserError, ValueError, OSError, KeyError)


def clean(obj):
    """JSON round trip: numpy values and paths converted, non-finite floats become None."""
    text = json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, (np.ndarray, np.generic)) else str(o))
    return json.loads(text, parse_constant=lambda _: None)


def load_losses(path) -> np.ndarray:
    """A per-token loss dump as a flat float64 array (UserError when missing)."""
    if not (p := Path(path)).is_file() or not p.with_suffix(".json").is_file():
        raise UserError(f"per-token loss dump not found: {p} (or its .json sidecar): write it with `slm eval dump=DIR`")
    return np.asarray(load_token_losses(p), dtype=np.float64).reshape(-1)


def stats(values) -> dict:
    """Mean and sample std (0 when n = 1) of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    sd = (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) if v else None
    return {"mean": float(np.mean(v)) if v else None, "std": sd, "n": len(v)}


def pearson(x, y) -> float | None:
    """Pearson r over the pairs where both are present; None with < 2 pairs or a constant side."""
    a, b = np.array([(a, b) for a, b in zip(x, y) if a is not None and b is not None] or [(0, 0)], dtype=float).T
    return None if np.ptp(a) == 0 or np.ptp(b) == 0 else float(np.corrcoef(a, b)[0, 1])


def read_state(ckpt) -> dict:
    files = sorted(Path(ckpt).glob("model*.safetensors"))
    if not files:
        raise UserError(f"no model.safetensors in {ckpt}: pass a full checkpoint directory (HF save_pretrained)")
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def checkpoint_delta(ckpt, base_state=None) -> tuple[torch.Tensor, str]:
    """Flattened update of a checkpoint dir: B·A·α/r for a PEFT adapter, else weights - ``base_state``."""
    d = Path(ckpt)
    if not d.is_dir():
        raise UserError(f"checkpoint directory not found: {d}: pass a run's final/ or checkpoints/step_N/ dir")
    if (d / "adapter_model.safetensors").is_file():
        if not (d / "adapter_config.json").is_file():
            raise UserError(f"{d / 'adapter_config.json'} is missing: a LoRA adapter dir needs it")
        cfg = read_json(d / "adapter_config.json")
        delta = lora_delta(load_file(str(d / "adapter_model.safetensors")), float(cfg.get("lora_alpha", cfg["r"])),
                           int(cfg["r"]), use_rslora=bool(cfg.get("use_rslora", False)))
        return flatten_delta(delta).float(), "lora"
    if base_state is None:
        raise UserError(f"{d} is a full checkpoint: pass the base checkpoint it started from (--base DIR)")
    return flatten_delta(full_delta(base_state, read_state(d))).float(), "full"


def training_shares(run_dir) -> dict:
    """noise_share_selected / noise_share_all of the train rows of metrics.jsonl: first, last, mean; a curve."""
    rows = [r for r in read_metrics(run_dir) if r.get("type") == "train"]
    out: dict = {}
    for key in ("noise_share_selected", "noise_share_all"):
        v = [r[key] for r in rows if r.get(key) is not None]
        out[key] = {"first": v[0], "last": v[-1], "mean": float(np.mean(v)), "n": len(v)} if v else None
    pts = [[r.get("tokens"), r.get("noise_share_selected"), r.get("noise_share_all")] for r in rows
           if r.get("noise_share_all") is not None or r.get("noise_share_selected") is not None]
    out["curve"] = pts[:: max(1, math.ceil(len(pts) / 200))]
    return out


class StudyResults:
    """A study directory: index.json, eval points and cached loss dumps."""

    def __init__(self, study_dir):
        self.dir, idx = Path(study_dir), Path(study_dir) / "index.json"
        if not idx.is_file():
            raise UserError(f"{self.dir} is not a finished study directory (no {idx.name}): pass the out "
                            "directory of `slm study` once it has finished")
        try:
            self.index = read_json(idx)
        except ValueError:
            raise UserError(f"{idx} is not valid JSON: re-run `slm study` to rewrite it") from None
        if not isinstance(self.index, dict) or "base" not in self.index or not self.index.get("runs"):
            raise UserError(f"{idx} lists no base or no runs: re-run `slm study` to finish the study")
        self.runs: list[dict] = self.index["runs"]
        self.seeds = list(self.index.get("seeds") or sorted({r.get("seed", 0) for r in self.runs}))
        self.ratios = [float(r) for r in (self.index.get("ratios") or sorted(
            {float(r["ratio"]) for r in self.runs if r.get("arm") != "clm"}))]
        self._cache: dict = {}

    def path(self, p) -> Path:
        """Resolve an index path: as given, relative to the study dir, or by its tail (a moved study)."""
        q = Path(p)
        cands = ([q] if q.is_absolute() else [self.dir / q, q]) + [self.dir / Path(*q.parts[i:])
                                                                 for i in range(1, len(q.parts))]
        return next((c for c in cands if c.exists()), cands[0])

    def evals(self, eval_dir) -> list[dict]:
        """Eval points (one per step_*/metrics.json), sorted by (tokens, step)."""
        d = self.path(eval_dir)
        pts: dict[int, dict] = {}
        for f in sorted(d.glob("step_*/metrics.json")):
            m, num = read_json(f), re.fullmatch(r"step_(\d+)", f.parent.name)
            step = int(m.get("step", num.group(1) if num else 0) or 0)
            t, n, fs = m.get("target") or {}, m.get("noisy") or {}, m.get("fewshot") or {}
            pts.setdefault(step, {"dir": f.parent, "step": step, "tokens": float(m.get("tokens") or 0),
                                  "target_loss": t.get("loss"), "target_ppl": t.get("ppl"), "noisy_loss": n.get("loss"),
                                  "noisy_ppl": n.get("ppl"), "accuracy": fs.get("accuracy")})
        if not pts:
            raise UserError(f"no step_*/metrics.json under {d}: re-run the study's eval stage (`slm study`)")
        return sorted(pts.values(), key=lambda p: (p["tokens"], p["step"]))

    def base_point(self) -> dict:
        return self._cache.get("base") or self._cache.setdefault(
            "base", dict(self.evals(self.index["base"]["eval_dir"])[-1], tokens=0.0, is_base=True))

    def curve(self, run: dict) -> list[dict]:
        """Eval points of a continual run, the base's point first (tokens 0)."""
        pts = self.evals(run["eval_dir"])
        return pts if pts[0]["step"] == 0 else [self.base_point()] + pts

    def noisy(self, point: dict) -> np.ndarray:
        f = Path(point["dir"]) / "noisy.losses.bin"
        return self._cache[f] if f in self._cache else self._cache.setdefault(f, load_losses(f))

    def masks(self) -> tuple[np.ndarray, dict[float, np.ndarray]]:
        """Excess (base - reference) on the noisy validation tokens and the fixed top-k mask per ratio."""
        if "masks" not in self._cache:
            base, ref_key = self.noisy(self.base_point()), self.index.get("ref_val_losses")
            if not ref_key:
                raise UserError(f"{self.dir / 'index.json'} has no ref_val_losses: re-run `slm study`")
            ref = load_losses(self.path(ref_key))
            if ref.shape != base.shape:
                raise UserError(f"{self.path(ref_key)} holds {ref.size} losses but the base's noisy dump "
                                f"{base.size}: re-run the reference eval on the same validation windows")
            scores = torch.from_numpy(base - ref)
            self._cache["masks"] = (base - ref, {r: select_tokens(scores, r, "topk").numpy() for r in self.ratios})
        return self._cache["masks"]

    def val_tokens(self, n_tokens: int):
        """(token ids [W, seq_len], provenance [W, seq_len] or None, dataset) aligned with the noisy dumps."""
        from ..data import TokenDataset

        ds = TokenDataset(self.path(self.index["datasets"]["noisy"]))
        win, prov = ds.windows("validation"), ds.provenance("validation")
        w = n_tokens // ds.seq_len
        if n_tokens % ds.seq_len or w > win.shape[0]:
            raise UserError(f"{n_tokens} noisy validation losses are not whole windows of {ds.seq_len} tokens of "
                            f"{ds.path} ({win.shape[0]} windows): the dumps do not belong to this dataset")
        return np.asarray(win[:w, 1:]), (None if prov is None else np.asarray(prov[:w, 1:])), ds

    @staticmethod
    def decoder(ds):  # token id -> text, cached
        return functools.lru_cache(maxsize=None)(lambda i: ds.tokenizer().decode([int(i)]))
    @staticmethod
    def labels(ds) -> dict:
        return {int(k): v for k, v in (ds.manifest.get("provenance_labels") or diag.DEFAULT_PROVENANCE_LABELS).items()}


def section_config(st: StudyResults) -> dict:
    """seeds, ratios, lora, timings, datasets, study.yaml and the resolved train configs (base, CLM, reference)."""
    def load(f: Path):
        return yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else None

    out = {k: st.index.get(k) for k in ("lora", "timings", "datasets", "model", "seq_len", "cpt_tokens", "strategies")}
    out.update(seeds=st.seeds, ratios=st.ratios, study=load(st.dir / "study.yaml"))
    clm = next((r for r in st.runs if r.get("arm") == "clm"), st.runs[0])
    out["train"] = {k: load(st.path(v["run_dir"]) / "config.yaml") for k, v in (
        ("base", st.index["base"]), ("continual", clm), ("reference", st.index.get("reference") or {}))
        if v.get("run_dir")}
    return out


def _public(p: dict) -> dict:
    return {k: p[k] for k in ("step", "tokens", "target_loss", "target_ppl", "noisy_loss", "noisy_ppl", "accuracy")}


def section_runs(st: StudyResults) -> dict:
    return {r["name"]: {**{k: r.get(k) for k in ("arm", "strategy", "ratio", "seed")}, "final": _public(c[-1]),
                        "group": "clm" if r.get("arm") == "clm" else f"slm-{r['strategy']}-{float(r['ratio']):g}",
                        "curve": [_public(p) for p in c]}
            for r, c in ((r, st.curve(r)) for r in st.runs)}


def section_efficiency(runs: dict) -> dict:
    out = {"runs": {}, "definition": "tokens an SLM run needs to reach the final target-domain validation loss of "
                                     "the same seed's CLM run (interpolated); speedup = CLM tokens / SLM tokens"}
    clm = {r["seed"]: n for n, r in runs.items() if r["arm"] == "clm"}
    for name, r in runs.items():
        if r["arm"] != "clm" and r["seed"] not in clm:
            out["runs"][name] = {"error": f"no CLM run with seed {r['seed']}"}
        elif r["arm"] != "clm":
            base, run = ([(p["tokens"], p["target_loss"]) for p in runs[n]["curve"] if p["target_loss"] is not None]
                         for n in (clm[r["seed"]], name))
            de = data_efficiency(*zip(*base), *zip(*run)) if base and run else {"error": "no target losses"}
            out["runs"][name] = {"baseline": clm[r["seed"]], **de, "reached_at_start": de.get("speedup") == math.inf}
    return out


def section_groups(runs: dict, efficiency: dict | None = None) -> dict:
    eff, groups = (efficiency or {}).get("runs", {}), {}
    for name, r in runs.items():
        groups.setdefault(r["group"], {"arm": r["arm"], "strategy": r["strategy"], "ratio": r["ratio"], "runs": []})
        groups[r["group"]]["runs"].append(name)
    for g in groups.values():
        fin = [runs[n]["final"] for n in g["runs"]]
        for k in ("target_ppl", "noisy_ppl", "accuracy", "target_loss", "tokens"):
            g[k] = stats([f[k] for f in fin])
        sp = [eff.get(n, {}).get("speedup") for n in g["runs"]]
        g["speedup"] = stats(sp) if g["arm"] != "clm" and all(s is not None for s in sp) else None
        g["seeds"] = [runs[n]["seed"] for n in g["runs"]]
        g["note"] = ("n=1: std is 0 (single seed, no variance estimate)" if len(fin) == 1
                     else f"mean ± sample std over {len(fin)} seeds")
    return groups


def section_dynamics(st: StudyResults, k: int = 5, threshold: float = 0.2) -> dict:
    out = {"paper": PAPER_DYNAMICS, "threshold": threshold, "runs": {},
           "definition": "per noisy validation token, a least-squares line over the checkpoints x=0..n (the base at "
                         "x=0); ΔL = fitted end - fitted start; ΔL<-thr H→L, ΔL>thr L→H, else L→L if the last loss "
                         "<= the last checkpoint's mean loss, else H→H"}
    strings = None
    for run in st.runs:
        pts = st.curve(run)
        res = classify_dynamics(np.stack([st.noisy(p) for p in pts]), threshold)
        if strings is None:
            try:
                ids, _, ds = st.val_tokens(res.categories.size)
                strings = list(map(st.decoder(ds), ids.reshape(-1).tolist()))
            except _ERRORS as e:
                strings, out["examples_error"] = [], str(e)
        own = [p for p in pts if not p.get("is_base")]  # the run's own checkpoints, as in the paper
        within = classify_dynamics(np.stack([st.noisy(p) for p in own]), threshold) if len(own) >= 2 else None
        out["runs"][run["name"]] = {
            "arm": run.get("arm"), "checkpoints": len(pts), "tokens": [p["tokens"] for p in pts],
            "n_tokens": int(res.categories.size), "shares": res.shares, "counts": res.counts,
            "last_mean": res.last_mean, "examples": dynamics_examples(res, strings, k=k) if strings else None,
            "in_training": {"checkpoints": len(own), "shares": within.shares, "counts": within.counts}
            if within else None}
    clm = [r for r in out["runs"].values() if r["arm"] == "clm"]
    out["clm_mean_shares"] = {c: float(np.mean([r["shares"][c] for r in clm])) for c in CATEGORIES} if clm else None
    within = [r["in_training"]["shares"] for r in clm if r["in_training"]]
    out["clm_mean_shares_in_training"] = ({c: float(np.mean([s[c] for s in within])) for c in CATEGORIES}
                                          if within else None)
    out["in_training_definition"] = ("the same rule over the run's own checkpoints only (the base excluded): the "
                                     "paper's checkpoints start 1B tokens into training on the domain, after the "
                                     "first large drop that the base point adds here")
    return out


def section_buckets(st: StudyResults, quantile: float = 0.7) -> dict:
    final, base = {r["name"]: st.noisy(st.curve(r)[-1]) for r in st.runs}, st.noisy(st.base_point())
    clm = {r.get("seed"): r["name"] for r in st.runs if r.get("arm") == "clm"}
    thr = {s: high_low_threshold(final[n], quantile) for s, n in clm.items()}
    out = {"quantile": quantile, "thresholds": {str(s): t for s, t in thr.items()}, "runs": {},
           "definition": f"high = loss > the {quantile:g} quantile of the same seed's CLM final per-token losses on "
                         "the noisy validation tokens; counts of tokens moving between the buckets"}
    for r in st.runs:
        if (s := r.get("seed")) not in thr:
            out["runs"][r["name"]] = {"error": f"no CLM run with seed {s} to set the threshold"}
            continue
        e = out["runs"][r["name"]] = {"threshold": thr[s],
                                      "vs_base": bucket_transitions(base, final[r["name"]], thr[s])}
        if r.get("arm") != "clm":
            e["vs_clm"] = bucket_transitions(final[clm[s]], final[r["name"]], thr[s])
    return out


def section_selected(st: StudyResults) -> dict:
    _, masks = st.masks()
    out = {"definition": MASK_DEFINITION, "ratios": {}}
    for ratio, mask in masks.items():
        def row(p, mask=mask):
            return {"step": p["step"], "tokens": p["tokens"], "accuracy": p["accuracy"],
                    **diag.split_losses(st.noisy(p), mask)}
        runs = {r["name"]: [row(p) for p in st.curve(r)] for r in st.runs}
        pts = [row(st.base_point())] + [x for r in st.runs for x, p in zip(runs[r["name"]], st.curve(r))
                                        if not p.get("is_base")]
        acc = [p["accuracy"] for p in pts]
        out["ratios"][f"{ratio:g}"] = {
            "ratio": ratio, "n_selected": int(mask.sum()), "n_tokens": int(mask.size), "runs": runs,
            "correlation": {"accuracy_vs_selected": pearson(acc, [p["selected"] for p in pts]),
                            "accuracy_vs_unselected": pearson(acc, [p["unselected"] for p in pts]),
                            "n_points": sum(a is not None for a in acc)}}
    return out


def section_cosine(st: StudyResults) -> dict:
    base_state, vecs, kinds = None, {}, {}
    for r in st.runs:
        ckpt = st.path(r["checkpoint"]) if r.get("checkpoint") else st.path(r["run_dir"]) / "final"
        if base_state is None and not (ckpt / "adapter_model.safetensors").is_file():
            base_state = read_state(st.path(st.index["base"]["checkpoint"]))
        vecs[r["name"]], kinds[r["name"]] = checkpoint_delta(ckpt, base_state)
    names, mat = cosine_matrix(vecs)
    return {"definition": "cosine between update directions: Δθ = final - base (full) or ΔW = B·A·α/r (LoRA), "
                          "flattened over all updated tensors", "names": names, "kinds": kinds, "matrix": mat}


def section_selection(st: StudyResults) -> dict:
    excess, masks = st.masks()
    out: dict = {"definition": "training: noise share of the selected tokens vs of all tokens, from metrics.jsonl; "
                               "validation: " + MASK_DEFINITION, "validation": {}, "runs": {}}
    try:
        ids, prov, ds = st.val_tokens(excess.size)
        decode, labels = st.decoder(ds), st.labels(ds)
        for ratio, mask in masks.items():
            out["validation"][f"{ratio:g}"] = {
                "provenance": diag.provenance_shares(mask, prov.reshape(-1), labels) if prov is not None else None,
                "tokens": diag.most_least_selected(ids.reshape(-1), mask, decode)}
    except _ERRORS as e:
        out["validation_error"] = str(e)
    for r in st.runs:
        tr = training_shares(st.path(r["run_dir"]))
        if r.get("arm") == "clm":
            tr = {"noise_share_all": tr["noise_share_all"], "curve": [[t, a] for t, _, a in tr["curve"]]}
            out["runs"][r["name"]] = {"arm": "clm", "training": tr}
        else:
            key = f"{float(r['ratio']):g}"
            out["runs"][r["name"]] = {"arm": r.get("arm"), "strategy": r.get("strategy"), "training": tr,
                                      "validation_ratio": key, "validation": out["validation"].get(key)}
    return out


def _cmp(a: dict | None, b: dict | None, lower_better: bool, what: str, names: tuple[str, str]):
    """Compare group stats a vs b: (a better beyond noise?, improvement, evidence text) or None."""
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return None
    diff = (b["mean"] - a["mean"]) if lower_better else (a["mean"] - b["mean"])
    pooled, multi = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2), max(a["n"], b["n"]) > 1
    better = diff > pooled if multi else diff > 0
    noise = f"pooled std {pooled:.3f}; counts only beyond it" if multi else "single seed: no variance estimate"
    a_s, b_s = (f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})" for s in (a, b))
    text = f"{what} {names[0]} {a_s} vs {names[1]} {b_s} (improvement {diff:+.3f}; {noise})"
    return better, diff, text, pooled * multi


def claims(res: dict) -> list[dict]:
    """The paper's claims checked against the numbers: [{claim, holds, evidence}]."""
    g = res.get("groups") or {}
    clm = g.get("clm")
    topk = {k: v for k, v in g.items() if v["strategy"] == "topk" and v["target_ppl"]["mean"] is not None}
    ok = clm and clm["target_ppl"]["mean"] is not None
    best = min(topk, key=lambda k: topk[k]["target_ppl"]["mean"]) if topk and ok else None
    c1 = {"claim": "SLM beats CLM on target-domain quality at equal tokens", "holds": None,
          "evidence": "no top-k SLM group or no CLM group with a final target perplexity"}
    if best:
        p = _cmp(topk[best]["target_ppl"], clm["target_ppl"], True, "target ppl", (best, "clm"))
        a = _cmp(topk[best]["accuracy"], clm["accuracy"], False, "few-shot accuracy", (best, "clm"))
        acc_ok = a is None or a[1] >= -a[3]  # accuracy not lower (beyond the pooled std with several seeds)
        c1["holds"] = bool(p[0] and acc_ok)
        c1["evidence"] = (f"best top-k group {best}: {p[2]}" + (f"; {a[2]}" if a else "; no accuracy") +
                          ("" if c1["holds"] else ". SLM does not beat CLM here" +
                           (" (perplexity not better beyond noise)" if not p[0] else " (accuracy lower)")))
    c2 = {"claim": "SLM reaches CLM's final target-domain loss with fewer tokens", "holds": None,
          "evidence": "no top-k SLM group or no CLM group"}
    if best:
        eff = [((res.get("data_efficiency") or {}).get("runs", {}).get(n) or {}, n) for n in topk[best]["runs"]]
        sp = [math.inf if e.get("reached_at_start") else e.get("speedup") for e, _ in eff]
        txt = "; ".join(f"{n}: {e['speedup']:.2f}× ({e['tokens_run']:.0f} vs {e['tokens_baseline']:.0f} tokens to "
                        f"loss {e['target']:.4f})" if e.get("speedup") else f"{n}: " + (
                            "at CLM's final loss from the start" if e.get("reached_at_start") else
                            "never reaches CLM's final loss") for e, n in eff)
        fin = [s for s in sp if s is not None and math.isfinite(s)] or [math.inf]
        m, sd = float(np.mean(fin)), float(np.std(fin, ddof=1)) if len(fin) > 1 else 0.0
        c2["holds"] = None not in sp and (bool(m - 1 > sd) if len(sp) > 1 else bool(m > 1))
        txt += "" if None in sp else f"; mean speedup {m:.2f}×" + (
            f" ± {sd:.2f} (must exceed 1 by more than the std)" if len(sp) > 1 else " (single seed)")
        c2["evidence"] = f"group {best}: {txt}" + ("" if c2["holds"] else ". SLM does not get there with fewer tokens")
    c3 = {"claim": "top-k beats random at the same ratio", "holds": None,
          "evidence": "no ratio has both a top-k and a random group"}
    per = [c for r in (res.get("config") or {}).get("ratios") or [] if (c := _cmp(
        (g.get(f"slm-topk-{r:g}") or {}).get("target_ppl"), (g.get(f"slm-random-{r:g}") or {}).get("target_ppl"),
        True, f"ratio {r:g}: target ppl", ("top-k", "random")))]
    if per:
        c3["holds"] = all(c[0] for c in per)
        c3["evidence"] = "; ".join(c[2] + (" → top-k better" if c[0] else " → top-k not better") for c in per)
    c4 = {"claim": "token loss dynamics shares resemble the paper's 11/12/26/51%", "holds": None,
          "evidence": "no token loss dynamics for a CLM run"}
    dyn = res.get("dynamics") or {}
    variants = [(label, sh) for label, sh in (("from the base", dyn.get("clm_mean_shares")),
                                              ("within training", dyn.get("clm_mean_shares_in_training"))) if sh]
    if variants:
        parts, holds = [], []
        for label, sh in variants:
            dev = max(abs(sh[c] - PAPER_DYNAMICS[c]) for c in CATEGORIES)
            holds.append(dev <= DYNAMICS_TOLERANCE)
            parts.append(f"CLM shares {label}: " + ", ".join(f"{c} {sh[c]:.1%} (paper {PAPER_DYNAMICS[c]:.0%})"
                                                              for c in CATEGORIES)
                         + f"; largest deviation {dev:.1%}")
        c4["holds"] = bool(all(holds))
        c4["evidence"] = "; ".join(parts) + f" (tolerance {DYNAMICS_TOLERANCE:.0%}; must hold for both)"
    return [c1, c2, c3, c4]


def _guard(fn, *args):
    try:
        return fn(*args)
    except _ERRORS as e:  # one missing piece must not sink the whole report
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}


def collect(study_dir) -> dict:
    """All analyses of a finished study as a JSON-serialisable dict (the content of results.json)."""
    st = StudyResults(study_dir)
    runs = section_runs(st)
    ref = st.index.get("reference") or {}
    res: dict = {"study": str(st.dir), "config": section_config(st), "base": _public(st.base_point()),
                 "reference": _guard(lambda: _public(st.evals(ref["eval_dir"])[-1])), "runs": runs}
    res["data_efficiency"] = _guard(section_efficiency, runs)
    res["groups"] = section_groups(runs, res["data_efficiency"])
    for key, fn in (("dynamics", section_dynamics), ("buckets", section_buckets),
                    ("selected_vs_unselected", section_selected), ("cosine", section_cosine),
                    ("selection", section_selection)):
        res[key] = _guard(fn, st)
    res["claims"] = claims(res)
    return clean(res)


def write_selection_html(study_dir, out_path, max_windows: int = 12) -> Path:
    """Noisy validation text of the first windows, top-k-selected tokens (largest ratio, fixed mask) highlighted."""
    st = StudyResults(study_dir)
    excess, masks = st.masks()
    ratio = max(masks)  # ValueError when the study has no SLM ratio
    ids, prov, ds = st.val_tokens(excess.size)
    decode, labels, seq = st.decoder(ds), {**st.labels(ds), -1: "window separator"}, ids.shape[1]
    toks, sel, exc, pv = [], [], [], []
    for w in range(min(max_windows, ids.shape[0])):
        sl = slice(w * seq, (w + 1) * seq)
        toks += [("\n\n" if w else "") + f"──── window {w} ────\n"] + [decode(int(i)) for i in ids[w]]
        sel += [False] + masks[ratio][sl].tolist()
        exc += [float("nan")] + excess[sl].tolist()
        pv += [-1] + (prov[w].tolist() if prov is not None else [0] * seq)
    title = f"Selected tokens at ratio {ratio:g} (top-k by base - reference excess loss)"
    page = diag.selection_html(toks, sel, title=title, excess=exc, provenance=pv if prov is not None else None,
                               provenance_labels=labels)
    atomic_write_text(out_path, page)
    return Path(out_path)
