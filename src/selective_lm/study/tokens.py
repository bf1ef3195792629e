"""Token-level analyses of a v2 study on the **test noisy** tokens (per-token loss dumps).

* :func:`section_fig6` - paper Fig. 6/7: at each checkpoint of each run, the tokens SLM itself would select at
  that checkpoint (top-k of that checkpoint's loss minus the pipeline's reference loss) and the mean loss of the
  selected and unselected tokens; accuracy-vs-loss correlations over checkpoints above the accuracy floor.
* :func:`section_noise` - which kinds of noise SLM drops (provenance labels 0..6).
* :func:`section_dynamics`, :func:`section_buckets`, :func:`section_cosine`, :func:`write_selection_html`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis import selection_diag as diag
from ..analysis.buckets import bucket_transitions, high_low_threshold
from ..analysis.cosine import checkpoint_delta, cosine_matrix, read_state
from ..analysis.dynamics import CATEGORIES, classify_dynamics, dynamics_examples
from ..analysis.selection_diag import topk_mask, training_shares
from ..files import atomic_write_text
from . import stats
from .results import _ERRORS, StudyResults

PAPER_DYNAMICS = {"H→H": 0.11, "L→H": 0.12, "H→L": 0.26, "L→L": 0.51}
DYNAMICS_TOLERANCE = 0.10  # largest allowed |share - paper share| for claim (d)
FIG6_DEFINITION = ("at each checkpoint of each run (SLM, CLM, baselines; the base at 0 tokens), excess = that "
                   "checkpoint's per-token loss on the test noisy tokens minus the same pipeline's reference loss on "
                   "the same tokens; the top-k (k = round(ratio × N)) tokens by excess are 'selected' (the selection "
                   "SLM would make at that checkpoint); mean loss of the selected and of the unselected tokens")
CAVEAT = ("checkpoints of one run are not independent samples: the p-values overstate the evidence")


# the downstream metrics Fig. 7 relates to the token losses, measured at every checkpoint
FIG7_METRICS = ("own_mc_acc", "own_answer_nll", "ext_mc_acc", "ext_answer_nll")


def _split(st: StudyResults, point: dict, seed, ratio: float) -> dict:
    loss = st.dump(point)
    mask = topk_mask(st.excess(point, seed), ratio)
    return {"step": point["step"], "tokens": point["tokens"], **{k: point.get(k) for k in FIG7_METRICS},
            "is_base": bool(point.get("is_base")), **diag.split_losses(loss, mask)}


def section_fig6(st: StudyResults) -> dict:
    """Fig. 6 (selected and unselected token loss over training) and Fig. 7 (a downstream metric against them:
    Pearson r over every checkpoint of every main arm, the base excluded)."""
    out: dict = {"definition": FIG6_DEFINITION, "caveat": CAVEAT, "metrics": list(FIG7_METRICS), "ratios": {}}
    for ratio in st.ratios:
        runs = {r["name"]: [_split(st, p, r["seed"], ratio) for p in st.curve(r)] for r in st.runs}
        pts = [x for rows in runs.values() for x in rows if not x["is_base"]]
        corr = {}
        for key in FIG7_METRICS:
            have = [x for x in pts if x[key] is not None]
            if len(have) < 3:
                corr[key] = {"computed": False, "reason": "not measured at enough checkpoints", "n": len(have)}
                continue
            v = [x[key] for x in have]
            corr[key] = {"computed": True, "n": len(have), "selected": stats.pearson(v, [x["selected"] for x in have]),
                         "unselected": stats.pearson(v, [x["unselected"] for x in have])}
        out["ratios"][f"{ratio:g}"] = {"ratio": ratio, "runs": runs, "correlation": corr}
    return out


def fig6_final(fig6: dict, runs: dict) -> dict:
    """Per ratio and group: final selected / unselected loss over seeds; which group has the lowest selected loss."""
    out = {}
    for key, d in (fig6.get("ratios") or {}).items():
        groups: dict = {}
        for name, rows in d["runs"].items():
            g = groups.setdefault(runs[name]["group"], {"selected": [], "unselected": []})
            g["selected"].append(rows[-1]["selected"])
            g["unselected"].append(rows[-1]["unselected"])
        summ = {g: {k: stats.summary(v) for k, v in s.items()} for g, s in groups.items()}
        have = {g: s["selected"]["mean"] for g, s in summ.items() if s["selected"]["mean"] is not None}
        out[key] = {"groups": summ, "raw": groups, "lowest_selected": min(have, key=have.get) if have else None}
    return out


def section_dynamics(st: StudyResults, k: int = 5, threshold: float = 0.2) -> dict:
    out = {"paper": PAPER_DYNAMICS, "threshold": threshold, "tolerance": DYNAMICS_TOLERANCE, "runs": {},
           "definition": "per test noisy token, a least-squares line over the checkpoints x=0..n (the base at x=0); "
                         "ΔL = fitted end - fitted start; ΔL<-thr H→L, ΔL>thr L→H, else L→L if the last loss <= "
                         "the last checkpoint's mean loss, else H→H. Examples show the observed losses at the first "
                         "and last checkpoint.",
           "in_training_definition": "the same rule over the run's own checkpoints only (the base excluded): the "
                                     "paper's checkpoints start 1B tokens into training on the domain, after the "
                                     "first large drop that the base point adds here"}
    for run in st.runs:
        pts = st.curve(run)
        res = classify_dynamics(np.stack([st.dump(p) for p in pts]), threshold)
        try:
            ex = dynamics_examples(res, st.strings(run["seed"], res.categories.size), k=k)
            ex = {c: [{**e, "observed_first": e["trajectory"][0], "observed_last": e["trajectory"][-1]}
                      for e in v] for c, v in ex.items()}
        except _ERRORS as e:
            ex, out["examples_error"] = None, str(e)
        own = [p for p in pts if not p.get("is_base")]
        within = classify_dynamics(np.stack([st.dump(p) for p in own]), threshold) if len(own) >= 2 else None
        out["runs"][run["name"]] = {
            "arm": run.get("arm"), "seed": run.get("seed"), "checkpoints": len(pts), "n_tokens": int(res.categories.size),
            "shares": res.shares, "counts": res.counts, "last_mean": res.last_mean, "examples": ex,
            "in_training": {"checkpoints": len(own), "shares": within.shares, "counts": within.counts}
            if within else None}
    clm = [r for r in out["runs"].values() if r["arm"] == "clm"]
    out["clm_mean_shares"] = {c: float(np.mean([r["shares"][c] for r in clm])) for c in CATEGORIES} if clm else None
    within = [r["in_training"]["shares"] for r in clm if r["in_training"]]
    out["clm_mean_shares_in_training"] = ({c: float(np.mean([s[c] for s in within])) for c in CATEGORIES}
                                          if within else None)
    out["clm_runs"] = len(clm)
    return out


def section_buckets(st: StudyResults, quantile: float = 0.7) -> dict:
    final = {r["name"]: st.dump(st.curve(r)[-1]) for r in st.runs}
    clm = {r["seed"]: r["name"] for r in st.runs if r.get("arm") == "clm"}
    thr = {s: high_low_threshold(final[n], quantile) for s, n in clm.items()}
    out = {"quantile": quantile, "thresholds": {str(s): t for s, t in thr.items()}, "runs": {},
           "definition": f"high = loss > the {quantile:g} quantile of the same seed's CLM final per-token losses on "
                         "the test noisy tokens; counts of tokens moving between the buckets"}
    for r in st.runs:
        if (s := r["seed"]) not in thr:
            out["runs"][r["name"]] = {"error": f"no CLM run with seed {s} to set the threshold"}
            continue
        e = out["runs"][r["name"]] = {"threshold": thr[s],
                                      "vs_base": bucket_transitions(st.dump(st.base_point(s)), final[r["name"]], thr[s])}
        if r.get("arm") != "clm":
            e["vs_clm"] = bucket_transitions(final[clm[s]], final[r["name"]], thr[s])
    return out


def section_cosine(st: StudyResults) -> dict:
    """Per seed (runs of different seeds start from different bases): cosine between update directions."""
    out: dict = {"definition": "cosine between update directions: Δθ = final - base (full) or ΔW = B·A·α/r (LoRA), "
                               "flattened over all updated tensors; per seed, since each seed has its own base",
                 "seeds": {}}
    for s in st.seeds:
        base_state, vecs, kinds = None, {}, {}
        for r in (r for r in st.runs if r["seed"] == s):
            ckpt = st.path(r["checkpoint"]) if r.get("checkpoint") else st.path(r["run_dir"]) / "final"
            if base_state is None and not (ckpt / "adapter_model.safetensors").is_file():
                base_state = read_state(st.path(st.pipeline(s)["base"]["checkpoint"]))
            vecs[r["name"]], kinds[r["name"]] = checkpoint_delta(ckpt, base_state)
        names, mat = cosine_matrix(vecs)
        out["seeds"][str(s)] = {"names": names, "kinds": kinds, "matrix": mat}
    first = out["seeds"][str(st.seeds[0])]
    out.update(names=first["names"], kinds=first["kinds"], matrix=first["matrix"])
    return out


def section_noise(st: StudyResults, runs: dict) -> dict:
    """Reference loss per provenance label; the share of each label's tokens each SLM arm selects (final checkpoint)."""
    out: dict = {"definition": "test noisy tokens; reference = the pipeline's reference model; selection = "
                               "the one SLM would make at the arm's final checkpoint (" + FIG6_DEFINITION + ")",
                 "labels": None, "reference_loss": {}, "runs": {}, "groups": {}, "training": {}}
    ref_by_label: dict = {}
    for s in st.seeds:
        ref = st.ref_noisy(s)
        _, prov, ds = st.test_tokens(s, ref.size)
        if prov is None:
            raise ValueError(f"{ds.path} has no provenance labels on its test split")
        labels, prov = st.labels(ds), prov.reshape(-1)
        out["labels"] = {str(k): v for k, v in labels.items()}
        for code, name in labels.items():
            m = prov == code
            ref_by_label.setdefault(name, []).append(float(ref[m].mean()) if m.any() else None)
        for r in (r for r in st.runs if r["seed"] == s and r.get("arm") == "slm"):
            point = st.curve(r)[-1]
            mask = topk_mask(st.excess(point, s), float(r["ratio"]))
            out["runs"][r["name"]] = diag.provenance_shares(mask, prov, labels)
    for name, v in ref_by_label.items():
        out["reference_loss"][name] = stats.summary(v)
    content = out["reference_loss"].get("content", {}).get("mean")
    out["reference_minus_content"] = {n: (v["mean"] - content if v["mean"] is not None and content is not None
                                          else None) for n, v in out["reference_loss"].items()}
    for name, sh in out["runs"].items():
        g = out["groups"].setdefault(runs[name]["group"], {})
        for label, rate in sh["selection_rate"].items():
            g.setdefault(label, []).append(rate)
    out["groups"] = {g: {lab: stats.summary(v) for lab, v in d.items()} for g, d in out["groups"].items()}
    for r in st.runs:
        tr = training_shares(st.path(r["run_dir"]))
        out["training"][r["name"]] = {"group": runs[r["name"]]["group"], "noise_share_selected":
                                      tr["noise_share_selected"], "noise_share_all": tr["noise_share_all"],
                                      "curve": tr["curve"]}
    return out


