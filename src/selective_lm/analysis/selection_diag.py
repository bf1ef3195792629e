"""Diagnostics of which tokens selective language modeling trains on.

* :func:`provenance_shares` - how selection splits across token provenance
  (content / injected noise / off-topic text).
* :func:`token_selection_rates`, :func:`most_least_selected` - per-vocabulary-item
  selection rates.
* :func:`selection_html` - a self-contained HTML page highlighting selected tokens.
* :func:`split_losses` - mean loss on selected vs unselected tokens (paper Fig. 6).
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np

DEFAULT_PROVENANCE_LABELS: Mapping[int, str] = MappingProxyType(
    {0: "content", 1: "noise", 2: "offtopic"}
)
_PROV_COLOURS = ("#2e7d32", "#c62828", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f")


def _bool_mask(selected: np.ndarray, name: str = "selected") -> np.ndarray:
    arr = np.asarray(selected)
    if arr.dtype != np.bool_:
        if arr.size and not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def provenance_shares(
    selected: np.ndarray,
    provenance: np.ndarray,
    labels: Mapping[int, str] = DEFAULT_PROVENANCE_LABELS,
) -> dict:
    """Provenance mix of selected and unselected tokens and selection rate per label.

    Returns:
        ``{"n_selected", "n_unselected",
        "selected": {label: share among selected tokens or None if none selected},
        "unselected": {label: share among unselected or None},
        "selection_rate": {label: selected / total of that label, or None if absent},
        "counts": {label: {"total": int, "selected": int}}}``.

    Raises:
        ValueError: shape mismatch or a provenance code missing from ``labels``.
    """
    sel = _bool_mask(selected)
    prov = np.asarray(provenance)
    if sel.shape != prov.shape:
        raise ValueError(f"selected and provenance shapes differ: {sel.shape} vs {prov.shape}")
    if not labels:
        raise ValueError("labels must not be empty")
    unknown = sorted(set(np.unique(prov).tolist()) - set(labels))
    if unknown:
        raise ValueError(f"provenance codes without a label: {unknown}")
    n_sel = int(sel.sum())
    n_unsel = int(sel.size - n_sel)
    out: dict = {"n_selected": n_sel, "n_unselected": n_unsel, "selected": {},
                 "unselected": {}, "selection_rate": {}, "counts": {}}
    for code, label in labels.items():
        is_label = prov == code
        total = int(is_label.sum())
        chosen = int((is_label & sel).sum())
        out["counts"][label] = {"total": total, "selected": chosen}
        out["selected"][label] = chosen / n_sel if n_sel else None
        out["unselected"][label] = (total - chosen) / n_unsel if n_unsel else None
        out["selection_rate"][label] = chosen / total if total else None
    return out


def token_selection_rates(
    token_ids: np.ndarray, selected: np.ndarray, min_count: int = 5
) -> list[tuple[int, int, float]]:
    """Selection rate of every token id occurring at least ``min_count`` times.

    Returns:
        ``(token_id, count, rate)`` tuples sorted by rate descending, ties broken
        by count descending then token id ascending.
    """
    ids = np.asarray(token_ids)
    sel = _bool_mask(selected)
    if ids.shape != sel.shape:
        raise ValueError(f"token_ids and selected shapes differ: {ids.shape} vs {sel.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be integers, got dtype {ids.dtype}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    uniq, inverse, counts = np.unique(ids.ravel(), return_inverse=True, return_counts=True)
    chosen = np.bincount(inverse, weights=sel.ravel().astype(np.float64), minlength=uniq.size)
    rows = [
        (int(t), int(c), float(s) / int(c))
        for t, c, s in zip(uniq, counts, chosen)
        if c >= min_count
    ]
    rows.sort(key=lambda row: (-row[2], -row[1], row[0]))
    return rows


def most_least_selected(
    token_ids: np.ndarray,
    selected: np.ndarray,
    decode: Callable[[int], str],
    k: int = 15,
    min_count: int = 5,
) -> dict:
    """The ``k`` most and least often selected token ids (with ``count >= min_count``).

    Returns:
        ``{"most": [...], "least": [...]}``; each entry is
        ``{"token_id", "token", "count", "rate"}``. ``"most"`` is ordered by rate
        descending, ``"least"`` by rate ascending (ties: higher count first).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rows = token_selection_rates(token_ids, selected, min_count=min_count)

    def entry(row: tuple[int, int, float]) -> dict:
        return {"token_id": row[0], "token": decode(row[0]), "count": row[1], "rate": row[2]}

    least = sorted(rows, key=lambda row: (row[2], -row[1], row[0]))
    return {"most": [entry(r) for r in rows[:k]], "least": [entry(r) for r in least[:k]]}


