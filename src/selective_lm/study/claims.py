"""The paper's claims, the further findings and the headline table, from the collected numbers.

One line per claim × metric (never two metrics under one verdict); verdict rules in :mod:`.stats`.
The SLM arm of a claim is each strategy's *best ratio*, chosen on validation (:func:`.collect.best_ratios`).
"""
from __future__ import annotations

from ..analysis.dynamics import CATEGORIES
from . import stats
from .tokens import PAPER_DYNAMICS

TARGET = ("target_loss", "test target loss", True)
# the downstream metrics (key, label, lower is better, kind, pooled-accuracy key): exact match of greedy answers,
# multiple-choice accuracy (acc and the length-normalised acc_norm, as lm-evaluation-harness scores them) and the
# gold answer's NLL
DOWNSTREAM = (("own_mc_acc", "own multiple-choice accuracy", False, "mc", "own_mc_pooled"),
              ("own_mc_acc_norm", "own multiple-choice acc_norm", False, "mc", "own_mc_norm_pooled"),
              ("own_answer_nll", "own gold-answer NLL", True, "nll", None),
              ("ext_mc_acc", "external multiple-choice accuracy", False, "mc", "ext_mc_pooled"),
              ("ext_mc_acc_norm", "external multiple-choice acc_norm", False, "mc", "ext_mc_norm_pooled"),
              ("ext_answer_nll", "external gold-answer NLL", True, "nll", None),
              ("own_acc", "own exact match", False, "exact", "own_pooled"),
              ("ext_acc", "external exact match", False, "exact", "ext_pooled"))
METRICS = (TARGET, ("own_acc", "own few-shot accuracy", False), ("ext_acc", "external few-shot accuracy", False))


def _vals(g: dict | None, key: str) -> list:
    return (g or {}).get(key, {}).get("values") or []


def _arms(res: dict) -> dict:
    """The continual-pretraining groups of the main design (no base, references or sweep arms)."""
    return {k: v for k, v in res["groups"].items() if v.get("arm") not in ("base", "reference") and not v.get("sweep")}


def downstream_status(res: dict) -> list[dict]:
    """Which downstream metrics can test a claim. Exact match: not at floor (:func:`.stats.at_floor`). Multiple
    choice: at least one arm's pooled accuracy has its Wilson 95% interval above chance. The gold answer's NLL
    is continuous and always usable. The rule looks at every arm alike, never at which one wins."""
    out, chance = [], mc_chance(res)
    for key, label, lower, kind, pooled in DOWNSTREAM:
        accs = {g: v.get(pooled) for g, v in _arms(res).items()} if pooled else {}
        if not any(_vals(v, key) for v in _arms(res).values()):
            status, why = "not measured", "not measured in this study"
        elif kind == "nll":
            status, why = "usable", "continuous"
        elif kind == "exact":
            floor, why = stats.at_floor(accs)
            status, why = ("at floor", why) if floor else ("usable", "above the floor")
        else:
            above = [g for g, a in accs.items() if a and a.get("ci95") and a["ci95"][0] > chance]
            status = "usable" if above else "at chance"
            why = (f"above chance ({chance:.0%}) in {', '.join(above)}" if above else
                   f"no arm's 95% interval lies above chance ({chance:.0%})")
        out.append({"key": key, "metric": label, "lower_is_better": lower, "kind": kind, "status": status,
                    "reason": why})
    return out


def mc_chance(res: dict) -> float:
    """The chance level of the study's multiple choice (1 / choices), as its evaluations recorded it."""
    for r in (res.get("runs") or {}).values():
        if (r.get("final") or {}).get("mc_chance"):
            return float(r["final"]["mc_chance"])
    return 0.25


def claim_metrics(res: dict) -> tuple:
    """The test target loss and every downstream metric that can test a claim (:func:`downstream_status`);
    acc_norm is reported beside acc but never makes a verdict of its own."""
    usable = [(d["key"], d["metric"], d["lower_is_better"]) for d in res.get("downstream") or []
              if d["status"] == "usable" and not d["key"].endswith("_norm")]
    return (TARGET, *usable)


