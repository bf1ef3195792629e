"""What a run selected, from the masks it saved during training (``save_selection=true``, :mod:`selective_lm.masks`).

* :class:`SelectionCounter` - streaming counts over (token id, selected, provenance label, reference loss) of the
  counted targets: the selected share per provenance label and per token class (:mod:`selective_lm.tokenclass`),
  and the most over- and under-selected token ids (selected count minus count × the overall selected share).
* :func:`run_selection` - those tables for a run directory (its windows, in training order, every step it saved).
* :func:`selection_markdown` - the tables as Markdown; :func:`run_selection_page` - the selection page of a sample of
  the run's windows (:func:`~selective_lm.analysis.selection_diag.selection_html`).

A target counts unless it is context only (provenance label 255): those never enter a selection set, so they are
reported apart (``context_targets``), not as unselected.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..tokenclass import CLASSES

_CONTEXT = 255


def _row(tokens: int, selected: int, total: int, total_sel: int, ref_sum: float | None) -> dict:
    return {"tokens": tokens, "stream_share": tokens / total if total else None, "selected": selected,
            "selection_rate": selected / tokens if tokens else None,
            "share_of_selected": selected / total_sel if total_sel else None,
            "ref_loss": ref_sum / tokens if ref_sum is not None and tokens else None}


class SelectionCounter:
    """Counts of counted targets; :meth:`add` flat arrays (restricted to the counted targets), then :meth:`result`."""

    def __init__(self, vocab_size: int, class_table: np.ndarray):
        self.vocab, self.table = vocab_size, np.asarray(class_table)
        self.ids = np.zeros(vocab_size, np.int64)
        self.ids_sel = np.zeros(vocab_size, np.int64)
        self.lab = np.zeros(256, np.int64)
        self.lab_sel = np.zeros(256, np.int64)
        self.lab_ref = np.zeros(256)
        self.cls_ref = np.zeros(len(CLASSES))
        self.has_prov = self.has_ref = False
        self.context = 0

    def add(self, ids: np.ndarray, selected: np.ndarray, provenance: np.ndarray | None = None,
            ref: np.ndarray | None = None) -> None:
        ids = np.asarray(ids, np.int64).reshape(-1)
        sel = np.asarray(selected, bool).reshape(-1)
        if sel.shape != ids.shape:
            raise ValueError(f"ids and selected shapes differ: {ids.shape} vs {sel.shape}")
        self.ids += np.bincount(ids, minlength=self.vocab)
        self.ids_sel += np.bincount(ids[sel], minlength=self.vocab)
        r = None if ref is None else np.asarray(ref, np.float64).reshape(-1)
        if r is not None:
            self.has_ref = True
            self.cls_ref += np.bincount(self.table[ids], weights=r, minlength=len(CLASSES))
        if provenance is not None:
            p = np.asarray(provenance).reshape(-1).astype(np.int64)
            self.has_prov = True
            self.lab += np.bincount(p, minlength=256)
            self.lab_sel += np.bincount(p[sel], minlength=256)
            if r is not None:
                self.lab_ref += np.bincount(p, weights=r, minlength=256)

    def result(self, labels: Mapping[int, str] | None, decode: Callable[[int], str], top: int = 20,
               min_count: int = 5) -> dict:
        n, k = int(self.ids.sum()), int(self.ids_sel.sum())
        out: dict = {"tokens": n, "selected": k, "selected_share": k / n if n else None}
        if self.has_prov:
            names = {int(c): v for c, v in (labels or {}).items()}
            codes = sorted({c for c in np.flatnonzero(self.lab) if c != _CONTEXT} | {c for c in names if c != _CONTEXT})
            out["labels"] = {names.get(c, f"label{c}"): {"code": int(c), **_row(
                int(self.lab[c]), int(self.lab_sel[c]), n, k, float(self.lab_ref[c]) if self.has_ref else None)}
                for c in codes}
        cls, cls_sel = (np.bincount(self.table, weights=w, minlength=len(CLASSES)).astype(np.int64)
                        for w in (self.ids, self.ids_sel))
        out["classes"] = {name: _row(int(cls[i]), int(cls_sel[i]), n, k,
                                     float(self.cls_ref[i]) if self.has_ref else None)
                          for i, name in enumerate(CLASSES) if cls[i]}
        share = k / n if n else 0.0
        seen = np.flatnonzero(self.ids >= min_count)
        gap = self.ids_sel[seen] - self.ids[seen] * share  # selected beyond the stream's selected share

        def entry(i: int, g: float) -> dict:
            return {"token_id": int(i), "token": decode(int(i)), "class": CLASSES[self.table[i]],
                    "count": int(self.ids[i]), "stream_share": int(self.ids[i]) / n, "selected": int(self.ids_sel[i]),
                    "selection_rate": int(self.ids_sel[i]) / int(self.ids[i]), "excess_selected": float(g)}

        order = np.lexsort((seen, -gap))  # most over-selected first; ties: lower id
        out["over_selected"] = [entry(seen[j], gap[j]) for j in order[:top] if gap[j] > 0]
        order = np.lexsort((seen, gap))
        out["under_selected"] = [entry(seen[j], gap[j]) for j in order[:top] if gap[j] < 0]
        out["min_count"] = min_count
        return out


def _run_config(run_dir: Path) -> dict:
    import yaml

    f = run_dir / "config.yaml"
    if not f.is_file():
        from ..files import UserError

        raise UserError(f"{f} not found: pass a run directory written by `slm train`")
    return yaml.safe_load(f.read_text(encoding="utf-8")) or {}


def _first_scores(cfg: dict, scores: str | None) -> str | None:
    ref = scores or cfg.get("ref_scores")
    return (ref[0] if ref else None) if isinstance(ref, list) else ref


def run_selection(run_dir, scores: str | None = None, top: int = 20, min_count: int = 5,
                  steps_per_chunk: int = 64) -> dict:
    """The tables of what ``run_dir`` selected, over every step it saved. ``scores``: the reference scores of the
    run's train split for the ``ref_loss`` columns (default: the run's first ``ref_scores``)."""
    from ..data import TokenDataset
    from ..files import UserError
    from ..masks import Selection
    from ..scores import load_scores
    from ..tokenclass import class_table

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    sel = Selection(run_dir)
    ds = TokenDataset(cfg["data"])
    if sel.meta.get("dataset_fingerprint") not in (None, ds.fingerprint):
        raise UserError(f"{cfg['data']} was prepared again after {run_dir} trained on it (fingerprint differs): "
                        "its windows are not the ones the run selected from")
    ref_dir = _first_scores(cfg, scores)
    ref = load_scores(ref_dir, ds, "train", verify=False) if ref_dir else None
    tok = ds.tokenizer()
    counter = SelectionCounter(ds.vocab_size, class_table(tok, ds.vocab_size))
    win, prov = ds.windows("train"), ds.provenance("train")
    context = 0
    for s in range(0, sel.written, steps_per_chunk):
        masks = sel.masks(s, s + steps_per_chunk).reshape(-1, ds.seq_len)
        idx = np.asarray(sel.windows[s:s + steps_per_chunk]).reshape(-1)
        counted = ds.target_mask("train", idx)
        counted = np.ones(masks.shape, bool) if counted is None else counted
        context += int((~counted).sum())
        ids = np.asarray(win[idx, 1:])[counted]
        counter.add(ids, masks[counted], None if prov is None else np.asarray(prov[idx, 1:])[counted],
                    None if ref is None else np.asarray(ref[idx], np.float64)[counted])
    labels = {int(k): v for k, v in (ds.manifest.get("provenance_labels") or {}).items()}
    out = {"run": str(run_dir), "source": f"the masks saved during training (save_selection), steps 0-{sel.written - 1}",
           "steps": sel.written,
           "windows": sel.written * sel.per_step, "ratio": cfg.get("ratio"), "objective": cfg.get("objective"),
           "reference_scores": ref_dir, "context_targets": context,
           **counter.result(labels if prov is not None else None, lambda i: tok.decode([i]), top, min_count)}
    return out


def _f(x, pct: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:.1%}" if pct else f"{x:.3f}" if isinstance(x, float) else str(x)


def selection_markdown(res: dict) -> str:
    """The tables of :func:`run_selection` as Markdown."""
    lines = [f"**{res['run']}**: {res['selected']} of {res['tokens']} counted targets selected "
             f"({_f(res['selected_share'], True)}) over {res['steps']} steps"
             + (f"; {res['context_targets']} context-only targets not counted" if res.get("context_targets") else ""),
             ""]
    head = "| {} | tokens | share of stream | selected | selection rate | share of selected | ref loss |"
    for key, title in (("labels", "provenance label"), ("classes", "token class")):
        if not res.get(key):
            continue
        lines += [head.format(title), "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in res[key].items():
            lines.append(f"| {name} | {r['tokens']} | {_f(r['stream_share'], True)} | {r['selected']} | "
                         f"{_f(r['selection_rate'], True)} | {_f(r['share_of_selected'], True)} | {_f(r['ref_loss'])} |")
        lines.append("")
    for key, title in (("over_selected", "most over-selected"), ("under_selected", "most under-selected")):
        lines += [f"| {title} | class | count | share of stream | selection rate | selected − expected |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in res.get(key, []):
            shown = repr(r["token"]).replace("|", "\\|").replace("`", "'")
            lines.append(f"| `{shown}` | {r['class']} | {r['count']} | {_f(r['stream_share'], True)} | "
                         f"{_f(r['selection_rate'], True)} | {r['excess_selected']:+.1f} |")
        lines.append("")
    return "\n".join(lines)


def run_selection_page(run_dir, out_path, n_windows: int = 12, model: str | None = None,
                       scores: str | None = None) -> Path:
    """The selection page of ``n_windows`` windows of the run, evenly spaced over its saved steps: the box marks what
    training selected at that step; the background is the excess loss of ``model`` (default the run's final/)
    against the reference scores, when the run has scores."""
    import torch

    from ..data import TokenDataset
    from ..files import atomic_write_text
    from ..masks import Selection
    from ..model import load_model, model_token_losses
    from ..scores import load_scores
    from .selection_diag import selection_html

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    sel = Selection(run_dir)
    ds = TokenDataset(cfg["data"])
    rows = sel.written * sel.per_step
    pick = np.unique(np.linspace(0, rows - 1, min(n_windows, rows)).round().astype(np.int64))
    steps, idx = pick // sel.per_step, np.asarray(sel.windows).reshape(-1)[pick]
    masks = np.stack([sel.masks(s, s + 1)[0, r] for s, r in zip(steps, pick % sel.per_step)])
    ref_dir = _first_scores(cfg, scores)
    excess, model_dir = None, Path(model) if model else run_dir / "final"
    if ref_dir and model_dir.is_dir():
        inputs, targets = ds.batch("train", idx)
        with torch.inference_mode():
            loss = model_token_losses(load_model(model_dir).eval(), inputs, targets).float().numpy()
        excess = loss - np.asarray(load_scores(ref_dir, ds, "train", verify=False)[idx], np.float32)
    counted = ds.target_mask("train", idx)
    prov = ds.provenance("train")
    tok = ds.tokenizer()
    labels = {**{int(k): v for k, v in (ds.manifest.get("provenance_labels") or {}).items()}, -1: "window separator"}
    toks, chosen, ex, pv = [], [], [], []
    win = ds.windows("train")
    for j, (w, s) in enumerate(zip(idx, steps)):
        toks += [("\n\n" if j else "") + f"──── window {int(w)}, trained at step {int(s)} ────\n"]
        toks += [tok.decode([int(i)]) for i in win[w, 1:]]
        chosen += [False] + masks[j].tolist()
        keep = np.ones(ds.seq_len, bool) if counted is None else counted[j]
        row = excess[j] if excess is not None else np.zeros(ds.seq_len, np.float32)
        ex += [float("nan")] + np.where(keep, row, np.nan).tolist()
        pv += [-1] + (np.asarray(prov[w, 1:]).tolist() if prov is not None else [0] * ds.seq_len)
    shown = masks[counted] if counted is not None else masks.reshape(-1)
    title = (f"Tokens {run_dir.name} selected in training ({cfg.get('objective')}, ratio {cfg.get('ratio')}): "
             f"{shown.mean():.1%} of {shown.size} counted targets of {len(idx)} windows")
    note = (f"background: excess loss of {model_dir} − reference loss ({ref_dir})" if excess is not None
            else "no excess shown: the run has no offline reference scores (pass --scores)")
    page = selection_html(toks, chosen, title=title, excess=ex if excess is not None else None,
                          provenance=pv if prov is not None else None, provenance_labels=labels,
                          colour_by_excess=excess is not None, note=note)
    atomic_write_text(out_path, page)
    return Path(out_path)