def _prov_colour(code: int) -> str:
    return _PROV_COLOURS[code % len(_PROV_COLOURS)] if code >= 0 else "#757575"


def selection_html(
    token_strings: Sequence[str],
    selected: Sequence[bool],
    *,
    title: str,
    excess: Sequence[float] | None = None,
    provenance: Sequence[int] | None = None,
    provenance_labels: Mapping[int, str] = DEFAULT_PROVENANCE_LABELS,
    colour_by_excess: bool = False,
    note: str | None = None,
) -> str:
    """Render tokens as a self-contained HTML page with selected tokens highlighted.

    Args:
        token_strings: decoded tokens in order; their text is HTML-escaped and
            newlines are preserved (``white-space: pre-wrap``).
        selected: one flag per token.
        title: page title and heading.
        excess: optional per-token excess loss, shown as a tooltip; entries with a NaN excess (or a
            negative provenance code) are not tokens (separators) and are left out of the summary counts.
        provenance: optional per-token provenance code, shown as an underline colour.
        provenance_labels: names of provenance codes for the legend.
        colour_by_excess: give each token a background by its excess (red above 0, blue below, stronger further from
            0, full at the 98th percentile of |excess|) and mark the selected ones with a box instead.
        note: a line under the legend (e.g. where the excess comes from).
    """
    n = len(token_strings)
    sel = [bool(s) for s in selected]
    if len(sel) != n:
        raise ValueError(f"selected has {len(sel)} entries, expected {n}")
    if excess is not None and len(excess) != n:
        raise ValueError(f"excess has {len(excess)} entries, expected {n}")
    if provenance is not None and len(provenance) != n:
        raise ValueError(f"provenance has {len(provenance)} entries, expected {n}")

    scale = 0.0
    if colour_by_excess and excess is not None:
        finite = [abs(float(x)) for x in excess if math.isfinite(float(x))]
        scale = sorted(finite)[math.ceil(0.98 * (len(finite) - 1))] if finite else 0.0
    spans: list[str] = []
    for i, tok in enumerate(token_strings):
        classes = ["t", "s" if sel[i] else "u"]
        attrs = ""
        if provenance is not None:
            code = int(provenance[i])
            classes.append(f"p{code}" if code >= 0 else "pneg")
        if excess is not None and math.isfinite(float(excess[i])):
            attrs = f' title="{html.escape(f"#{i} excess={float(excess[i]):.4f}", quote=True)}"'
            if scale > 0:
                x = float(excess[i])
                rgb = "211,47,47" if x > 0 else "25,118,210"
                attrs += f' style="background:rgba({rgb},{min(1.0, abs(x) / scale) * 0.6:.2f})"'
        spans.append(f'<span class="{" ".join(classes)}"{attrs}>{html.escape(str(tok))}</span>')

    css = [
        "body{font-family:sans-serif;margin:2em;max-width:60em;}",
        ".text{font-family:monospace;white-space:pre-wrap;line-height:1.9;"
        "border:1px solid #ccc;padding:1em;}",
        ".s{background:#ffe082;}",
        ".u{color:#9e9e9e;}",
        ".legend span.t{padding:0 .4em;margin-right:1em;}",
    ]
    if scale > 0:  # the background shows the excess: selection is a box
        css[2:4] = [".s{outline:1px solid #212121;font-weight:bold;}", ".u{color:#616161;}"]
    legend = ['<span class="t s">selected</span>', '<span class="t u">not selected</span>']
    if scale > 0:
        legend += [f'<span class="t" style="background:rgba(211,47,47,.6)">excess ≥ {scale:.2f}</span>',
                   f'<span class="t" style="background:rgba(25,118,210,.6)">excess ≤ −{scale:.2f}</span>']
    if provenance is not None:
        codes = sorted({int(p) for p in provenance} | set(provenance_labels))
        for code in codes:
            cls = f"p{code}" if code >= 0 else "pneg"
            css.append(f".{cls}{{border-bottom:3px solid {_prov_colour(code)};}}")
            name = provenance_labels.get(code, f"provenance {code}")
            legend.append(f'<span class="t {cls}">{html.escape(name)}</span>')
    # only real tokens count: no separator entries (provenance < 0) and no entries without an excess (NaN)
    real = [i for i in range(n) if (provenance is None or int(provenance[i]) >= 0)
            and (excess is None or math.isfinite(float(excess[i])))]
    n_real, n_sel = len(real), sum(sel[i] for i in real)
    rate = f"{n_sel / n_real:.1%}" if n_real else "n/a"
    summary = f"{n_real} tokens, {n_sel} selected ({rate})"
    if excess is not None:
        summary += "; hover a token for its excess loss"
    safe_title = html.escape(title)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{safe_title}</title>\n<style>\n" + "\n".join(css) + "\n</style>\n</head>\n"
        f"<body>\n<h1>{safe_title}</h1>\n<p>{html.escape(summary)}</p>\n"
        f'<p class="legend">{"".join(legend)}</p>\n' + (f"<p>{html.escape(note)}</p>\n" if note else "")
        + f'<div class="text">{"".join(spans)}</div>\n</body>\n</html>\n'
    )


