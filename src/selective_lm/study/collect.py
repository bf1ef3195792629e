"""A finished study directory (`slm study`, index.json version 2) -> the dict of ``results.json``.

Headline numbers come from the **test** split (``metrics.json["test"]``); tuning choices (the best ratio of
each strategy) from the **validation** split only. Each seed is a whole pipeline (corpus sample, base,
reference, arms); groups (arm kind + strategy + ratio) aggregate over seeds. :func:`collect` runs every
analysis; each ``section_*`` also runs alone for ``slm analyze``. Token-level analyses live in
:mod:`.tokens`, statistics in :mod:`.stats`, the claims in :mod:`.claims`.
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
from ..files import UserError, read_json
from ..analysis.cosine import flatten_delta, full_delta, lora_delta
from ..analysis.efficiency import tokens_to_reach
from . import stats

DEFAULT_LABELS = {0: "content", 1: "noise", 2: "offtopic", 3: "wrong_solution", 4: "near_duplicate",
                  5: "perturbed_table", 6: "other_notation"}
PROTOCOL = ("Headline numbers are on the test split (metrics.json 'test'); tuning choices are made on the validation "
            "split only: the best ratio of a strategy is the one with the lowest mean final validation target loss "
            "over seeds, and it is then reported on test. Each seed is a whole pipeline (corpus sample, base, "
            "reference, arms); groups aggregate over seeds.")
_ERRORS = (UserError, ValueError, OSError, KeyError, IndexError, TypeError)
RESULT_KEYS = ("study", "written_by", "quick", "protocol", "rules", "config", "pipelines", "runs", "groups",
               "best_ratio", "data_efficiency", "overlap", "fig6", "fig6_final", "harder_noise", "dynamics", "buckets",
               "cosine", "selection", "variants", "claims", "findings", "headline", "summary")
PUBLIC = ("step", "tokens", "target_loss", "target_ppl", "noisy_loss", "noisy_ppl", "val_target_loss",
          "own_acc", "own_correct", "own_n", "ext_acc", "ext_correct", "ext_n")


def clean(obj):
    """JSON round trip: numpy values and paths converted, non-finite floats become None."""
    text = json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, (np.ndarray, np.generic)) else str(o))
    return json.loads(text, parse_constant=lambda _: None)


def load_losses(path) -> np.ndarray:
    """A per-token loss dump as a flat float64 array (UserError when missing)."""
    if not (p := Path(path)).is_file() or not p.with_suffix(".json").is_file():
        raise UserError(f"per-token loss dump not found: {p} (or its .json sidecar): re-run the study's eval stage")
    return np.asarray(load_token_losses(p), dtype=np.float64).reshape(-1)


def topk_mask(excess: np.ndarray, ratio: float) -> np.ndarray:
    """The selection SLM makes at a checkpoint: top-k (k = round(ratio × N)) of the excess loss, as in training."""
    from ..selection import select_tokens

    return select_tokens(torch.from_numpy(np.ascontiguousarray(excess)), ratio, "topk").numpy()


def group_of(run: dict) -> str:
    if run.get("arm") == "variant":
        return f"variant-{run['variant']}"
    return run["arm"] if run.get("arm") != "slm" else f"slm-{run['strategy']}-{float(run['ratio']):g}"


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
    """noise_share_selected / noise_share_all / topk_overlap of the train rows of metrics.jsonl; a curve."""
    rows = [r for r in read_metrics(run_dir) if r.get("type") == "train"]
    out: dict = {}
    for key in ("noise_share_selected", "noise_share_all", "topk_overlap"):
        v = [r[key] for r in rows if r.get(key) is not None]
        out[key] = {"first": v[0], "last": v[-1], "mean": float(np.mean(v)), "n": len(v)} if v else None
    pts = [[r.get("tokens"), r.get("noise_share_selected"), r.get("noise_share_all")] for r in rows
           if r.get("noise_share_all") is not None or r.get("noise_share_selected") is not None]
    out["curve"] = pts[:: max(1, math.ceil(len(pts) / 200))]
    return out


def _point(f: Path) -> dict:
    m, num = read_json(f), re.fullmatch(r"step_(\d+)", f.parent.name)
    test, val, fs = m.get("test") or {}, m.get("validation") or {}, m.get("fewshot") or {}
    t, n, v = test.get("target") or {}, test.get("noisy") or {}, val.get("target") or {}
    own, ext = fs.get("own") or {}, fs.get("external") or {}
    return {"dir": f.parent, "step": int(m.get("step", num.group(1) if num else -1)), "tokens": float(m.get("tokens", 0)),
            "target_loss": t.get("loss"), "target_ppl": t.get("ppl"), "noisy_loss": n.get("loss"),
            "noisy_ppl": n.get("ppl"), "val_target_loss": v.get("loss"),
            "own_acc": own.get("accuracy"), "own_correct": own.get("correct"), "own_n": own.get("n"),
            "ext_acc": ext.get("accuracy"), "ext_correct": ext.get("correct"), "ext_n": ext.get("n")}


def public(p: dict) -> dict:
    return {k: p.get(k) for k in PUBLIC}


class StudyResults:
    """A v2 study directory: index.json, per-seed pipelines, eval points and cached loss dumps."""

    def __init__(self, study_dir):
        self.dir, idx = Path(study_dir), Path(study_dir) / "index.json"
        if not idx.is_file():
            raise UserError(f"{self.dir} is not a finished study directory (no {idx.name}): pass the out "
                            "directory of `slm study` once it has finished")
        try:
            self.index = read_json(idx)
        except ValueError:
            raise UserError(f"{idx} is not valid JSON: re-run `slm study` to rewrite it") from None
        if not isinstance(self.index, dict) or not self.index.get("runs") or not self.index.get("pipelines"):
            raise UserError(f"{idx} lists no pipelines or no runs (study layout v2 expected): re-run `slm study`")
        self.runs: list[dict] = self.index["runs"]
        self.seeds = list(self.index.get("seeds") or sorted({r["seed"] for r in self.runs}))
        self.ratios = [float(r) for r in (self.index.get("ratios") or sorted(
            {float(r["ratio"]) for r in self.runs if r.get("arm") == "slm"}))]
        self._cache: dict = {}
        study_yaml = self.dir / "study.yaml"
        cfg = (yaml.safe_load(study_yaml.read_text(encoding="utf-8")) or {}) if study_yaml.is_file() else {}
        self.study_cfg = cfg if isinstance(cfg, dict) else {}
        self.quick = bool(self.index.get("quick", self.study_cfg.get("quick", False)))

    def path(self, p) -> Path:
        """Resolve an index path: as given, relative to the study dir, or by its tail (a moved study)."""
        q = Path(p)
        cands = ([q] if q.is_absolute() else [self.dir / q, q]) + [self.dir / Path(*q.parts[i:])
                                                                 for i in range(1, len(q.parts))]
        return next((c for c in cands if c.exists()), cands[0])

    def pipeline(self, seed) -> dict:
        pl = self.index["pipelines"].get(str(seed))
        if pl is None:
            raise UserError(f"index.json has no pipeline for seed {seed}: re-run `slm study`")
        return pl

    def evals(self, eval_dir) -> list[dict]:
        """Eval points (one per step_*/metrics.json), sorted by (tokens, step)."""
        d = self.path(eval_dir)
        if d not in self._cache:
            pts = [_point(f) for f in sorted(d.glob("step_*/metrics.json"))]
            if not pts:
                raise UserError(f"no step_*/metrics.json under {d}: re-run the study's eval stage (`slm study`)")
            self._cache[d] = sorted(pts, key=lambda p: (p["tokens"], p["step"]))
        return self._cache[d]

    def base_point(self, seed) -> dict:
        return dict(self.evals(self.pipeline(seed)["base"]["eval_dir"])[-1], tokens=0.0, is_base=True)

    def ref_point(self, seed) -> dict:
        return self.evals(self.pipeline(seed)["reference"]["eval_dir"])[-1]

    def curve(self, run: dict) -> list[dict]:
        """Eval points of a continual run, the base's point of its pipeline first (tokens 0)."""
        pts = [p for p in self.evals(run["eval_dir"]) if p["tokens"] > 0 or p["step"] > 0]
        return [self.base_point(run["seed"])] + pts

    def dump(self, point: dict, name: str = "test.noisy") -> np.ndarray:
        f = Path(point["dir"]) / f"{name}.losses.bin"
        return self._cache[f] if f in self._cache else self._cache.setdefault(f, load_losses(f))

    def ref_noisy(self, seed) -> np.ndarray:
        return self.dump(self.ref_point(seed))

    def excess(self, point: dict, seed) -> np.ndarray:
        """That checkpoint's per-token test-noisy loss minus its pipeline's reference loss on the same tokens."""
        cur, ref = self.dump(point), self.ref_noisy(seed)
        if cur.shape != ref.shape:
            raise UserError(f"{point['dir']} holds {cur.size} test-noisy losses but the reference {ref.size}: "
                            "the eval stage must dump the same windows for every model")
        return cur - ref

    def test_tokens(self, seed, n_tokens: int):
        """(token ids [W, seq_len], provenance [W, seq_len] or None, dataset) aligned with the test-noisy dumps."""
        from ..data import TokenDataset

        key = ("tokens", seed)
        if key not in self._cache:
            ds = TokenDataset(self.path(self.pipeline(seed)["datasets"]["noisy"]))
            win, prov = ds.windows("test"), ds.provenance("test")
            w = n_tokens // ds.seq_len
            if n_tokens % ds.seq_len or w > win.shape[0]:
                raise UserError(f"{n_tokens} test-noisy losses are not whole windows of {ds.seq_len} tokens of "
                                f"{ds.path} ({win.shape[0]} windows): the dumps do not belong to this dataset")
            self._cache[key] = (np.asarray(win[:w, 1:]), None if prov is None else np.asarray(prov[:w, 1:]), ds)
        return self._cache[key]

    def strings(self, seed, n_tokens: int) -> list[str]:
        ids, _, ds = self.test_tokens(seed, n_tokens)
        return list(map(self.decoder(ds), ids.reshape(-1).tolist()))

    @staticmethod
    def decoder(ds):  # token id -> text, cached
        return functools.lru_cache(maxsize=None)(lambda i: ds.tokenizer().decode([int(i)]))

    @staticmethod
    def labels(ds) -> dict:
        return {int(k): v for k, v in (ds.manifest.get("provenance_labels") or DEFAULT_LABELS).items()}

    def reference_tokens(self, seed) -> float | None:
        """Training tokens of the pipeline's reference run: run.json, else metrics.jsonl, else final/slm_meta.json."""
        d = self.path(self.pipeline(seed)["reference"]["run_dir"])
        if (d / "run.json").is_file() and read_json(d / "run.json").get("tokens") is not None:
            return float(read_json(d / "run.json")["tokens"])
        rows = [r["tokens"] for r in read_metrics(d) if r.get("type") == "train" and r.get("tokens") is not None]
        if rows:
            return float(rows[-1])
        meta = d / "final" / "slm_meta.json"
        return float(read_json(meta)["tokens"]) if meta.is_file() and "tokens" in read_json(meta) else None

    def scored_tokens(self, seed) -> float | None:
        """Tokens the reference scored (the scores manifest's shape: windows × seq_len)."""
        m = self.path(self.pipeline(seed)["scores"]) / "manifest.json"
        return float(np.prod(read_json(m)["shape"])) if m.is_file() else None


