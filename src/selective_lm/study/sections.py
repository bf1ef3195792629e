"""Report sections of the study's design and cost: the regime, what a seed varies and the power kept, the
downstream metrics (multiple choice, answer NLL, exact match), SLM's full cost and the HQ-size sweep."""
from __future__ import annotations

from . import stats
from .claims import mc_chance
from .fmt import acc, f, img, ms, table

STATUS_MARK = {"usable": "✅ used for claims", "at chance": "⚪ at chance: not used", "at floor": "⚪ at floor: not used",
               "not measured": "— not measured"}


def design(res: dict) -> list[str]:
    d = res.get("design") or {}
    reg, seeds, power = d.get("regime") or {}, d.get("seeds") or {}, d.get("power") or {}
    md = ["## The regime and the seeds", ""]
    if reg.get("hq_tokens"):
        p = reg.get("paper") or {}
        md += [f"- **HQ : budget = {reg['hq_label']}** ({reg['hq_tokens']:,.0f} HQ train tokens against "
               f"{reg['cpt_tokens']:,.0f} continual-pretraining tokens per arm, realised ratio "
               f"{reg['realised_ratio']:.3f}); the paper: {p.get('label')} (0.5B against 15B).",
               f"- The reference trains {reg['reference_epochs']:g} epoch{'s' if reg['reference_epochs'] != 1 else ''} on it ({reg['reference_token_passes']:,.0f} "
               f"token passes), from the same base as every arm; HQ-only repeats it {reg['hq_only_epochs']:.1f} "
               "times over the budget.",
               "- The noisy corpus: " + (f"at least {reg['web_train_tokens_min']:,.0f} train tokens per seed, so "
                                         + ("an arm repeats windows" if reg.get("web_repeats") else
                                            "no arm repeats a window") if reg.get("web_train_tokens_min") else "—")
               + ".", ""]
    if seeds:
        md += [f"**What a seed varies** (seeds {', '.join(map(str, seeds.get('seeds') or []))}): "
               + "; ".join(seeds.get("varies") or []) + ". **What it does not:** " + "; ".join(seeds.get("fixed") or [])
               + ".", ""]
    if power:
        md += ["**Power.** The smallest difference between top-k (best ratio) and CLM these seeds can detect, from the "
               "groups' own spread (one-sided Welch, α = 0.05): an observed difference must exceed the first column "
               "to be significant; a true difference as large as the second is found with 80% power.", ""]
        md += table(["metric", "groups", "detectable at p < 0.05", "at 80% power", "observed difference", "seeds"],
                    [[v["metric"], " vs ".join(v["groups"]), f(v.get("at_p05"), 4), f(v.get("at_power"), 4),
                      f(v.get("observed_diff"), 4), "/".join(map(str, v.get("n") or []))] for v in power.values()])
    return md


def downstream(res: dict, images: dict) -> list[str]:
    md = ["## Downstream accuracy", "",
          "Multiple choice as lm-evaluation-harness scores it: each question's gold answer among "
          f"{_choices(res)} choices (one numerically perturbed answer and answers of other questions of the same "
          "family, those closest to the gold answer's length first: small models prefer short continuations), each "
          "scored by the log-likelihood of \" choice\\n\" after the few-shot prompt (exemplars as "
          "\"Problem: q\\nAnswer: a\"); `acc` takes the highest log-likelihood, `acc_norm` the highest per character; "
          f"chance is {mc_chance(res):.0%}. The gold answer's NLL (nats per answer) is the continuous version. Exact "
          "match: greedy generation after exemplars with worked solutions, the answer after \"Answer:\", at each "
          "arm's end. Multiple choice and NLL at every evaluated checkpoint, both question generators.", ""]
    md += table(["metric", "status", "why"], [[d["metric"], STATUS_MARK.get(d["status"], d["status"]), d["reason"]]
                                             for d in res.get("downstream") or []])
    g = {k: v for k, v in res["groups"].items() if not v.get("sweep")}
    md += ["Final checkpoints, pooled over seeds (Wilson 95% interval); NLL mean ± std over seeds.", ""]
    md += table(["group", "own MC acc", "own acc_norm", "own answer NLL", "external MC acc", "external acc_norm",
                 "external answer NLL", "own exact match", "external exact match"],
                [[k, acc(v.get("own_mc_pooled")), acc(v.get("own_mc_norm_pooled")), ms(v.get("own_answer_nll"), 3),
                  acc(v.get("ext_mc_pooled")), acc(v.get("ext_mc_norm_pooled")), ms(v.get("ext_answer_nll"), 3),
                  acc(v.get("own_pooled")), acc(v.get("ext_pooled"))] for k, v in g.items()])
    de = res.get("downstream_efficiency") or {}
    rows = []
    for key, sec in de.items():
        for grp, e in ((sec or {}).get("groups") or {}).items():
            fin = e.get("final") or {}
            rows.append([key, grp, f"{fin['mean']:.2f}×" if fin.get("mean") is not None else "—",
                         f"{e['unreached_final']} of {e['n']}"])
    if rows:
        md += ["Speed-up to CLM's final value of each usable downstream metric (as for the target loss below):", ""]
        md += table(["metric", "group", "final speed-up", "unreached at the end"], rows)
    return md + img(images, "accuracy", "multiple-choice accuracy and answer NLL vs tokens")