def split_losses(losses: np.ndarray, selected_mask: np.ndarray) -> dict:
    """Mean loss on selected and on unselected tokens (paper Fig. 6).

    Non-finite losses (e.g. NaN padding) are ignored. A side with no finite loss
    gets ``None``.

    Returns:
        ``{"selected": float | None, "unselected": float | None,
        "n_selected": int, "n_unselected": int}`` (counts of finite losses).
    """
    arr = np.asarray(losses, dtype=np.float64)
    sel = _bool_mask(selected_mask, "selected_mask")
    if arr.shape != sel.shape:
        raise ValueError(f"losses and selected_mask shapes differ: {arr.shape} vs {sel.shape}")
    finite = np.isfinite(arr)
    out: dict = {}
    for side, mask in (("selected", sel & finite), ("unselected", ~sel & finite)):
        count = int(mask.sum())
        out[side] = float(arr[mask].mean()) if count else None
        out[f"n_{side}"] = count
    return out


def topk_mask(excess: np.ndarray, ratio: float) -> np.ndarray:
    """The selection SLM makes at a checkpoint: top-k (k = round(ratio × N)) of the excess loss, as in training."""
    import torch

    from ..selection import select_tokens

    return select_tokens(torch.from_numpy(np.ascontiguousarray(excess)), ratio, "topk").numpy()


def training_shares(run_dir) -> dict:
    """noise_share_selected / noise_share_all / topk_overlap of the train rows of metrics.jsonl; a curve."""
    from ..checkpoint import read_metrics

    rows = [r for r in read_metrics(run_dir) if r.get("type") == "train"]
    out: dict = {}
    for key in ("noise_share_selected", "noise_share_all", "topk_overlap"):
        v = [r[key] for r in rows if r.get(key) is not None]
        out[key] = {"first": v[0], "last": v[-1], "mean": float(np.mean(v)), "n": len(v)} if v else None
    pts = [[r.get("tokens"), r.get("noise_share_selected"), r.get("noise_share_all")] for r in rows
           if r.get("noise_share_all") is not None or r.get("noise_share_selected") is not None]
    out["curve"] = pts[:: max(1, math.ceil(len(pts) / 200))]
    return out
