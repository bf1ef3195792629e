"""A finished study directory (`slm study`, index.json version 2) -> the dict of ``results.json``.

Headline numbers come from the **test** split (``metrics.json["test"]``); tuning choices (the best ratio of
each strategy) from the **validation** split only. Each seed is a whole pipeline (corpus sample, base,
reference, arms); groups (arm kind + strategy + ratio) aggregate over seeds. :func:`collect` runs every
analysis; each ``section_*`` also runs alone for ``slm analyze``. Token-level analyses live in
:mod:`.tokens`, statistics in :mod:`.stats`, the claims in :mod:`.claims`.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..analysis.efficiency import tokens_to_reach
from ..analysis.selection_diag import training_shares
from . import claims as cl, stats, tokens
from .annotations import section_filter
from .cost import section_cost
from .design import section_design
from .results import PROTOCOL, _ERRORS, StudyResults, clean, group_of, needs_reference, public
from .sweep import section_sweep

RESULT_KEYS = ("study", "written_by", "quick", "protocol", "rules", "config", "pipelines", "runs", "groups",
               "best_ratio", "downstream", "data_efficiency", "downstream_efficiency", "cost", "sweep", "design", "filter",
               "overlap", "fig6", "fig6_final", "harder_noise", "dynamics", "buckets", "cosine", "selection",
               "variants", "claims", "findings", "headline", "summary")

def section_config(st: StudyResults) -> dict:
    """Study settings, seeds, ratios, timings (with a total) and the resolved train configs of the first pipeline."""
    def load(f: Path):
        return yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else None

    keys = ("version", "lora", "model", "seq_len", "cpt_tokens", "strategies", "temperature", "temperature_unit",
            "checkpoints", "tune_split", "report_split", "eval_windows", "variants", "variant_ratio", "regime",
            "corpus", "share_base")
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
    """Every arm (main and sweep) with its group, final point and eval curve."""
    keys = ("arm", "strategy", "ratio", "seed", "variant", "hq_ratio", "hq_label", "sweep")
    return {r["name"]: {**{k: r.get(k) for k in keys}, "group": group_of(r), "final": public(c[-1]),
                        "curve": [public(p) for p in c]}
            for r, c in ((r, st.curve(r)) for r in st.all_runs)}


def section_pipelines(st: StudyResults) -> dict:
    out = {}
    for s in st.seeds:
        pl = st.pipeline(s)
        out[str(s)] = {"base": public(st.base_point(s)), "reference": public(st.ref_point(s)),
                       "reference_tokens": st.reference_tokens(s), "scored_tokens": st.scored_tokens(s),
                       "references": {label: public(st.ref_point(s, label))
                                      for label in (pl.get("references") or {})},
                       "data_sizes": pl.get("data_sizes"), "base_seed": pl.get("base_seed", s)}
    return out


METRICS = ("target_loss", "target_ppl", "noisy_loss", "noisy_ppl", "val_target_loss", "own_acc", "ext_acc",
           "own_mc_acc", "own_mc_acc_norm", "own_answer_nll", "ext_mc_acc", "ext_mc_acc_norm", "ext_answer_nll")


def _group(finals: list[dict], **kw) -> dict:
    g = {**kw, **{k: stats.summary([f.get(k) for f in finals]) for k in METRICS}}
    for kind in ("own", "ext"):
        g[f"{kind}_pooled"] = stats.pooled_accuracy([{"correct": f.get(f"{kind}_correct"), "n": f.get(f"{kind}_n")}
                                                     for f in finals if f.get(f"{kind}_correct") is not None])
        for suffix in ("", "_norm"):
            g[f"{kind}_mc{suffix}_pooled"] = stats.pooled_accuracy(
                [{"correct": f.get(f"{kind}_mc_correct{suffix}"), "n": f.get(f"{kind}_mc_n")}
                 for f in finals if f.get(f"{kind}_mc_correct{suffix}") is not None])
    return g


def section_groups(runs: dict, pipelines: dict | None = None) -> dict:
    """Groups over seeds: mean/std/n of every final test metric, pooled accuracy with Wilson CI; reference and base
    (and the sweep's references, ``reference@1:30``)."""
    groups: dict = {}
    for name, r in runs.items():
        groups.setdefault(r["group"], {"arm": r["arm"], "strategy": r["strategy"], "ratio": r["ratio"], "runs": [],
                                       "hq_ratio": r.get("hq_ratio"), "sweep": bool(r.get("sweep")),
                                       **({"variant": r["variant"]} if r.get("variant") else {})})
        groups[r["group"]]["runs"].append(name)
    out = {}
    for key in ("reference", "base"):
        pts = [p[key] for p in (pipelines or {}).values()]
        if pts:
            out[key] = _group(pts, arm=key, strategy=None, ratio=None, runs=[], seeds=list(pipelines))
    main = next((r.get("hq_label") for r in runs.values() if not r.get("sweep")), None)
    labels = {lab for p in (pipelines or {}).values() for lab in (p.get("references") or {})} - {main}
    for lab in sorted(labels):
        pts = [p["references"][lab] for p in pipelines.values() if lab in (p.get("references") or {})]
        out[f"reference@{lab}"] = _group(pts, arm="reference", strategy=None, ratio=None, runs=[], sweep=True,
                                         seeds=list(pipelines))
    for key, g in groups.items():
        out[key] = _group([runs[n]["final"] for n in g["runs"]], **g, seeds=[runs[n]["seed"] for n in g["runs"]])
    return out


def best_ratios(groups: dict) -> dict:
    """Per strategy: the ratio with the lowest mean final *validation* target loss (test is never looked at)."""
    out = {}
    main = {k: g for k, g in groups.items() if g["arm"] == "slm" and not g.get("sweep")}
    for strategy in sorted({g["strategy"] for g in main.values()}):
        cand = {k: g for k, g in main.items() if g["strategy"] == strategy and g["val_target_loss"]["mean"] is not None}
        if cand:
            best = min(cand, key=lambda k: cand[k]["val_target_loss"]["mean"])
            out[strategy] = {"group": best, "ratio": cand[best]["ratio"], "chosen_by": "validation target loss",
                             "validation": {f"{g['ratio']:g}": g["val_target_loss"]["mean"] for g in cand.values()},
                             "test": {f"{g['ratio']:g}": g["target_loss"]["mean"] for g in cand.values()}}
    return out


def section_efficiency(st: StudyResults, runs: dict, metric: str = "target_loss", higher_is_better: bool = False) -> dict:
    """speed-up(t) = t / tokens the arm needs to reach the same seed's CLM value of ``metric`` at t, per CLM
    checkpoint (main arms; an accuracy is reached when it is at least CLM's)."""
    what = metric.replace("_", " ")
    out: dict = {"metric": metric, "definition": f"for each CLM checkpoint t ({what} v), the tokens an arm of the same "
                               "seed needs to reach v (linear interpolation of its eval curve, base at 0 tokens); "
                               "speed-up(t) = t / those tokens. Not reached within the arm's budget T: the tokens "
                               "are > T (a lower bound), so speed-up < t/T (an upper bound), not an estimate.",
                 "runs": {}, "groups": {}}
    sign = -1.0 if higher_is_better else 1.0
    runs = {n: r for n, r in runs.items() if not r.get("sweep")}
    clm = {r["seed"]: n for n, r in runs.items() if r["arm"] == "clm"}
    for name, r in runs.items():
        if r["arm"] == "clm":
            continue
        if r["seed"] not in clm:
            out["runs"][name] = {"error": f"no CLM run with seed {r['seed']}"}
            continue
        c = [(p["tokens"], sign * p[metric]) for p in runs[clm[r["seed"]]]["curve"] if p.get(metric) is not None]
        own = [(p["tokens"], sign * p[metric]) for p in r["curve"] if p.get(metric) is not None]
        if len(c) < 2 or len(own) < 2:
            out["runs"][name] = {"error": f"no {what} curve"}
            continue
        budget = own[-1][0]
        pts = []
        for t, loss in c[1:]:
            need = tokens_to_reach(*zip(*own), loss)
            pts.append({"tokens_clm": t, "value": sign * loss, "tokens_run": need, "reached": need is not None,
                        "speedup": t / need if need else None,
                        "speedup_upper_bound": t / budget if need is None else None})
        fin = pts[-1] if pts else {}
        saved = fin["tokens_clm"] - fin["tokens_run"] if fin.get("reached") else None
        ref, scored = st.reference_tokens(r["seed"]), st.scored_tokens(r["seed"])
        out["runs"][name] = {"baseline": clm[r["seed"]], "curve": pts, "final": fin, "tokens_saved": saved,
                             "reference_tokens": ref, "scored_tokens": scored,
                             "tokens_saved_net": (saved - (ref or 0) - (scored or 0)) if saved is not None
                             and needs_reference(r) else None}  # only SLM by a reference pays for one
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

    st = StudyResults(study_dir)
    runs, pipelines = section_runs(st), section_pipelines(st)
    res: dict = {"study": str(st.dir), "written_by": writer, "quick": st.quick, "protocol": PROTOCOL,
                 "rules": stats.RULES, "config": section_config(st), "pipelines": pipelines, "runs": runs}
    res["groups"] = section_groups(runs, pipelines)
    res["best_ratio"] = best_ratios(res["groups"])
    res["downstream"] = cl.downstream_status(res)
    res["data_efficiency"] = _guard(section_efficiency, st, runs)
    res["downstream_efficiency"] = {d["key"]: _guard(section_efficiency, st, runs, d["key"], not d["lower_is_better"])
                                    for d in res["downstream"] if d["status"] == "usable" and d["kind"] != "exact"
                                    and not d["key"].endswith("_norm")}
    res["cost"] = _guard(section_cost, st, runs, res["data_efficiency"])
    res["sweep"] = section_sweep(res)
    res["design"] = section_design(res)
    res["filter"] = _guard(section_filter, st)
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
