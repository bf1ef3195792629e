"""The study report: ``STUDY/report/{results.json, plots/*.png, selection.html, report.md}``.

:func:`write_report` runs :func:`~selective_lm.study.collect.collect` and renders its numbers; the
report states what the numbers show, including where the paper's claims do not hold.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .collect import PAPER_DYNAMICS, collect, write_selection_html
from ..analysis.dynamics import CATEGORIES
from ..files import UserError, atomic_write_bytes, atomic_write_text, write_json

_MARK = {True: "✅ holds", False: "❌ does not hold", None: "— undetermined"}


# --------------------------------------------------------------------------- plots
def _fig(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")  # no pyplot: no global state, Agg canvas on save


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _mean_curves(groups: dict, rows_by_run: dict, key: str) -> dict:
    """group -> (tokens, mean over seeds, std or None) of ``key`` vs tokens (runs interpolated onto the first)."""
    out = {}
    for name, g in groups.items():
        cs = [np.array([(p["tokens"], p[key]) for p in rows_by_run.get(n) or [] if p.get(key) is not None],
                       dtype=float).reshape(-1, 2).T for n in g["runs"]]
        cs = [c for c in cs if c.shape[1]]
        if cs:
            ys = np.stack([np.interp(cs[0][0], c[0], c[1]) for c in cs])
            out[name] = (cs[0][0], ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else None)
    return out


def _lines(ax, curves: dict, colors: dict, title: str, ylabel: str, style: str = "-", label: bool = True) -> None:
    for g, (t, m, s) in curves.items():
        ax.plot(t, m, style, marker="o", ms=3, color=colors[g], label=g if label else None)
        if s is not None:
            ax.fill_between(t, m - s, m + s, color=colors[g], alpha=0.2)
    ax.set(title=title, xlabel="training tokens", ylabel=ylabel)
    ax.grid(alpha=0.3)


def make_plots(res: dict, plots: Path) -> dict[str, str]:
    """Write the PNGs that the data allow; returns name -> path relative to the report dir."""
    groups, runs, made = res["groups"], res["runs"], {}
    colors = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    curves = {n: r["curve"] for n, r in runs.items()}

    def done(name: str, fig: Figure) -> None:
        _save(fig, plots / f"{name}.png")
        made[name] = f"plots/{name}.png"

    for name, key, title in (("loss_target", "target_loss", "target-domain validation loss"),
                             ("loss_noisy", "noisy_loss", "noisy (pretraining-domain) validation loss"),
                             ("accuracy", "accuracy", "few-shot exact-match accuracy")):
        c = _mean_curves(groups, curves, key)
        if c:
            fig = _fig(6.5, 4)
            ax = fig.subplots()
            _lines(ax, c, colors, title + (" (mean ± std over seeds)" if len(res["config"]["seeds"]) > 1 else ""),
                   key.replace("_", " "))
            ax.legend(fontsize=7)
            done(name, fig)
    sv = (res.get("selected_vs_unselected") or {}).get("ratios") or {}
    if sv:
        fig = _fig(5 * len(sv), 7)
        axes = np.array(fig.subplots(2, len(sv), squeeze=False))
        for j, (r, d) in enumerate(sv.items()):
            for i, side in enumerate(("selected", "unselected")):
                _lines(axes[i, j], _mean_curves(groups, d["runs"], side), colors,
                       f"{side} tokens (fixed top-{float(r):.0%} mask)", "mean loss", label=(i, j) == (0, 0))
        axes[0, 0].legend(fontsize=7)
        done("selected_loss", fig)
        r, d = max(sv.items(), key=lambda kv: float(kv[0]))
        pts = [(runs[n]["group"], p) for n, rows in d["runs"].items() for p in rows if p["accuracy"] is not None]
        if pts:
            fig = _fig(10, 4)
            for ax, side in zip(fig.subplots(1, 2), ("selected", "unselected")):
                for g in groups:
                    xy = [(p[side], p["accuracy"]) for gg, p in pts if gg == g and p[side] is not None]
                    if xy:
                        ax.scatter(*zip(*xy), color=colors[g], label=g, s=18)
                corr = d["correlation"][f"accuracy_vs_{side}"]
                ax.set(title=f"accuracy vs {side}-token loss (r = {'n/a' if corr is None else f'{corr:.2f}'})",
                       xlabel=f"{side}-token loss (ratio {r})", ylabel="few-shot accuracy")
                ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            done("accuracy_vs_loss", fig)
    dyn = (res.get("dynamics") or {}).get("runs") or {}
    if dyn:
        rows = [("paper", PAPER_DYNAMICS)] + [(n, d["shares"]) for n, d in dyn.items()]
        fig = _fig(7, 0.4 * len(rows) + 1.2)
        ax = fig.subplots()
        left = np.zeros(len(rows))
        for i, c in enumerate(CATEGORIES):
            v = np.array([s[c] for _, s in rows])
            ax.barh([n for n, _ in rows], v, left=left, label=c, color=f"C{i}")
            left += v
        ax.invert_yaxis()
        ax.set(title="token loss dynamics on noisy validation tokens", xlabel="share of tokens", xlim=(0, 1))
        ax.legend(ncol=4, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.08))
        done("dynamics", fig)
    cos = res.get("cosine") or {}
    if cos.get("matrix"):
        m, names = np.array(cos["matrix"]), cos["names"]
        fig = _fig(1.5 + 0.7 * len(names), 1.0 + 0.6 * len(names))
        ax = fig.subplots()
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if abs(v) > 0.5 else "k")
        fig.colorbar(im, ax=ax)
        ax.set_title("cosine similarity of update directions")
        done("cosine", fig)
    sel = (res.get("selection") or {}).get("runs") or {}
    share = {n: np.array([(t, s, a) for t, s, a in d["training"]["curve"] if None not in (t, s, a)]).reshape(-1, 3)
             for n, d in sel.items() if d["arm"] != "clm"}
    share = {n: v for n, v in share.items() if len(v)}
    if share:
        fig = _fig(6.5, 4)
        ax = fig.subplots()
        for i, (n, v) in enumerate(share.items()):
            ax.plot(v[:, 0], v[:, 1], color=f"C{i % 10}", label=f"{n}: selected")
            ax.plot(v[:, 0], v[:, 2], "--", lw=1, color=f"C{i % 10}", label=f"{n}: all tokens")
        ax.set(title="noise share of training tokens", xlabel="training tokens", ylabel="share of injected noise")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        done("noise_share", fig)
    return made


# --------------------------------------------------------------------------- markdown
def _f(x, nd: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _pm(s: dict | None, nd: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "—"
    return f"{s['mean']:.{nd}f}" + (f" ± {s['std']:.{nd}f}" if s["n"] > 1 else "")


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def _code(x) -> str:
    return str(x).replace("\n", "⏎").replace("`", "'")


def _cell(x) -> str:
    return _code(x).replace("|", "\\|")


def _table(head: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows] + [""])


def _err(section) -> list[str]:
    if isinstance(section, dict) and "error" in section:
        return [f"_Not available: {_cell(section['error'])}_", ""]
    return [] if section else ["_Not available._", ""]


def _img(images: dict, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[name]})", ""] if name in images else []


def _budget(cfg: dict | None) -> str:
    if not cfg:
        return "—"
    parts = [f"{k}={cfg[k]}" for k in ("max_tokens", "max_steps", "batch_size", "lr") if cfg.get(k)]
    return ", ".join(parts) or "—"


def render(res: dict, images: dict, html_link: str | None) -> str:
    cfg, groups, runs = res["config"], res["groups"], res["runs"]
    seeds = cfg.get("seeds") or []
    train = cfg.get("train") or {}
    model = cfg.get("model") or (train.get("base") or {}).get("model") or (cfg.get("study") or {}).get("model") or "—"
    lora = cfg.get("lora") if (cfg.get("lora") or {}).get("r") else None
    md = ["# Selective Language Modeling (Rho-1) study report", "",
          (f"Study directory: `{res['study']}`. Written by `slm analyze report`; every number is in "
           "[results.json](results.json)."), "", "## Configuration", "",
          f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
          + ("; single seed: no variance estimate, differences may be noise" if len(seeds) == 1 else "") + ")",
          f"- Base model: `{model}`", f"- Selection ratios: {', '.join(f'{r:g}' for r in cfg.get('ratios') or [])}",
          "- Training: " + (f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}" if lora else "full-parameter"),
          *[f"- {k.capitalize()} training budget: {_budget(train.get(k))}" for k in ("base", "reference", "continual")],
          *[f"- {k.capitalize()} data: `{v}`" for k, v in (cfg.get("datasets") or {}).items()], ""]
    study = {k: v for k, v in (cfg.get("study") or {}).items() if not isinstance(v, (dict, list))}
    if study:
        md += ["Study settings (study.yaml):", ""] + _table(["key", "value"], [[k, v] for k, v in study.items()])
    if cfg.get("timings"):
        md += ["Timings:", ""] + _table(["stage", "seconds"], [[k, _f(v, 1)] for k, v in cfg["timings"].items()])
    base, ref = res.get("base") or {}, res.get("reference") or {}
    md += ["## Results", "", ("Final checkpoints; mean ± sample std over seeds (no ± with one seed). Speedup: tokens "
                              "CLM needs for its final target-domain loss / tokens the SLM run needs for it."), ""]
    rows = [[g, len(v["runs"]), _pm(v["target_ppl"]), _pm(v["noisy_ppl"]), _pm(v["accuracy"]),
             _pm(v["speedup"], 2) + "×" if v.get("speedup") else ("—" if v["arm"] == "clm" else "not reached")]
            for g, v in groups.items()]
    rows += [[n, "", _f(p.get("target_ppl")), _f(p.get("noisy_ppl")), _f(p.get("accuracy")), ""]
             for n, p in (("base (start)", base), ("reference", ref)) if "error" not in p]
    md += _table(["group", "runs", "target ppl", "noisy ppl", "few-shot accuracy", "speedup vs CLM"], rows)
    md += ["## Paper's claims", ""]
    md += [f"- {_MARK[c['holds']]}: **{c['claim']}**. {c['evidence']}" for c in res["claims"]] + [""]
    failed = [c["claim"] for c in res["claims"] if c["holds"] is False]
    if failed:
        md += ["In this study the following claims do **not** hold: " + "; ".join(failed) + ".", ""]

    md += ["## Perplexity", ""] + _table(
        ["run", "group", "tokens", "target loss", "target ppl", "noisy loss", "noisy ppl"],
        [[n, r["group"], _f(r["final"]["tokens"], 0), _f(r["final"]["target_loss"], 4), _f(r["final"]["target_ppl"]),
          _f(r["final"]["noisy_loss"], 4), _f(r["final"]["noisy_ppl"])] for n, r in runs.items()])
    md += _img(images, "loss_target", "target-domain validation loss vs tokens")
    md += _img(images, "loss_noisy", "noisy validation loss vs tokens")
    md += ["## Downstream accuracy", ""]
    if any(r["final"]["accuracy"] is not None for r in runs.values()):
        md += _table(["run", "group", "accuracy at start", "final accuracy"],
                     [[n, r["group"], _f(r["curve"][0]["accuracy"]), _f(r["final"]["accuracy"])]
                      for n, r in runs.items()])
        md += _img(images, "accuracy", "few-shot accuracy vs tokens")
    else:
        md += ["_No few-shot evaluation in this study._", ""]

    de = res.get("data_efficiency") or {}
    md += ["## Data efficiency", "", de.get("definition", ""), "", "The paper reports 5–10× fewer tokens.", ""]
    md += _err(de) + (_table(["run", "baseline", "CLM final target loss", "CLM tokens", "tokens to reach", "speedup"],
                             [[n, e.get("baseline", "—"), _f(e.get("target"), 4), _f(e.get("tokens_baseline"), 0),
                               _f(e.get("tokens_run"), 0) if e.get("tokens_run") is not None else "never",
                               _f(e.get("speedup"), 2) + "×" if e.get("speedup") else "—"]
                              for n, e in de.get("runs", {}).items()]) if "runs" in de else [])

    dyn = res.get("dynamics") or {}
    md += ["## Token loss dynamics", "", dyn.get("definition", ""), ""] + _err(dyn)
    if dyn.get("runs"):
        md += _table(["run", "checkpoints", *CATEGORIES],
                     [["paper (Rho-1 §2.1)", "", *(_pct(PAPER_DYNAMICS[c]) for c in CATEGORIES)]]
                     + [[n, d["checkpoints"], *(_pct(d["shares"][c]) for c in CATEGORIES)]
                        for n, d in dyn["runs"].items()])
        within = {n: d["in_training"] for n, d in dyn["runs"].items() if d.get("in_training")}
        if within:
            md += ["Within training — " + dyn.get("in_training_definition", "") + ":", ""]
            md += _table(["run", "checkpoints", *CATEGORIES],
                         [[n, w["checkpoints"], *(_pct(w["shares"][c]) for c in CATEGORIES)]
                          for n, w in within.items()])
        md += _img(images, "dynamics", "token loss dynamics shares")
        name, d = next(((n, d) for n, d in dyn["runs"].items() if d["arm"] == "clm" and d.get("examples")),
                       (None, None))
        if d:
            md += [f"Examples ({name}; the token in [[ ]], fitted loss start → end):", ""]
            md += [f"- {c}: " + "; ".join(f"`{_code(e['context'])}` ({e['l_start']:.2f} → {e['l_end']:.2f})"
                                          for e in d["examples"][c][:3]) for c in CATEGORIES if d["examples"][c]]
            md += [""]

    bk = res.get("buckets") or {}
    md += ["## Bucket transitions", "", bk.get("definition", ""), ""] + _err(bk)
    if bk.get("runs"):
        md += ["Thresholds per seed: " + ", ".join(f"seed {s}: {t:.3f}" for s, t in bk["thresholds"].items()), ""]
        md += _table(["run", "from", *CATEGORIES],
                     [[n, w.replace("vs_", ""), *(f"{b[w]['counts'][c]} ({_pct(b[w]['shares'][c])})"
                                                  for c in CATEGORIES)]
                      for n, b in bk["runs"].items() for w in ("vs_base", "vs_clm") if w in b])

    sv = res.get("selected_vs_unselected") or {}
    md += ["## Selected vs unselected token loss", "", "Mask: " + sv.get("definition", ""), ""] + _err(sv)
    for r, d in (sv.get("ratios") or {}).items():
        cor = d["correlation"]
        md += [(f"Ratio {r} ({d['n_selected']} of {d['n_tokens']} tokens selected): correlation over all checkpoints "
                f"(n={cor['n_points']}) of accuracy with selected-token loss {_f(cor['accuracy_vs_selected'], 2)}, "
                f"with unselected-token loss {_f(cor['accuracy_vs_unselected'], 2)}."), ""]
        md += _table(["run", "selected loss start → final", "unselected loss start → final"],
                     [[n, f"{_f(rows[0]['selected'])} → {_f(rows[-1]['selected'])}",
                       f"{_f(rows[0]['unselected'])} → {_f(rows[-1]['unselected'])}"]
                      for n, rows in d["runs"].items()])
    md += _img(images, "selected_loss", "selected and unselected token loss vs tokens (paper Fig. 6)")
    md += _img(images, "accuracy_vs_loss", "accuracy vs selected / unselected token loss (paper Fig. 7)")

    cos = res.get("cosine") or {}
    md += ["## Update-direction cosine similarity", "", cos.get("definition", ""), ""] + _err(cos)
    if cos.get("matrix"):
        md += _table(["", *cos["names"]],
                     [[n, *(f"{v:.3f}" for v in row)] for n, row in zip(cos["names"], cos["matrix"])])
        md += _img(images, "cosine", "cosine similarity heatmap")

    sel = res.get("selection") or {}
    md += ["## Selection diagnostics", "", sel.get("definition", ""), ""] + _err(sel)
    if sel.get("runs"):
        def sh(s):
            return "—" if not s else f"{_pct(s['first'])} / {_pct(s['last'])} / {_pct(s['mean'])}"
        md += ["Noise share during training (first / last / mean):", ""]
        md += _table(["run", "selected tokens", "all tokens"],
                     [[n, sh(d["training"].get("noise_share_selected")), sh(d["training"].get("noise_share_all"))]
                      for n, d in sel["runs"].items()])
        md += _img(images, "noise_share", "noise share of selected vs all training tokens")
    if sel.get("validation_error"):
        md += [f"_Validation diagnostics not available: {_cell(sel['validation_error'])}_", ""]
    for r, v in (sel.get("validation") or {}).items():
        md += [f"Validation, fixed top-k mask at ratio {r}:", ""]
        if v.get("provenance"):
            p = v["provenance"]
            md += _table(["provenance", "share of selected", "share of unselected", "selection rate"],
                         [[lab, _pct(p["selected"][lab]), _pct(p["unselected"][lab]), _pct(p["selection_rate"][lab])]
                          for lab in p["counts"]])
        for side in ("most", "least"):
            md += [f"- {side} selected tokens: " + ", ".join(f"`{_code(e['token'])}` {_pct(e['rate'])}"
                                                           for e in v["tokens"][side][:12])]
        md += [""]
    md += [f"Selected tokens highlighted in validation text: [selection.html]({html_link})" if html_link
           else "_selection.html could not be written (see results.json)._", ""]
    return "\n".join(md)


def write_report(study_dir) -> Path:
    """Write STUDY/report/{results.json, plots/*.png, selection.html, report.md}; returns the report.md path."""
    study = Path(study_dir)
    res = collect(study)
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