def section_config(st: StudyResults) -> dict:
    """Study settings, seeds, ratios, timings (with a total) and the resolved train configs of the first pipeline."""
    def load(f: Path):
        return yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else None

    keys = ("version", "lora", "model", "seq_len", "cpt_tokens", "strategies", "temperature", "temperature_unit",
            "checkpoints", "tune_split", "report_split", "eval_windows", "variants", "variant_ratio")
    out = {k: st.index.get(k) for k in keys}
    timings = st.index.get("timings") or {}
    out.update(seeds=st.seeds, ratios=st.ratios, study=st.study_cfg, quick=st.quick, timings=timings,
               timings_total=float(sum(v for v in timings.values() if isinstance(v, (int, float)))))
    pl, clm = st.pipeline(st.seeds[0]), next((r for r in st.runs if r.get("arm") == "clm"), st.runs[0])
    out["datasets"] = pl.get("datasets")
    out["train"] = {k: load(st.path(v["run_dir"]) / "config.yaml") for k, v in (
        ("base", pl["base"]), ("continual", clm), ("reference", pl.get("reference") or {})) if v.get("run_dir")}
    return out


def section_runs(st: StudyResults) -> dict:
    return {r["name"]: {**{k: r.get(k) for k in ("arm", "strategy", "ratio", "seed", "variant")}, "group": group_of(r),
                        "final": public(c[-1]), "curve": [public(p) for p in c]}
            for r, c in ((r, st.curve(r)) for r in st.runs)}


