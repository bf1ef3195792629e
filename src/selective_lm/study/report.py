"""The study report: ``STUDY/report/{results.json, plots/*.png, selection.html, report.md}``.

:func:`write_report` runs :func:`~selective_lm.study.collect.collect`, draws :mod:`.plots` and renders the
numbers: a summary, the verdict on each paper claim (one line per claim × metric), the headline table
(test split), the sections, and an appendix with the configuration and timings.
"""
from __future__ import annotations

from pathlib import Path

from ..analysis.dynamics import CATEGORIES
from ..files import UserError, atomic_write_text, write_json
from . import stats
from .collect import collect
from . import sections
from .fmt import acc as _acc, code as _code, err as _err, f as _f, img as _img, ms as _ms, pct as _pct
from .fmt import table as _table
from .plots import make_plots
from .tokens import PAPER_DYNAMICS, write_selection_html

STATUS = {"usable": "used for claims", "at chance": "at chance", "at floor": "at floor",
          "not measured": "not measured"}
_MARK = {stats.HOLDS: "✅", stats.FAILS: "❌", stats.NOT_SIG: "➖", stats.NOT_TESTED: "⚪", "finding": "ℹ️"}
SECTIONS = ("## Summary", "## The regime and the seeds", "## Verdicts on the paper's claims",
            "## Headline table (test split)", "## Perplexity", "## Downstream accuracy", "## Data efficiency",
            "## SLM's full cost", "## HQ-size sweep: use the HQ data as a reference, or train on it?",
            "## Stochastic vs top-k selection", "## Harder noise", "## Selected vs unselected tokens (paper Fig. 6/7)",
            "## Token loss dynamics", "## Bucket transitions", "## Update-direction cosine similarity",
            "## Selection diagnostics", "## Appendix")


def claim_line(c: dict) -> str:
    head = f"- {_MARK.get(c.get('verdict'), '•')} **({c['id']}) {c['claim']} — {c['metric']}**: "
    if isinstance(c.get("a"), dict):  # a two-group comparison
        ci = c.get("ci95")
        body = (f"{c.get('a_group')} {_ms(c['a'], 4)} vs {c.get('b_group')} {_ms(c['b'], 4)}; difference "
                f"{_f(c.get('diff'), 4)}" + (f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else " [CI n/a]")
                + f"; p = {stats.fmt_p(c.get('p'))} (one-sided Welch, {c.get('direction')}); Hedges' g = "
                f"{_f(c.get('effect_size'), 2)}; n seeds {c['a']['n']}/{c['b']['n']}")
    elif c.get("mean") is not None:  # one-sample (speed-up)
        ci = c.get("ci95")
        body = (f"{c.get('a_group')} {c.get('quantity', 'speed-up')} {_ms(c, 2)}"
                + (f" [95% CI {ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [CI n/a]")
                + f"; p = {stats.fmt_p(c.get('p'))} (one-sided t-test vs {c.get('null', 1):g}); Cohen's d = "
                f"{_f(c.get('effect_size'), 2)}"
                f"; n seeds {c['n']}")
    else:
        body = ""
    note = c.get("note") or ""
    return head + body + (("; " if body else "") + note if note else "") + f" → **{c['verdict_text']}**"


