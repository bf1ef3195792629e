"""The paper's claims, the further findings and the headline table, from the collected numbers.

One line per claim × metric (never two metrics under one verdict); verdict rules in :mod:`.stats`.
The SLM arm of a claim is each strategy's *best ratio*, chosen on validation (:func:`.collect.best_ratios`).
"""
from __future__ import annotations

from ..analysis.dynamics import CATEGORIES
from . import stats
from .tokens import PAPER_DYNAMICS

METRICS = (("target_loss", "test target loss", True), ("own_acc", "own few-shot accuracy", False),
           ("ext_acc", "external few-shot accuracy", False))


def _vals(g: dict | None, key: str) -> list:
    return (g or {}).get(key, {}).get("values") or []


def _floor(res: dict, key: str) -> tuple[bool, str]:
    kind = key.split("_")[0]
    accs = {g: v.get(f"{kind}_pooled") for g, v in res["groups"].items() if g not in ("base", "reference")}
    return stats.at_floor(accs)


def _line(cid: str, claim: str, metric: str, names: tuple[str, str], cmp: dict, note: str = "") -> dict:
    return {"id": cid, "claim": claim, "metric": metric, "a_group": names[0], "b_group": names[1], **cmp, "note": note}


def compare_groups(res: dict, cid: str, claim: str, a: str, b: str, metrics=METRICS) -> list[dict]:
    g, out = res["groups"], []
    for key, label, lower in metrics:
        cmp = stats.compare(_vals(g.get(a), key), _vals(g.get(b), key), lower)
        note = ""
        if key.endswith("_acc"):
            floor, why = _floor(res, key)
            if floor:
                cmp["verdict"], cmp["verdict_text"] = stats.NOT_TESTED, f"not tested (accuracy at floor: {why})"
                note = "accuracy cannot test the claim: " + why
        out.append(_line(cid, claim, label, (a, b), cmp, note))
    return out


def _speedup_line(res: dict, group: str) -> dict:
    e = ((res.get("data_efficiency") or {}).get("groups") or {}).get(group)
    claim = "SLM reaches CLM's final test target loss with fewer tokens (speed-up > 1)"
    base = {"id": "b", "claim": claim, "metric": "final speed-up vs CLM", "a_group": group, "b_group": "clm",
            "note": ""}
    if not e:
        return {**base, "verdict": stats.NOT_TESTED, "verdict_text": "not tested (no efficiency curve)"}
    if e["unreached_final"]:
        bounds = ", ".join(f"< {b:.2f}×" for b in e["upper_bounds"] if b is not None)
        if e["unreached_final"] == e["n"]:
            return {**base, "verdict": stats.FAILS, "note": f"speed-up {bounds}",
                    "verdict_text": "does not hold (never reaches CLM's final loss within its budget)"}
        return {**base, "verdict": stats.NOT_TESTED, "note": f"unreached in {e['unreached_final']} of {e['n']} seeds "
                f"(speed-up {bounds} there)", "verdict_text": f"not tested (unreached in {e['unreached_final']} of "
                                                               f"{e['n']} seeds)"}
    return {**base, **e["final"]}


def _dynamics_lines(res: dict) -> list[dict]:
    dyn, out = res.get("dynamics") or {}, []
    for label, key in (("from the base", "clm_mean_shares"), ("within training", "clm_mean_shares_in_training")):
        sh = dyn.get(key)
        line = {"id": "d", "claim": "token loss dynamics shares resemble the paper's 11/12/26/51%",
                "metric": f"CLM shares {label}", "a_group": "clm", "b_group": "paper", "n": dyn.get("clm_runs"), "note": ""}
        if not sh:
            out.append({**line, "verdict": stats.NOT_TESTED, "verdict_text": "not tested (no dynamics)"})
            continue
        dev = max(abs(sh[c] - PAPER_DYNAMICS[c]) for c in CATEGORIES)
        ok = dev <= dyn.get("tolerance", 0.1)
        out.append({**line, "shares": sh, "max_deviation": dev, "verdict": stats.HOLDS if ok else stats.FAILS,
                    "verdict_text": "holds" if ok else "does not hold",
                    "note": ", ".join(f"{c} {sh[c]:.1%} (paper {PAPER_DYNAMICS[c]:.0%})" for c in CATEGORIES)
                    + f"; largest deviation {dev:.1%} (tolerance {dyn.get('tolerance', 0.1):.0%})"})
    return out