def section_pipelines(st: StudyResults) -> dict:
    out = {}
    for s in st.seeds:
        out[str(s)] = {"base": public(st.base_point(s)), "reference": public(st.ref_point(s)),
                       "reference_tokens": st.reference_tokens(s), "scored_tokens": st.scored_tokens(s)}
    return out


METRICS = ("target_loss", "target_ppl", "noisy_loss", "noisy_ppl", "val_target_loss", "own_acc", "ext_acc")


def _group(finals: list[dict], **kw) -> dict:
    g = {**kw, **{k: stats.summary([f.get(k) for f in finals]) for k in METRICS}}
    for kind in ("own", "ext"):
        g[f"{kind}_pooled"] = stats.pooled_accuracy([{"correct": f.get(f"{kind}_correct"), "n": f.get(f"{kind}_n")}
                                                     for f in finals if f.get(f"{kind}_correct") is not None])
    return g


def section_groups(runs: dict, pipelines: dict | None = None) -> dict:
    """Groups over seeds: mean/std/n of every final test metric, pooled accuracy with Wilson CI; reference and base."""
    groups: dict = {}
    for name, r in runs.items():
        groups.setdefault(r["group"], {"arm": r["arm"], "strategy": r["strategy"], "ratio": r["ratio"], "runs": [],
                                       **({"variant": r["variant"]} if r.get("variant") else {})})
        groups[r["group"]]["runs"].append(name)
    out = {}
    for key in ("reference", "base"):
        pts = [p[key] for p in (pipelines or {}).values()]
        if pts:
            out[key] = _group(pts, arm=key, strategy=None, ratio=None, runs=[], seeds=list(pipelines))
    for key, g in groups.items():
        out[key] = _group([runs[n]["final"] for n in g["runs"]], **g, seeds=[runs[n]["seed"] for n in g["runs"]])
    return out