def _choices(res: dict) -> int:
    return round(1 / mc_chance(res))


def cost(res: dict) -> list[str]:
    c = res.get("cost") or {}
    md = ["## SLM's full cost", "", c.get("definition", "")] if c else ["## SLM's full cost", ""]
    if not c or "error" in c:
        return md + [f"_Not available: {(c or {}).get('error', 'no data')}_", ""]
    m = c["model"]
    md += ["", f"Model: {m['parameters']:,} parameters, N = {m['N']:,} without the input embedding, {m['layers']} "
           f"layers × width {m['width']}, window {c['seq_len']}: {c['flops_per_token']['train']:.3g} training and "
           f"{c['flops_per_token']['forward']:.3g} forward FLOPs per token. Mean over seeds:", ""]
    ks = c.get("amortise") or []
    md += table(["group", "training FLOPs", "+ reference", "+ scoring", "total FLOPs", "train s", "reference + "
                 "scoring s", "speed-up (tokens)", *(f"speed-up (FLOPs, k={k})" for k in ks)],
                [[g, _e(v["train_flops"]), _e(v["reference_flops"]), _e(v["score_flops"]), _e(v["total_flops"]),
                  f(v["train_seconds"].get("mean"), 0), f(v["overhead_seconds"].get("mean"), 0),
                  _x(v["speedup_tokens"], v["unreached"], v["n"], v["measured"]),
                  *(_x(v["speedup_flops"][str(k)], v["unreached"], v["n"], v["measured"]) for k in ks)]
                 for g, v in c["groups"].items()])
    st = c.get("stage_seconds") or {}
    if st:
        md += ["Wall time by kind of stage (seconds, all seeds):", ""]
        md += table(["stage", "seconds", "stages"], [[k, f(v["total"], 0), v["count"]] for k, v in st.items()])
    return md


def _e(s: dict) -> str:
    return "—" if not s or s.get("mean") is None else f"{s['mean']:.3g}"


def _x(s: dict, unreached: int, n: int, measured: bool = True) -> str:
    if not measured:
        return "—"
    if unreached:
        return f"unreached in {unreached} of {n}"
    return "—" if not s or s.get("mean") is None else f"{s['mean']:.2f}×"


def sweep(res: dict, images: dict) -> list[str]:
    sw = res.get("sweep") or {}
    if not sw.get("rows"):
        return ["## HQ-size sweep: use the HQ data as a reference, or train on it?", "",
                "_This study ran no sweep (hq_sweep=[]); `hq_sweep=[0.0333,0.333,1.0]` adds one._", ""]
    md = ["## HQ-size sweep: use the HQ data as a reference, or train on it?", "", sw["definition"], "",
          f"**{sw['summary']}.** Top-k at ratio {float(sw['sweep_ratio']):g}; test target loss, mean ± std over "
          "seeds; p: one-sided Welch.", ""]
    md += table(["HQ : budget", "HQ tokens", "HQ-only epochs", "reference", "CLM", "HQ-only", "SLM top-k",
                 "p SLM < HQ-only", "p HQ-only < SLM", "p SLM < CLM", "p HQ-only < CLM"],
                [[r["label"] + (" (main)" if r["main"] else ""), f"{r['hq_tokens']:,}", f"{r['hq_epochs']:.1f}",
                  ms(r["reference"], 3), ms(r["clm"], 3), ms(r["hq"], 3), ms(r["slm"], 3),
                  stats.fmt_p(r["slm_vs_hq"]["p"]), stats.fmt_p(r["slm_vs_hq"]["p_opposite"]),
                  stats.fmt_p(r["slm_vs_clm"]["p"]), stats.fmt_p(r["hq_vs_clm"]["p"])] for r in sw["rows"]])
    return md + img(images, "sweep", "test target loss vs HQ : budget ratio")


def annotations(res: dict) -> list[str]:
    """The document filter on annotated errors (only for corpora whose rows carry annotations: CHAMP)."""
    fl = res.get("filter") or {}
    if not fl.get("seeds"):
        return []
    md = ["## The document filter on annotated errors", "", fl["definition"], ""]
    md += table(["seed", "solutions with an error", "annotated correct", "mean doc score (error / correct)", "AUC",
                 "p (Mann–Whitney, one-sided)"],
                [[s, v["n_error"], v["n_clean"], f"{f(v.get('mean_error'), 3)} / {f(v.get('mean_clean'), 3)}",
                  f(v["auc"], 3), stats.fmt_p(v["p"])] for s, v in fl["seeds"].items()])
    a = fl.get("auc") or {}
    md += [f"AUC over seeds: {ms(a, 3)}; one-sample t-test against 0.5: p = {stats.fmt_p(a.get('p'))} → "
           f"**{a.get('verdict_text', 'n/a')}**.", ""]
    return md