def _line(cid: str, claim: str, metric: str, names: tuple[str, str], cmp: dict, note: str = "") -> dict:
    return {"id": cid, "claim": claim, "metric": metric, "a_group": names[0], "b_group": names[1], **cmp, "note": note}


def compare_groups(res: dict, cid: str, claim: str, a: str, b: str, metrics=None) -> list[dict]:
    g, out = res["groups"], []
    for key, label, lower in metrics or claim_metrics(res):
        out.append(_line(cid, claim, label, (a, b), stats.compare(_vals(g.get(a), key), _vals(g.get(b), key), lower)))
    return out


def _speedup_line(res: dict, group: str, key: str = "target_loss", label: str = "test target loss") -> dict:
    eff = res.get("data_efficiency") if key == "target_loss" else (res.get("downstream_efficiency") or {}).get(key)
    e = ((eff or {}).get("groups") or {}).get(group)
    claim = f"SLM reaches CLM's final {label} with fewer tokens (speed-up > 1)"
    base = {"id": "b", "claim": claim, "metric": f"final speed-up vs CLM ({label})", "a_group": group,
            "b_group": "clm", "note": ""}
    if not e:
        return {**base, "verdict": stats.NOT_TESTED, "verdict_text": "not tested (no efficiency curve)"}
    if e["unreached_final"]:
        bounds = ", ".join(f"< {b:.2f}×" for b in e["upper_bounds"] if b is not None)
        if e["unreached_final"] == e["n"]:
            return {**base, "verdict": stats.FAILS, "note": f"speed-up {bounds}",
                    "verdict_text": "does not hold (never reaches CLM's final value within its budget)"}
        return {**base, "verdict": stats.NOT_SIG, "note": f"unreached in {e['unreached_final']} of {e['n']} seeds "
                f"(speed-up {bounds} there)", "verdict_text": f"not significant (CLM's final value unreached in "
                                                               f"{e['unreached_final']} of {e['n']} seeds)"}
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
        labels = {d["key"]: d["metric"] for d in res.get("downstream") or []}
        out += [_speedup_line(res, topk, k, labels.get(k, k)) for k in res.get("downstream_efficiency") or {}]
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
    hn = ((res.get("harder_noise") or {}).get("groups") or {}).get(topk) if topk else None
    labels = (res.get("harder_noise") or {}).get("labels") or {}
    content = labels.get("0")
    for code, name in labels.items():
        if hn and content and code != "0" and name in hn and content in hn:
            cmp = stats.compare(hn[name]["values"], hn[content]["values"], True)
            out.append(_line("f-label", f"SLM selects {name} tokens less often than {content} tokens",
                             f"share selected at ratio {res['groups'][topk]['ratio']:g} (test noisy tokens)",
                             (name, content), cmp))
    auc = (res.get("filter") or {}).get("auc")
    if auc:
        out.append({"id": "f-filter", "claim": "the document filter ranks solutions with an annotated error lower",
                    "metric": "AUC of the mean reference loss (error vs no mistake) > 0.5", "a_group": "filter",
                    "b_group": "chance", "quantity": "AUC", **auc})
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
    order += sorted((k for k in g if k.startswith("slm-") and not g[k].get("sweep")),
                    key=lambda k: (g[k]["strategy"], -float(g[k]["ratio"])))
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
                     "own_mc": v.get("own_mc_pooled"), "ext_mc": v.get("ext_mc_pooled"),
                     "own_nll": v.get("own_answer_nll"), "ext_nll": v.get("ext_answer_nll"),
                     "speedup": e.get("final"), "speedup_unreached": e.get("unreached_final"),
                     "p_vs_clm": vs["p"] if vs else None, "verdict_vs_clm": vs["verdict_text"] if vs else None,
                     "best_ratio": any(b.get("group") == k for b in (res.get("best_ratio") or {}).values())})
    return rows