def render(res: dict, images: dict, html_link: str | None) -> str:
    md = ["# Selective Language Modeling (Rho-1) study report", ""]
    if res.get("quick"):
        md += ["> **Smoke test (`--quick`): a tiny run that checks the pipeline end to end. Its numbers mean "
               "nothing; do not read any result from them.**", ""]
    md += [f"Study directory: `{res['study']}`. Written by `{res.get('written_by', 'slm analyze report')}`; every "
           "number is in [results.json](results.json).", "", "## Summary", "", res.get("summary", ""), "",
           res.get("protocol", ""), ""]
    md += sections.design(res)
    md += ["## Verdicts on the paper's claims", "", stats.RULES, "",
           "In each line the first group makes the claim (top-k at its best ratio, chosen on validation, unless the "
           "claim names a ratio) and the second is its baseline; the difference is first minus second.", ""]
    md += [claim_line(c) for c in res["claims"]] + [""]
    against = [c for c in res["claims"] if c.get("verdict") == stats.FAILS or "against the paper" in (c.get("note") or "")]
    if against:
        md += ["**Against the paper** in this study: " + "; ".join(
            f"({c['id']}) {c['claim']} — {c['metric']}" + (f" ({c['note']})" if "against" in (c.get("note") or "")
                                                         else "") for c in against) + ".", ""]
    md += ["### Further findings (not claims of the paper)", ""]
    md += [claim_line(c) for c in res.get("findings") or []]
    md += ["", "## Headline table (test split)", "",
           "Final checkpoints; mean ± sample std (n seeds; std n/a for one seed). Accuracy: pooled over seeds, "
           "Wilson 95% interval, n questions. p vs CLM: one-sided Welch on the test target loss. ★ = the strategy's "
           "best ratio (chosen on validation).", ""]
    md += _table(["arm", "target ppl", "noisy ppl", "own MC acc", "external MC acc", "own answer NLL", "speed-up vs CLM",
                  "p vs CLM"],
                 [[h["group"] + (" ★" if h["best_ratio"] else ""), _ms(h["target_ppl"]), _ms(h["noisy_ppl"], 2),
                   _acc(h.get("own_mc")), _acc(h.get("ext_mc")), _ms(h.get("own_nll"), 3), _speed(h),
                   stats.fmt_p(h["p_vs_clm"]) if h["p_vs_clm"] is not None else "—"] for h in res.get("headline") or []])
    md += _perplexity(res, images) + sections.downstream(res, images) + _efficiency(res, images)
    md += sections.cost(res) + sections.sweep(res, images) + _overlap(res, images)
    md += _variants(res)
    md += _noise(res, images) + sections.annotations(res) + _fig6(res, images) + _dynamics(res, images) + _buckets(res)
    cos = res.get("cosine") or {}
    md += ["## Update-direction cosine similarity", "", cos.get("definition", ""), ""] + _err(cos)
    for s, d in (cos.get("seeds") or {}).items():
        md += [f"Seed {s}:", ""] + _table(["", *d["names"]], [[n, *(f"{v:.3f}" for v in row)]
                                                              for n, row in zip(d["names"], d["matrix"])])
    md += _img(images, "cosine", "cosine similarity heatmap")
    md += _selection(res, images, html_link) + _appendix(res)
    return "\n".join(md)


def _speed(h: dict) -> str:
    if h["group"] in ("clm", "reference"):
        return "—"
    if h.get("speedup_unreached"):
        return f"not reached in {h['speedup_unreached']} seed(s)"
    s = h.get("speedup")
    if not s or s.get("mean") is None:
        return "—"
    ci = s.get("ci95")
    return f"{s['mean']:.2f}×" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "") + f" (n={s['n']})"


def _perplexity(res: dict, images: dict) -> list[str]:
    g = res["groups"]
    md = ["## Perplexity", "", "Test split; validation target loss only for tuning (best ratio).", ""]
    md += _table(["group", "test target loss", "test target ppl", "test noisy loss", "test noisy ppl",
                  "validation target loss"],
                 [[k, _ms(v["target_loss"], 4), _ms(v["target_ppl"]), _ms(v["noisy_loss"], 4), _ms(v["noisy_ppl"], 2),
                   _ms(v["val_target_loss"], 4)] for k, v in g.items()])
    br = res.get("best_ratio") or {}
    if br:
        md += ["Best ratio per strategy (lowest mean final validation target loss; test shown for information, "
               "never used to choose):", ""]
        md += _table(["strategy", "best ratio", "validation loss by ratio", "test loss by ratio"],
                     [[s, f"{b['ratio']:g}", ", ".join(f"{r}: {_f(v, 4)}" for r, v in b["validation"].items()),
                       ", ".join(f"{r}: {_f(v, 4)}" for r, v in b["test"].items())] for s, b in br.items()])
    return md + _img(images, "loss_target", "test target loss vs tokens") + _img(images, "loss_noisy",
                                                                                 "test noisy loss vs tokens")