def best_ratios(groups: dict) -> dict:
    """Per strategy: the ratio with the lowest mean final *validation* target loss (test is never looked at)."""
    out = {}
    for strategy in sorted({g["strategy"] for g in groups.values() if g["arm"] == "slm"}):
        cand = {k: g for k, g in groups.items() if g["arm"] == "slm" and g["strategy"] == strategy
                and g["val_target_loss"]["mean"] is not None}
        if cand:
            best = min(cand, key=lambda k: cand[k]["val_target_loss"]["mean"])
            out[strategy] = {"group": best, "ratio": cand[best]["ratio"], "chosen_by": "validation target loss",
                             "validation": {f"{g['ratio']:g}": g["val_target_loss"]["mean"] for g in cand.values()},
                             "test": {f"{g['ratio']:g}": g["target_loss"]["mean"] for g in cand.values()}}
    return out


def section_efficiency(st: StudyResults, runs: dict) -> dict:
    """speed-up(t) = t / tokens the arm needs to reach the same seed's CLM test target loss at t, per CLM checkpoint."""
    out: dict = {"definition": "for each CLM checkpoint t (test target loss l), the tokens an arm of the same seed "
                               "needs to reach l (linear interpolation of its eval curve, base at 0 tokens); "
                               "speed-up(t) = t / those tokens. Not reached within the arm's budget T: the tokens "
                               "are > T (a lower bound), so speed-up < t/T (an upper bound), not an estimate.",
                 "runs": {}, "groups": {}}
    clm = {r["seed"]: n for n, r in runs.items() if r["arm"] == "clm"}
    for name, r in runs.items():
        if r["arm"] == "clm":
            continue
        if r["seed"] not in clm:
            out["runs"][name] = {"error": f"no CLM run with seed {r['seed']}"}
            continue
        c = [(p["tokens"], p["target_loss"]) for p in runs[clm[r["seed"]]]["curve"] if p["target_loss"] is not None]
        own = [(p["tokens"], p["target_loss"]) for p in r["curve"] if p["target_loss"] is not None]
        budget = own[-1][0]
        pts = []
        for t, loss in c[1:]:
            need = tokens_to_reach(*zip(*own), loss)
            pts.append({"tokens_clm": t, "loss": loss, "tokens_run": need, "reached": need is not None,
                        "speedup": t / need if need else None,
                        "speedup_upper_bound": t / budget if need is None else None})
        fin = pts[-1] if pts else {}
        saved = fin["tokens_clm"] - fin["tokens_run"] if fin.get("reached") else None
        ref, scored = st.reference_tokens(r["seed"]), st.scored_tokens(r["seed"])
        out["runs"][name] = {"baseline": clm[r["seed"]], "curve": pts, "final": fin, "tokens_saved": saved,
                             "reference_tokens": ref, "scored_tokens": scored,
                             "tokens_saved_net": (saved - (ref or 0) - (scored or 0)) if saved is not None
                             and r["arm"] == "slm" else None}  # only SLM needs a reference and a scoring pass
    by_group: dict = {}
    for name, e in out["runs"].items():
        if "curve" in e:
            by_group.setdefault(runs[name]["group"], []).append(e)
    for g, es in by_group.items():
        n_ck = min(len(e["curve"]) for e in es)
        curve = [{"tokens_clm": es[0]["curve"][i]["tokens_clm"],
                  "speedup": stats.summary([e["curve"][i]["speedup"] for e in es]),
                  "unreached": sum(not e["curve"][i]["reached"] for e in es)} for i in range(n_ck)]
        fin = [e["final"].get("speedup") for e in es]
        unreached = sum(s is None for s in fin)
        test = stats.one_sample(fin, 1.0) if not unreached else None
        out["groups"][g] = {"curve": curve, "final": test, "n": len(es), "unreached_final": unreached,
                            "upper_bounds": [e["final"].get("speedup_upper_bound") for e in es
                                             if not e["final"].get("reached")],
                            "tokens_saved": stats.summary([e["tokens_saved"] for e in es]),
                            "tokens_saved_net": stats.summary([e["tokens_saved_net"] for e in es])}
    return out