def section_selection(st: StudyResults) -> dict:
    """Most / least often selected tokens (final checkpoint of the first seed's top-k run at the largest ratio)."""
    run = _html_run(st)
    point = st.curve(run)[-1]
    exc = st.excess(point, run["seed"])
    mask = topk_mask(exc, float(run["ratio"]))
    ids, _, ds = st.test_tokens(run["seed"], exc.size)
    return {"run": run["name"], "ratio": run["ratio"], "measured_share": float(mask.mean()),
            "tokens": diag.most_least_selected(ids.reshape(-1), mask, st.decoder(ds))}


def _html_run(st: StudyResults) -> dict:
    slm = [r for r in st.runs if r.get("arm") == "slm"]
    if not slm:
        raise ValueError("the study has no SLM arm")
    first = [r for r in slm if r["seed"] == st.seeds[0]] or slm
    topk = [r for r in first if r["strategy"] == "topk"] or first
    return max(topk, key=lambda r: float(r["ratio"]))


def write_selection_html(study_dir, out_path, max_windows: int = 12) -> Path:
    """Test noisy text of the first windows, the tokens SLM selects at its final checkpoint highlighted."""
    st = StudyResults(study_dir)
    run = _html_run(st)
    exc = st.excess(st.curve(run)[-1], run["seed"])
    mask = topk_mask(exc, float(run["ratio"]))
    ids, prov, ds = st.test_tokens(run["seed"], exc.size)
    decode, labels, seq = st.decoder(ds), {**st.labels(ds), -1: "window separator"}, ids.shape[1]
    toks, sel, ex, pv = [], [], [], []
    n_win = min(max_windows, ids.shape[0])
    for w in range(n_win):
        sl = slice(w * seq, (w + 1) * seq)
        toks += [("\n\n" if w else "") + f"──── window {w} ────\n"] + [decode(int(i)) for i in ids[w]]
        sel += [False] + mask[sl].tolist()
        ex += [float("nan")] + exc[sl].tolist()
        pv += [-1] + (prov[w].tolist() if prov is not None else [0] * seq)
    shown = mask[: n_win * seq]
    title = (f"Tokens selected by {run['name']} at its final checkpoint (top-k at ratio {float(run['ratio']):g} of "
             f"checkpoint loss - reference loss): {shown.mean():.1%} of {shown.size} test tokens selected")
    page = diag.selection_html(toks, sel, title=title, excess=ex, provenance=pv if prov is not None else None,
                               provenance_labels=labels)
    atomic_write_text(out_path, page)
    return Path(out_path)