def _efficiency(res: dict, images: dict) -> list[str]:
    de = res.get("data_efficiency") or {}
    md = ["## Data efficiency", "", de.get("definition", ""), "", "The paper reports 5–10× fewer tokens.", ""] + _err(de)
    rows = []
    for g, e in (de.get("groups") or {}).items():
        fin = e.get("final") or {}
        ci = fin.get("ci95")
        rows.append([g, f"{fin['mean']:.2f}×" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [CI n/a]")
                     if fin.get("mean") is not None else "—",
                     f"{e['unreached_final']} of {e['n']}" + (" (speed-up " + ", ".join(
                         f"< {b:.2f}×" for b in e["upper_bounds"] if b is not None) + ")" if e["upper_bounds"] else ""),
                     _ms(e["tokens_saved"], 0),
                     _ms(e["tokens_saved_net"], 0) if e["tokens_saved_net"]["n"] else "n/a (no reference)"])
    if rows:
        md += _table(["group", "final speed-up [95% CI]", "unreached at the end", "tokens saved at CLM's final loss",
                      "net of reference training + scored tokens"], rows)
        pl = next(iter((res.get("pipelines") or {}).values()), {})
        md += [f"Net tokens saved = tokens saved − the reference's training tokens ({_f(pl.get('reference_tokens'), 0)} "
               f"in the first pipeline) − the tokens the reference scored ({_f(pl.get('scored_tokens'), 0)}); a scored "
               "token costs one forward pass, about a third of a training token, so this line is conservative.", ""]
        head = next(iter(de["groups"].values()))["curve"]
        md += ["Speed-up at each CLM checkpoint (mean over seeds; 'unreached' = the arm never reaches CLM's loss "
               "at that point within its budget):", ""]
        md += _table(["group", *(f"{p['tokens_clm']:.0f}" for p in head)],
                     [[g, *(("unreached" if p["unreached"] else _f(p["speedup"]["mean"], 2)) for p in e["curve"])]
                      for g, e in de["groups"].items()])
    return md + _img(images, "efficiency", "speed-up vs CLM over training")


def _overlap(res: dict, images: dict) -> list[str]:
    ov = res.get("overlap") or {}
    md = ["## Stochastic vs top-k selection", "", ov.get("definition", ""), ""] + _err(ov)
    if ov.get("temperature") is not None:
        md += [f"Stochastic temperature τ = {ov['temperature']}" + (" in units of the selection set's excess-loss "
                                                                   "std" if ov.get("temperature_unit") == "std" else "")
               + ".", ""]
    if ov.get("groups"):
        md += _table(["group", "mean topk_overlap", "random would give", "position (0 random → 1 top-k)"],
                     [[g, _ms(o["overlap"]), f"≈ {float(o['ratio']):g}", _f(o["position"], 2)]
                      for g, o in ov["groups"].items()])
    return md + _img(images, "overlap", "top-k overlap per SLM arm")


def _variants(res: dict) -> list[str]:
    """The token-selection variants against top-k at their ratio (only when the study ran variants)."""
    var = res.get("variants") or {}
    if not var.get("rows"):
        return []
    md = ["## Token-selection variants", "", f"Baseline: `{var['baseline']}` (top-k at ratio {float(var['ratio']):g}) "
          "and CLM. " + var["definition"] + "." + (" ★ = the best of a variant's settings on validation (test shown "
                                                   "for every setting)." if any(r.get("best_on_validation")
                                                                                 for r in var["rows"]) else ""), ""]
    base = var.get("baseline_tokens_per_s") or {}
    tk = (base.get(var["baseline"]) or {}).get("mean")

    def rel(s: dict) -> str:
        return f"{s['mean'] / tk:.2f}×" if tk and s and s.get("mean") else "—"

    rows = [[f"{var['baseline']} (baseline)", "top-k SLM", "—", "—", "—", "—", "—",
             _ms(base.get(var["baseline"]), 0), "1.00×" if tk else "—"]]
    for r in var["rows"]:
        t, c = r["vs_topk"], r["vs_clm"]
        rows.append([r["variant"] + (" ★" if r.get("best_on_validation") else ""), r["what"], _ms(r["target_loss"], 4),
                     _f(t.get("diff"), 4),
                     f"{stats.fmt_p(t.get('p'))} / {stats.fmt_p(t.get('p_opposite'))}",
                     stats.fmt_p(t["p_holm"]) if t.get("p_holm") is not None else "—", stats.fmt_p(c.get("p")),
                     _ms(r["train_tokens_per_s"], 0), rel(r["train_tokens_per_s"])])
    md += _table(["variant", "what it changes", "test target loss", "Δ vs top-k", "p better / worse than top-k",
                  "p better (Holm)", "p better than CLM", "train tokens/s", "vs top-k"], rows)
    better = [r["variant"] for r in var["rows"] if r["vs_topk"].get("verdict") == stats.HOLDS]
    holm = [r["variant"] for r in var["rows"] if (r["vs_topk"].get("p_holm") or 1) < stats.ALPHA]
    worse = [r["variant"] for r in var["rows"] if r["vs_topk"].get("verdict") == stats.FAILS]
    md += [f"Beat top-k (p < 0.05): {', '.join(better) or 'none'}; after Holm's correction for "
           f"{len(var['rows'])} comparisons: {', '.join(holm) or 'none'}. Significantly worse than top-k: "
           f"{', '.join(worse) or 'none'}.", ""]
    return md