def _fig6_lines(res: dict, topk: str | None) -> list[dict]:
    fin, out = res.get("fig6_final") or {}, []
    if not topk:
        return out
    key = f"{res['groups'][topk]['ratio']:g}"
    d = fin.get(key)
    if not d:
        return out
    for side, lower, what in (("selected", True, "lowers"), ("unselected", False, "raises")):
        cmp = stats.compare(d["raw"].get(topk, {}).get(side, []), d["raw"].get("clm", {}).get(side, []), lower)
        note = ""
        if side == "selected" and d.get("lowest_selected") and not d["lowest_selected"].startswith("slm-"):
            note = (f"against the paper: {d['lowest_selected']} has the lowest selected-token loss at ratio {key}, "
                    "not an SLM arm")
        out.append(_line("e", f"Fig. 6: SLM {what} the loss of the tokens it would {'' if lower else 'not '}select, "
                              "vs CLM", f"final {side}-token loss at ratio {key}", (topk, "clm"), cmp, note))
    return out


def claims(res: dict) -> list[dict]:
    """The paper's claims: one line per claim × metric."""
    best = res.get("best_ratio") or {}
    topk = (best.get("topk") or {}).get("group")
    out: list[dict] = []
    if topk and "clm" in res["groups"]:
        out += compare_groups(res, "a", "SLM beats CLM at equal tokens", topk, "clm")
        out.append(_speedup_line(res, topk))
    else:
        out.append({"id": "a", "claim": "SLM beats CLM at equal tokens", "metric": "test target loss",
                    "verdict": stats.NOT_TESTED, "verdict_text": "not tested (no top-k SLM or no CLM group)"})
    for r in (res.get("config") or {}).get("ratios") or []:
        a, b = f"slm-topk-{r:g}", f"slm-random-{r:g}"
        if a in res["groups"] and b in res["groups"]:
            out += compare_groups(res, "c", f"top-k beats random at ratio {r:g}", a, b)
    out += _dynamics_lines(res)
    out += _fig6_lines(res, topk)
    return out


def findings(res: dict) -> list[dict]:
    """Further findings (not claims of the paper): SLM vs HQ-only, SLM vs content-only, stochastic's overlap."""
    best = res.get("best_ratio") or {}
    topk = (best.get("topk") or {}).get("group")
    out: list[dict] = []
    if topk:
        for base, what in (("hq", "SLM beats HQ-only continual pretraining (same budget)"),
                           ("content", "SLM's ranking adds to noise filtering (SLM beats CLM on content tokens only)")):
            if base in res["groups"]:
                out += compare_groups(res, f"f-{base}", what, topk, base)
    var = res.get("variants") or {}
    for row in var.get("rows") or []:
        out += compare_groups(res, "f-variant", f"variant {row['variant']} beats top-k at ratio {float(var['ratio']):g}",
                              row["group"], var["baseline"], metrics=METRICS[:1])
    for g, o in ((res.get("overlap") or {}).get("groups") or {}).items():
        if o["strategy"] == "stochastic" and o["overlap"]["mean"] is not None:
            out.append({"id": "f-overlap", "claim": "where stochastic selection sits between top-k and random",
                        "metric": f"mean topk_overlap at ratio {o['ratio']:g}", "a_group": g, "b_group": "topk/random",
                        "verdict": "finding", "verdict_text": "descriptive",
                        "note": f"overlap {o['overlap']['mean']:.3f} (top-k 1.0, random ≈ {o['ratio']:g}); position "
                                f"{o['position']:.2f} on the random (0) → top-k (1) scale"
                                if o["position"] is not None else ""})
    return out


def variants(res: dict) -> dict:
    """The variants section: every variant group against top-k at variant_ratio and against CLM (test target
    loss, one-sided Welch both ways), with each arm's measured training throughput (the stage's wall time)."""
    cfg, g = res.get("config") or {}, res["groups"]
    defs, r = cfg.get("variants") or {}, cfg.get("variant_ratio")
    if not defs:
        return {}
    topk, timings, tokens = f"slm-topk-{float(r):g}", cfg.get("timings") or {}, cfg.get("cpt_tokens")

    def speed(group: str) -> dict:
        secs = [timings.get(f"arm {n}") for n, run in (res.get("runs") or {}).items() if run["group"] == group]
        return stats.summary([tokens / x for x in secs if x and tokens])

    rows = []
    for v, what in defs.items():
        k = f"variant-{v}"
        if k not in g:
            continue
        rows.append({"variant": v, "family": v.partition(":")[0], "group": k, "what": what,
                     "target_loss": g[k]["target_loss"], "noisy_loss": g[k]["noisy_loss"],
                     "val_target_loss": g[k]["val_target_loss"],
                     "vs_topk": stats.compare(_vals(g[k], "target_loss"), _vals(g.get(topk), "target_loss"), True),
                     "vs_clm": stats.compare(_vals(g[k], "target_loss"), _vals(g.get("clm"), "target_loss"), True),
                     "train_tokens_per_s": speed(k)})
    for fam in {row["family"] for row in rows}:  # several settings of one variant: the best on validation
        cand = [row for row in rows if row["family"] == fam and row["val_target_loss"]["mean"] is not None]
        best = min(cand, key=lambda row: row["val_target_loss"]["mean"]) if len(cand) > 1 else None
        for row in rows:
            if row["family"] == fam:
                row["best_on_validation"] = row is best
    holm = stats.holm([row["vs_topk"].get("p") for row in rows])
    for row, q in zip(rows, holm):
        row["vs_topk"]["p_holm"] = q
    return {"ratio": r, "baseline": topk, "definitions": defs, "rows": rows,
            "baseline_tokens_per_s": {b: speed(b) for b in (topk, "clm") if b in g},
            "definition": "each variant is top-k SLM at the variant ratio changed in one way; p: one-sided Welch "
                          "on the final test target loss over seeds (variant < top-k, and the opposite direction), "
                          "with Holm's correction over the variants for the first; "
                          "train tokens/s = the arm's tokens seen / its stage's wall time (a study stage, so other "
                          "jobs on the machine count; benchmarks/throughput.py measures them cleanly)"}


