"""The study report's figures (PNG, matplotlib without pyplot) and the caption line under each.

One colour family per strategy (top-k blues, random oranges, stochastic greens), one line style per ratio,
CLM black, HQ-only purple dashed, content-only brown dotted, the reference red; small markers so that
no curve hides another; loss axes in nats/token, zoomed on the arms' range.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..analysis.dynamics import CATEGORIES
from ..files import atomic_write_bytes

FAMILY = {"topk": ["#08306b", "#2171b5", "#6baed6", "#9ecae1"], "random": ["#7f2704", "#d94801", "#fd8d3c", "#fdae6b"],
          "stochastic": ["#00441b", "#238b45", "#74c476", "#a1d99b"]}
OTHER = ["#49006a", "#ae017e", "#f768a1", "#fbb4b9"]
STYLES = ["-", "--", ":", "-."]
VARIANT_COLOURS = ["#e7298a", "#bcbd22", "#e6ab02", "#8c564b", "#17becf", "#666666", "#f781bf", "#9edae5"]
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*"]
FIXED = {"clm": ("black", "-", "o"), "hq": ("#6a3d9a", "--", "s"), "content": ("#b15928", ":", "D"),
         "reference": ("#e31a1c", ":", None), "base": ("#737373", "-.", None)}
LOSS = "loss (nats/token)"
CAPTIONS = {
    "loss_target": "Test target-domain loss vs training tokens (mean over seeds, band = ±1 std). Look for: SLM "
                   "curves (blues/greens) below CLM (black) at equal tokens; where HQ-only and content-only sit.",
    "loss_noisy": "Test noisy (web) loss. Look for: SLM gives up loss on the tokens it drops, so its noisy loss "
                  "may rise while its target loss falls.",
    "accuracy": "Multiple-choice accuracy (top, chance dashed) and the gold answer's NLL (bottom), own generator "
                "(left) and external generator (right), mean over seeds. Look for: whether an arm leaves chance "
                "before comparing arms; NLL falls as a model learns the answers.",
    "selected_loss": "Paper Fig. 6: loss of the tokens SLM would select at each checkpoint (top row) and of the "
                     "others (bottom row), per ratio. Look for: SLM lower than CLM on selected tokens, higher on "
                     "unselected ones.",
    "accuracy_vs_loss": "Paper Fig. 7: the own gold-answer NLL vs selected / unselected token loss, one point per "
                        "checkpoint. Look for: a tighter relation with selected-token loss; points of one run are "
                        "not independent.",
    "sweep": "Test target loss at each HQ : budget ratio (log scale; mean ± std over seeds): CLM (no HQ data), "
             "HQ-only (trains on the HQ data, repeating it), SLM top-k (the HQ data trains its reference). Look for: "
             "the ratio where the HQ-only line crosses the SLM line.",
    "efficiency": "Speed-up(t) = t / tokens the arm needs to reach CLM's loss at t (mean over seeds). Look for: "
                  "curves above 1 (faster than CLM); a curve stops where an arm no longer reaches CLM's loss.",
    "overlap": "Mean share of the selected tokens that top-k would also select. Look for: stochastic between "
               "random (≈ ratio, grey tick) and top-k (1.0).",
    "noise_kinds": "Share of each provenance label's test tokens that SLM would select at its final checkpoint. "
                   "Look for: which kinds of noise SLM drops (low bars) vs content (high bar).",
    "noise_share": "Share of injected noise among the tokens SLM selects during training (solid) vs among all "
                   "tokens (grey dashed, drawn once). Look for: curves below the grey line.",
    "dynamics": "Token loss dynamics shares (test noisy tokens), from the base (left) and within training (right), "
                "with the paper's shares on top. Look for: how far CLM is from the paper's 11/12/26/51%.",
    "cosine": "Cosine between update directions (first seed). Look for: whether SLM arms move the weights in "
              "a direction different from CLM's.",
}


def style(group: str, groups: dict, ratios: list[float]) -> dict:
    if group in FIXED:
        c, ls, m = FIXED[group]
        return {"color": c, "ls": ls, "marker": m}
    g = groups.get(group) or {}
    if g.get("arm") == "variant":  # one colour and marker per variant, dash-dot
        names = sorted(k for k, v in groups.items() if v.get("arm") == "variant")
        j = names.index(group)
        return {"color": VARIANT_COLOURS[j % len(VARIANT_COLOURS)], "ls": "-.", "marker": MARKERS[j % len(MARKERS)]}
    i = ratios.index(float(g["ratio"])) if g.get("ratio") is not None and float(g["ratio"]) in ratios else 0
    fam = FAMILY.get(g.get("strategy"), OTHER)
    strategies = sorted({v.get("strategy") for v in groups.values() if v.get("strategy")})
    m = MARKERS[(strategies.index(g["strategy"]) + 1) % len(MARKERS)] if g.get("strategy") in strategies else "x"
    return {"color": fam[i % len(fam)], "ls": STYLES[i % len(STYLES)], "marker": m}


def _fig(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")  # no pyplot: no global state, Agg canvas on save


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def mean_curves(groups: dict, rows_by_run: dict, key: str, x: str = "tokens", min_x: float = -1.0) -> dict:
    """group -> (x, mean over seeds, std or None) of ``key`` (runs interpolated onto the first run's x)."""
    out = {}
    for name, g in groups.items():
        cs = [np.array([(p[x], p[key]) for p in rows_by_run.get(n) or [] if p.get(key) is not None and p[x] > min_x],
                       dtype=float).reshape(-1, 2).T for n in g.get("runs") or []]
        cs = [c for c in cs if c.shape[1]]
        if cs:
            ys = np.stack([np.interp(cs[0][0], c[0], c[1]) for c in cs])
            out[name] = (cs[0][0], ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else None)
    return out


def _lines(ax, curves: dict, groups: dict, ratios: list, label: bool = True) -> None:
    for g, (t, m, s) in curves.items():
        st = style(g, groups, ratios)
        ax.plot(t, m, ls=st["ls"], marker=st["marker"], ms=3, lw=1.2, color=st["color"], label=g if label else None,
                alpha=0.9)
        if s is not None:
            ax.fill_between(t, m - s, m + s, color=st["color"], alpha=0.12, lw=0)
    ax.grid(alpha=0.3)


def _zoom(ax, curves: dict, refs: dict[str, float | None]) -> None:
    """y range of the arms' curves; reference values inside it as lines, outside it as a note. A curve far
    above the others (its lowest point beyond the arms' final values' upper quartile + 10 IQR, e.g. a
    diverged arm) does not set the range: it is named in the note instead."""
    finals = np.array([m[-1] for _, m, _ in curves.values() if len(m)])
    far = set()
    if finals.size >= 4:
        q1, q3 = np.percentile(finals, [25, 75])
        fence = q3 + 10 * max(q3 - q1, 0.01 * abs(q3))
        far = {g for g, (_, m, _) in curves.items() if len(m) and m.min() > fence}
    vals = np.concatenate([m for g, (_, m, _) in curves.items() if g not in far]) if curves else np.array([])
    if not vals.size:
        return
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    notes = [f"{g}: final {curves[g][1][-1]:.3f} (above, off scale)" for g in sorted(far)]
    for name, v in refs.items():
        if v is None:
            continue
        if lo - pad <= v <= hi + pad:
            c, ls, _ = FIXED[name]
            ax.axhline(v, color=c, ls=ls, lw=1, label=f"{name} ({v:.3f})")
        else:
            notes.append(f"{name}: {v:.3f} ({'above' if v > hi else 'below'}, off scale)")
    if notes:
        ax.text(0.01, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=7, va="bottom", color="#444")


def _legend(fig: Figure, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)


def make_plots(res: dict, plots: Path) -> dict[str, str]:
    """Write the PNGs that the data allow; returns name -> path relative to the report dir."""
    groups = {k: v for k, v in res["groups"].items() if v.get("arm") not in ("base", "reference") and not v.get("sweep")}
    ratios = [float(r) for r in (res["config"].get("ratios") or [])]
    curves = {n: r["curve"] for n, r in res["runs"].items()}
    ref, base = res["groups"].get("reference") or {}, res["groups"].get("base") or {}
    made: dict[str, str] = {}

    def done(name: str, fig: Figure) -> None:
        _save(fig, plots / f"{name}.png")
        made[name] = f"plots/{name}.png"

    for name, key, title in (("loss_target", "target_loss", "test target-domain loss"),
                             ("loss_noisy", "noisy_loss", "test noisy (web) loss")):
        c = mean_curves(groups, curves, key, min_x=0.0)
        if c:
            fig = _fig(8, 4.2)
            ax = fig.subplots()
            _lines(ax, c, groups, ratios)
            _zoom(ax, c, {"reference": (ref.get(key) or {}).get("mean"), "base": (base.get(key) or {}).get("mean")})
            ax.set(title=title + " (base at 0 tokens not drawn)", xlabel="training tokens", ylabel=LOSS)
            _legend(fig, ax)
            done(name, fig)
    acc = {k: mean_curves(groups, curves, k) for k in ("own_mc_acc", "ext_mc_acc", "own_answer_nll", "ext_answer_nll")}
    if any(acc.values()):
        fig = _fig(11, 7)
        axes = fig.subplots(2, 2)
        chance = next((r["final"].get("mc_chance") for r in res["runs"].values() if r["final"].get("mc_chance")), None)
        for ax, (k, c) in zip(axes.reshape(-1), acc.items()):
            _lines(ax, c, groups, ratios, label=k == "own_mc_acc")
            if (ref.get(k) or {}).get("mean") is not None:
                ax.axhline(ref[k]["mean"], color=FIXED["reference"][0], ls=":", lw=1,
                           label="reference" if k == "own_mc_acc" else None)
            if k.endswith("_acc") and chance:
                ax.axhline(chance, color="#999", lw=0.8, ls="--", label=f"chance ({chance:.0%})" if k == "own_mc_acc"
                           else None)
            ax.set(title=("own" if k.startswith("own") else "external") + (" multiple-choice accuracy"
                                                                            if k.endswith("acc") else " gold-answer NLL"),
                   xlabel="training tokens", ylabel="accuracy" if k.endswith("acc") else "nats per answer")
        _legend(fig, axes[0, 0])
        done("accuracy", fig)
    fig6 = (res.get("fig6") or {}).get("ratios") or {}
    if fig6:
        fig = _fig(4.5 * len(fig6) + 2, 7)
        axes = np.array(fig.subplots(2, len(fig6), squeeze=False))
        for j, (r, d) in enumerate(fig6.items()):
            for i, side in enumerate(("selected", "unselected")):
                c = mean_curves(groups, d["runs"], side, min_x=0.0)
                _lines(axes[i, j], c, groups, ratios, label=(i, j) == (0, 0))
                _zoom(axes[i, j], c, {})
                axes[i, j].set(title=f"{side} tokens (SLM's top-{float(r):.0%} at each checkpoint)",
                               xlabel="training tokens", ylabel=LOSS)
        _legend(fig, axes[0, 0])
        done("selected_loss", fig)
        r, d = max(fig6.items(), key=lambda kv: float(kv[0]))
        cor, key = d["correlation"].get("own_answer_nll") or {}, "own_answer_nll"
        if cor.get("computed"):
            fig = _fig(11, 4)
            axs = fig.subplots(1, 2)
            for ax, side in zip(axs, ("selected", "unselected")):
                for n, rows in d["runs"].items():
                    g = res["runs"][n]["group"]
                    xy = [(p[side], p[key]) for p in rows if not p["is_base"] and p.get(key) is not None
                          and p[side] is not None]
                    if xy:
                        st = style(g, groups, ratios)
                        ax.scatter(*zip(*xy), color=st["color"], marker=st["marker"], s=14, alpha=0.8)
                pr = cor[side]
                r_txt = "n/a" if pr["r"] is None else f"{pr['r']:.2f}"
                ax.set(title=f"answer NLL vs {side}-token loss (r = {r_txt}, n = {pr['n']})",
                       xlabel=f"{side}-token {LOSS}, ratio {r}", ylabel="own gold-answer NLL")
                ax.grid(alpha=0.3)
            done("accuracy_vs_loss", fig)
    eff = (res.get("data_efficiency") or {}).get("groups") or {}
    if eff:
        fig = _fig(8, 4)
        ax = fig.subplots()
        for g, e in eff.items():
            pts = [(p["tokens_clm"], p["speedup"]["mean"]) for p in e["curve"] if p["speedup"]["mean"] is not None
                   and not p["unreached"]]
            if pts:
                st = style(g, res["groups"], ratios)
                ax.plot(*zip(*pts), ls=st["ls"], marker=st["marker"], ms=3, lw=1.2, color=st["color"], label=g)
        ax.axhline(1.0, color="black", lw=1, label="CLM (1×)")
        ax.set(title="speed-up vs CLM at each CLM checkpoint", xlabel="CLM training tokens t",
               ylabel="speed-up = t / tokens to reach CLM's loss")
        ax.grid(alpha=0.3)
        _legend(fig, ax)
        done("efficiency", fig)
    ov = (res.get("overlap") or {}).get("groups") or {}
    ov = {g: o for g, o in ov.items() if o["overlap"]["mean"] is not None}
    if ov:
        fig = _fig(7, 0.35 * len(ov) + 1.5)
        ax = fig.subplots()
        names = list(ov)
        ax.barh(names, [ov[g]["overlap"]["mean"] for g in names], color=[style(g, groups, ratios)["color"]
                                                                         for g in names])
        ax.scatter([float(ov[g]["ratio"]) for g in names], names, marker="|", s=200, color="#888", label="random ≈ ratio")
        ax.set(xlim=(0, 1.05), xlabel="mean topk_overlap", title="overlap with top-k selection")
        ax.invert_yaxis()
        done("overlap", fig)
    hn = res.get("harder_noise") or {}
    if hn.get("groups"):
        labels = list(next(iter(hn["groups"].values())))
        fig = _fig(10, 4)
        ax = fig.subplots()
        w = 0.8 / len(hn["groups"])
        for i, (g, d) in enumerate(hn["groups"].items()):
            vals = [d[lab]["mean"] if d[lab]["mean"] is not None else np.nan for lab in labels]
            ax.bar(np.arange(len(labels)) + i * w, vals, w, color=style(g, groups, ratios)["color"], label=g)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels, rotation=20, fontsize=8)
        ax.set(ylabel="share of the label's tokens selected", title="which kinds of tokens SLM selects (final)")
        _legend(fig, ax)
        done("noise_kinds", fig)
    tr = {n: d for n, d in (hn.get("training") or {}).items() if res["runs"][n]["arm"] == "slm"}
    if tr:
        fig = _fig(8, 4)
        ax = fig.subplots()
        rows = {n: [{"tokens": t, "sel": s, "all": a} for t, s, a in d["curve"] if None not in (t, s, a)]
                for n, d in tr.items()}
        slm_groups = {g: v for g, v in groups.items() if v["arm"] == "slm"}
        _lines(ax, mean_curves(slm_groups, rows, "sel"), groups, ratios)
        every = [p for v in rows.values() for p in v]
        if every:
            t = sorted({p["tokens"] for p in every})
            ax.plot(t, [np.mean([p["all"] for p in every if p["tokens"] == x]) for x in t], color="#888", ls="--",
                    lw=1.5, label="all tokens")
        ax.set(title="noise share of training tokens", xlabel="training tokens", ylabel="share of injected noise")
        _legend(fig, ax)
        done("noise_share", fig)
    dyn = res.get("dynamics") or {}
    if dyn.get("runs"):
        from .tokens import PAPER_DYNAMICS

        fig = _fig(11, 0.35 * len(groups) + 2)
        for ax, key, title in zip(fig.subplots(1, 2), ("shares", "in_training"), ("from the base", "within training")):
            rows = [("paper", PAPER_DYNAMICS)]
            for g, v in groups.items():
                sh = [(d[key]["shares"] if key == "in_training" else d[key]) for n, d in dyn["runs"].items()
                      if n in v["runs"] and d.get(key)]
                if sh:
                    rows.append((g, {c: float(np.mean([s[c] for s in sh])) for c in CATEGORIES}))
            left = np.zeros(len(rows))
            for i, c in enumerate(CATEGORIES):
                v = np.array([s[c] for _, s in rows])
                ax.barh([n for n, _ in rows], v, left=left, label=c, color=["#d95f02", "#e7298a", "#1b9e77", "#7570b3"][i])
                left += v
            ax.invert_yaxis()
            ax.set(title=f"token loss dynamics {title}", xlabel="share of tokens", xlim=(0, 1))
            ax.tick_params(axis="y", labelsize=7)
        _legend(fig, ax)
        done("dynamics", fig)
    sw = (res.get("sweep") or {}).get("rows") or []
    if sw:
        fig = _fig(7, 4.2)
        ax = fig.subplots()
        x = [r["hq_ratio"] for r in sw]
        for key, name in (("clm", "clm"), ("hq", "hq"), ("slm", f"slm-topk-{float(res['sweep']['sweep_ratio']):g}")):
            m = np.array([(r[key] or {}).get("mean") if (r[key] or {}).get("mean") is not None else np.nan for r in sw])
            sd = np.array([(r[key] or {}).get("std") or 0.0 for r in sw])
            st = style(name, res["groups"], ratios)
            ax.errorbar(x, m, yerr=sd, color=st["color"], ls=st["ls"], marker=st["marker"] or "o", ms=4, capsize=3,
                        label={"clm": "CLM", "hq": "HQ-only", "slm": "SLM top-k"}[key])
        ax.set_xscale("log")
        ax.set_xticks(x, [r["label"] for r in sw])
        ax.minorticks_off()
        ax.set(title="HQ-size sweep", xlabel="HQ : budget", ylabel="test target " + LOSS)
        ax.grid(alpha=0.3)
        _legend(fig, ax)
        done("sweep", fig)
    cos = res.get("cosine") or {}
    if cos.get("matrix"):
        m, names = np.array(cos["matrix"]), cos["names"]
        fig = _fig(1.5 + 0.6 * len(names), 1.0 + 0.5 * len(names))
        ax = fig.subplots()
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if abs(v) > 0.5 else "k")
        fig.colorbar(im, ax=ax)
        ax.set_title("cosine similarity of update directions (first seed)")
        done("cosine", fig)
    return made