def _noise(res: dict, images: dict) -> list[str]:
    hn = res.get("harder_noise") or {}
    md = ["## Harder noise", "", "Which kinds SLM drops. " + hn.get("definition", ""), ""] + _err(hn)
    if hn.get("reference_loss"):
        md += ["Reference model's mean loss on the test noisy tokens by provenance label (mean over seeds):", ""]
        md += _table(["label", "reference loss", "minus content"],
                     [[k, _ms(v, 3), _f(hn["reference_minus_content"].get(k), 3)] for k, v in hn["reference_loss"].items()])
    if hn.get("groups"):
        labels = list(next(iter(hn["groups"].values())))
        md += ["Share of each label's tokens that the SLM arm would select at its final checkpoint (mean over seeds):", ""]
        md += _table(["group", *labels], [[g, *(_pct(d[lab]["mean"]) for lab in labels)] for g, d in hn["groups"].items()])
    tr = {n: d for n, d in (hn.get("training") or {}).items() if d.get("noise_share_selected")}
    if tr:
        md += ["During training (metrics.jsonl): injected-noise share of the selected tokens vs of all tokens (mean "
               "over steps):", ""]
        md += _table(["run", "selected", "all tokens"], [[n, _pct(d["noise_share_selected"]["mean"]),
                                                          _pct((d.get("noise_share_all") or {}).get("mean"))]
                                                         for n, d in tr.items()])
    return md + _img(images, "noise_kinds", "selection rate per provenance label") + _img(
        images, "noise_share", "noise share of selected vs all training tokens")


def _fig6(res: dict, images: dict) -> list[str]:
    f6 = res.get("fig6") or {}
    md = ["## Selected vs unselected tokens (paper Fig. 6/7)", "", f6.get("definition", ""), ""] + _err(f6)
    for r, d in (res.get("fig6_final") or {}).items():
        md += [f"Ratio {r}, final checkpoint (mean ± std over seeds); lowest selected-token loss: "
               f"**{d['lowest_selected']}**" + ("" if (d["lowest_selected"] or "").startswith("slm-") else
                                               " — against the paper, where SLM has the lowest") + ".", ""]
        md += _table(["group", "selected-token loss", "unselected-token loss"],
                     [[g, _ms(s["selected"]), _ms(s["unselected"])] for g, s in d["groups"].items()])
    usable = {d["key"]: d for d in res.get("downstream") or []}
    for r, d in (f6.get("ratios") or {}).items():
        rows = []
        for key, c in (d.get("correlation") or {}).items():
            st = usable.get(key, {})
            if not c.get("computed"):
                rows.append([st.get("metric", key), c.get("reason", "not computed"), "", "", ""])
                continue
            rows.append([st.get("metric", key), STATUS.get(st.get("status"), st.get("status", "")), c["n"],
                         f"{_f(c['selected']['r'], 2)} (p = {stats.fmt_p(c['selected']['p'])})",
                         f"{_f(c['unselected']['r'], 2)} (p = {stats.fmt_p(c['unselected']['p'])})"])
        if rows:
            md += [f"Fig. 7 analogue at ratio {r}: Pearson r of each downstream metric with the selected- and the "
                   f"unselected-token loss over every checkpoint of every arm (base excluded). Caveat: {f6['caveat']}.",
                   ""]
            md += _table(["metric", "status", "checkpoints", "r with selected-token loss", "r with unselected-token loss"],
                         rows)
    return md + _img(images, "selected_loss", "selected and unselected token loss vs tokens") + _img(
        images, "accuracy_vs_loss", "accuracy vs selected / unselected token loss")


def _dynamics(res: dict, images: dict) -> list[str]:
    dyn = res.get("dynamics") or {}
    md = ["## Token loss dynamics", "", dyn.get("definition", ""), ""] + _err(dyn)
    if not dyn.get("runs"):
        return md
    rows = [["paper (Rho-1 §2.1)", "", *(_pct(PAPER_DYNAMICS[c]) for c in CATEGORIES), ""]]
    rows += [[n, d["checkpoints"], *(_pct(d["shares"][c]) for c in CATEGORIES),
              " / ".join(_pct(d["in_training"]["shares"][c]) for c in CATEGORIES) if d.get("in_training") else "—"]
             for n, d in dyn["runs"].items()]
    md += _table(["run", "checkpoints", *(f"{c} from base" for c in CATEGORIES), "within training (same order)"], rows)
    md += ["Within training: " + dyn.get("in_training_definition", ""), ""]
    md += _img(images, "dynamics", "token loss dynamics shares")
    name, d = next(((n, d) for n, d in dyn["runs"].items() if d["arm"] == "clm" and d.get("examples")), (None, None))
    if d:
        md += [f"Examples ({name}; the token in [[ ]], observed loss at the first → last checkpoint):", ""]
        md += [f"- {c}: " + "; ".join(f"`{_code(e['context'])}` ({e['observed_first']:.2f} → {e['observed_last']:.2f})"
                                      for e in d["examples"][c][:3]) for c in CATEGORIES if d["examples"][c]] + [""]
    return md