def summary_text(res: dict) -> str:
    """One paragraph: what the study is and what it found."""
    cfg, cl = res.get("config") or {}, res.get("claims") or []
    held = sum(c.get("verdict") == stats.HOLDS for c in cl)
    failed = sum(c.get("verdict") == stats.FAILS for c in cl)
    untested = sum(c.get("verdict") == stats.NOT_TESTED for c in cl)
    nsig = sum(c.get("verdict") == stats.NOT_SIG for c in cl)
    best = ", ".join(f"{s} {b['ratio']:g}" for s, b in (res.get("best_ratio") or {}).items())
    reg = (res.get("design") or {}).get("regime") or {}
    arms = ", ".join(["CLM"] + [{"hq": "HQ-only", "content": "content-only"}[b] for b in _baselines(res)])
    seeds = cfg.get("seeds") or []
    text = (f"{len(seeds)} seed(s) ({'one shared base' if cfg.get('share_base') else 'each a whole pipeline'}), "
            f"model `{cfg.get('model')}`, {cfg.get('cpt_tokens')} continual-pretraining tokens per arm"
            + (f"; the reference trains on {reg['hq_tokens']:,.0f} HQ tokens (HQ : budget {reg['hq_label']}, "
               f"{reg['reference_epochs']:g} epoch{'s' if reg['reference_epochs'] != 1 else ''}; the paper: 1:30)" if reg.get("hq_tokens") else "")
            + f"; arms {arms} and SLM ({', '.join(cfg.get('strategies') or [])}) at ratios "
            f"{', '.join(f'{r:g}' for r in cfg.get('ratios') or [])}"
            f"; best ratio per strategy chosen on validation: {best or 'none'}; all numbers below on the test split. ")
    total = cfg.get("timings_total")
    if total:
        text += (f"Its stages took {int(total // 60)}m{int(total % 60):02d}s in all on this machine (the appendix has "
                 "each stage's seconds, summed over the invocations that ran it). ")
    var = res.get("variants") or {}
    if var.get("rows"):
        won = [r["variant"] for r in var["rows"] if r["vs_topk"].get("verdict") == stats.HOLDS]
        text += (f"Variants at ratio {float(var['ratio']):g} ({', '.join(r['variant'] for r in var['rows'])}): "
                 f"{', '.join(won) if won else 'none'} beat top-k on the test target loss (p < 0.05). ")
    if (res.get("sweep") or {}).get("summary"):
        text += f"HQ-size sweep: {res['sweep']['summary']}. "
    excluded = [d["metric"] for d in res.get("downstream") or [] if d["status"] in ("at floor", "at chance")]
    text += (f"Of {len(cl)} claim × metric lines, {held} hold, {failed} do not hold, {nsig} are not significant and "
             f"{untested} could not be tested" + (f" ({_untested_why(cl)})" if untested else "") + ". By claim: "
             + "; ".join(_digest(cl, cid) for cid in dict.fromkeys(c["id"] for c in cl)) + "."
             + (f" Downstream metrics at floor or chance, not used for claims: {', '.join(excluded)}." if excluded
                else ""))
    return text


def _digest(cl: list[dict], cid: str) -> str:
    """"(a) holds on X, Y; not significant on Z" for one claim id."""
    lines = [c for c in cl if c["id"] == cid]
    parts = []
    for verdict, word in ((stats.HOLDS, "holds on"), (stats.FAILS, "does not hold on"),
                          (stats.NOT_SIG, "not significant on"), (stats.NOT_TESTED, "not tested on")):
        ms = list(dict.fromkeys(c["metric"].replace("final speed-up vs CLM ", "speed-up ") for c in lines
                                if c.get("verdict") == verdict))
        if ms:
            parts.append(f"{word} {', '.join(ms)}")
    return f"({cid}) " + ", ".join(parts)


def _baselines(res: dict) -> list[str]:
    return [b for b in ("hq", "content") if b in res.get("groups", {})]


def _untested_why(cl: list[dict]) -> str:
    return "; ".join(sorted({c.get("verdict_text", "") for c in cl if c.get("verdict") == stats.NOT_TESTED}))