def section_overlap(st: StudyResults, runs: dict) -> dict:
    """Mean training `topk_overlap` of each SLM arm: top-k = 1 by definition, random ≈ ratio."""
    unit = st.index.get("temperature_unit")
    out = {"temperature": st.index.get("temperature"), "temperature_unit": unit,
           "definition": "topk_overlap = share of the selected tokens that top-k at the same ratio would also "
                         "select, averaged over the training steps; top-k = 1.0 by definition, random ≈ ratio; "
                         "position = (overlap - ratio) / (1 - ratio): 0 = like random, 1 = like top-k"
                         + ("; the stochastic temperature τ is in units of the selection set's excess-loss std"
                            if unit == "std" else ""), "runs": {}, "groups": {}}
    for r in st.runs:
        if r.get("arm") == "slm":
            ov = training_shares(st.path(r["run_dir"]))["topk_overlap"]
            out["runs"][r["name"]] = None if ov is None else ov["mean"]
    for name, v in out["runs"].items():
        out["groups"].setdefault(runs[name]["group"], {"strategy": runs[name]["strategy"],
                                                       "ratio": runs[name]["ratio"], "values": []})["values"].append(v)
    for g in out["groups"].values():
        g["overlap"] = stats.summary(g.pop("values"))
        m, r = g["overlap"]["mean"], float(g["ratio"])
        g["position"] = (m - r) / (1 - r) if m is not None and r < 1 else None
    return out


def _guard(fn, *args):
    try:
        return fn(*args)
    except _ERRORS as e:  # one missing piece must not sink the whole report
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}


def collect(study_dir, writer: str = "slm analyze report") -> dict:
    """All analyses of a finished v2 study as a JSON-serialisable dict (the content of results.json)."""
    from . import claims as cl, tokens

    st = StudyResults(study_dir)
    runs, pipelines = section_runs(st), section_pipelines(st)
    res: dict = {"study": str(st.dir), "written_by": writer, "quick": st.quick, "protocol": PROTOCOL,
                 "rules": stats.RULES, "config": section_config(st), "pipelines": pipelines, "runs": runs}
    res["groups"] = section_groups(runs, pipelines)
    res["best_ratio"] = best_ratios(res["groups"])
    res["data_efficiency"] = _guard(section_efficiency, st, runs)
    res["overlap"] = _guard(section_overlap, st, runs)
    res["fig6"] = _guard(tokens.section_fig6, st)
    res["fig6_final"] = tokens.fig6_final(res["fig6"], runs) if "error" not in res["fig6"] else {}
    for key, fn in (("harder_noise", tokens.section_noise), ("dynamics", tokens.section_dynamics),
                    ("buckets", tokens.section_buckets), ("cosine", tokens.section_cosine),
                    ("selection", tokens.section_selection)):
        res[key] = _guard(fn, st, runs) if key == "harder_noise" else _guard(fn, st)
    res["variants"] = cl.variants(res)
    res["claims"], res["findings"] = cl.claims(res), cl.findings(res)
    res["headline"] = cl.headline(res)
    res["summary"] = cl.summary_text(res)
    return clean(res)