def _buckets(res: dict) -> list[str]:
    bk = res.get("buckets") or {}
    md = ["## Bucket transitions", "", bk.get("definition", ""), ""] + _err(bk)
    if bk.get("runs"):
        md += ["Thresholds per seed: " + ", ".join(f"seed {s}: {t:.3f}" for s, t in bk["thresholds"].items()), ""]
        md += _table(["run", "from", *CATEGORIES],
                     [[n, w.replace("vs_", ""), *(f"{b[w]['counts'][c]} ({_pct(b[w]['shares'][c])})" for c in CATEGORIES)]
                      for n, b in bk["runs"].items() for w in ("vs_base", "vs_clm") if w in b])
    return md


def _selection(res: dict, images: dict, html_link: str | None) -> list[str]:
    sel = res.get("selection") or {}
    md = ["## Selection diagnostics", ""] + _err(sel)
    if sel.get("tokens"):
        md += [f"{sel['run']} at its final checkpoint, ratio {sel['ratio']:g} (measured selected share "
               f"{_pct(sel['measured_share'])} of the test noisy tokens):", ""]
        for side in ("most", "least"):
            md += [f"- {side} selected tokens: " + ", ".join(f"`{_code(e['token'])}` {_pct(e['rate'])}"
                                                           for e in sel["tokens"][side][:12])]
        md += [""]
    return md + [f"Selected tokens highlighted in test text: [selection.html]({html_link})" if html_link
                 else "_selection.html could not be written (see results.json)._", ""]


def _appendix(res: dict) -> list[str]:
    cfg = res["config"]
    train = cfg.get("train") or {}
    md = ["## Appendix", "", "### Configuration", "",
          f"- Seeds: {', '.join(map(str, cfg.get('seeds') or []))} (each a whole pipeline)",
          f"- Model: `{cfg.get('model')}`; seq_len {cfg.get('seq_len')}; continual tokens {cfg.get('cpt_tokens')}; "
          f"checkpoints {cfg.get('checkpoints')}",
          f"- Strategies: {', '.join(cfg.get('strategies') or [])}; ratios "
          f"{', '.join(f'{r:g}' for r in cfg.get('ratios') or [])}; temperature {cfg.get('temperature')} "
          f"({cfg.get('temperature_unit') or 'raw'} units)",
          "- Training: " + (f"LoRA r={cfg['lora'].get('r')}, alpha={cfg['lora'].get('alpha')}"
                            if (cfg.get("lora") or {}).get("r") else "full-parameter"),
          f"- Tuning split: {cfg.get('tune_split')}; report split: {cfg.get('report_split')}; eval windows "
          f"{cfg.get('eval_windows')}"]
    md += [f"- {k.capitalize()} training budget: " + (", ".join(f"{x}={v[x]}" for x in ("max_tokens", "max_steps",
                                                                                        "batch_size", "lr") if v.get(x)) or "—")
           for k, v in train.items() if isinstance(v, dict)] + [""]
    study = {k: v for k, v in (cfg.get("study") or {}).items() if not isinstance(v, (dict, list))}
    if study:
        md += ["Study settings (study.yaml):", ""] + _table(["key", "value"], [[k, v] for k, v in study.items()])
    timings = cfg.get("timings") or {}
    md += ["### Timings", "", "Seconds of each stage, summed over the invocations that ran part of it (the report: "
           "the last).", ""] + _table(["stage", "seconds"], [[k, _f(float(v), 1)] for k, v in timings.items()]
                                       + [["**total**", f"**{cfg.get('timings_total', 0.0):.1f}**"]])
    return md


def write_report(study_dir, writer: str = "slm analyze report") -> Path:
    """Write STUDY/report/{results.json, plots/*.png, selection.html, report.md}; returns the report.md path.

    ``writer``: the command that wrote it, named in the report ("slm study" when the study writes it).
    """
    study = Path(study_dir)
    res = collect(study, writer=writer)
    out = study / "report"
    write_json(out / "results.json", res)
    images = make_plots(res, out / "plots")
    try:
        write_selection_html(study, out / "selection.html")
        link = "selection.html"
    except (UserError, ValueError, OSError, KeyError):
        link = None
    atomic_write_text(out / "report.md", render(res, images, link))
    return out / "report.md"