def headline(res: dict) -> list[dict]:
    """Rows of the headline table (test split): reference, CLM, hq, content, each SLM group."""
    g, eff = res["groups"], (res.get("data_efficiency") or {}).get("groups") or {}
    order = [k for k in ("reference", "clm", "hq", "content") if k in g]
    order += sorted((k for k in g if k.startswith("slm-")), key=lambda k: (g[k]["strategy"], -float(g[k]["ratio"])))
    order += [k for k in g if k.startswith("variant-")]
    rows = []
    for k in order:
        v = g[k]
        vs = (stats.compare(_vals(v, "target_loss"), _vals(g.get("clm"), "target_loss"), True)
              if k not in ("clm", "reference") and "clm" in g else None)
        e = eff.get(k) or {}
        rows.append({"group": k, "target_ppl": v["target_ppl"], "noisy_ppl": v["noisy_ppl"],
                     "target_loss": v["target_loss"], "own": v["own_pooled"], "own_seeds": v["own_acc"],
                     "ext": v["ext_pooled"], "ext_seeds": v["ext_acc"],
                     "speedup": e.get("final"), "speedup_unreached": e.get("unreached_final"),
                     "p_vs_clm": vs["p"] if vs else None, "verdict_vs_clm": vs["verdict_text"] if vs else None,
                     "best_ratio": any(b.get("group") == k for b in (res.get("best_ratio") or {}).values())})
    return rows


def summary_text(res: dict) -> str:
    """One paragraph: what the study is and what it found."""
    cfg, cl = res.get("config") or {}, res.get("claims") or []
    held = [f"({c['id']}) {c['metric']}" for c in cl if c.get("verdict") == stats.HOLDS]
    failed = [f"({c['id']}) {c['metric']}" for c in cl if c.get("verdict") == stats.FAILS]
    untested = sum(c.get("verdict") == stats.NOT_TESTED for c in cl)
    nsig = sum(c.get("verdict") == stats.NOT_SIG for c in cl)
    best = ", ".join(f"{s} {b['ratio']:g}" for s, b in (res.get("best_ratio") or {}).items())
    text = (f"{len(cfg.get('seeds') or [])} seed(s) (each a whole pipeline), model `{cfg.get('model')}`, "
            f"{cfg.get('cpt_tokens')} continual-pretraining tokens per arm; arms CLM, HQ-only, content-only and SLM "
            f"({', '.join(cfg.get('strategies') or [])}) at ratios {', '.join(f'{r:g}' for r in cfg.get('ratios') or [])}"
            f"; best ratio per strategy chosen on validation: {best or 'none'}; all numbers below on the test split. ")
    var = res.get("variants") or {}
    if var.get("rows"):
        won = [r["variant"] for r in var["rows"] if r["vs_topk"].get("verdict") == stats.HOLDS]
        text += (f"Variants at ratio {float(var['ratio']):g} ({', '.join(r['variant'] for r in var['rows'])}): "
                 f"{', '.join(won) if won else 'none'} beat top-k on the test target loss (p < 0.05). ")
    text += (f"Of {len(cl)} claim × metric lines, {len(held)} hold"
             + (f" ({'; '.join(held)})" if held else "") + f", {len(failed)} do not hold"
             + (f" ({'; '.join(failed)})" if failed else "") + f", {nsig} are not significant and {untested} "
             "could not be tested (too few seeds or accuracy at floor).")
    return text
