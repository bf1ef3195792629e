"""`slm analyze NAME`: each analysis of the report on its own, on a study directory or on arbitrary runs.

The command layer: it reads runs, dumps and studies and calls the array functions of :mod:`.analysis`
(and, for ``--study``, the sections of :mod:`.study`), which never import it.

Every subcommand prints its result as JSON (``--out FILE`` also writes it atomically). Bad input raises
:class:`~selective_lm.files.UserError` (the CLI prints one line and exits with code 2).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .files import UserError, write_json

NAMES = {
    "report": "the whole report of a study: results.json, plots, selection.html, report.md",
    "perplexity": "final target/noisy perplexity per run and group (or loss/ppl of per-token loss dumps)",
    "efficiency": "tokens an SLM run needs to reach the CLM baseline's final loss (speedup)",
    "dynamics": "token loss dynamics H→H / L→H / H→L / L→L over checkpoints (paper §2.1)",
    "buckets": "high/low loss bucket transitions between two models",
    "selected-loss": "loss of selected vs unselected tokens over training (paper Fig. 6/7)",
    "cosine": "cosine similarity of update directions (full Δθ or LoRA B·A·α/r)",
    "selection": "what SLM selects: per provenance label and token class, the most over- and under-selected tokens "
                 "(from the masks a run saved with save_selection=true), noise share during training",
}
_ALONE = {
    "report": None,
    "perplexity": "--losses FILE.bin [...]",
    "efficiency": "--baseline RUN_DIR --runs RUN_DIR [...]",
    "dynamics": "--losses A.bin B.bin [...] (checkpoint order)",
    "buckets": "--before X.bin --after Y.bin --baseline Z.bin",
    "selected-loss": "--reference R.bin --losses A.bin [...] (SLM's selection at each dump; --base X.bin: a fixed mask)",
    "cosine": "--runs DIR [...] (and --base DIR for full checkpoints)",
    "selection": "--runs RUN_DIR [...] (--html FILE: the selection page)",
}


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Register `analyze` and its subcommands on the `slm` subparsers."""
    p = subparsers.add_parser("analyze", help="analyses of a finished study or of arbitrary runs",
                              description="Analyses of a finished study (--study DIR) or of arbitrary runs. "
                                          "Each prints JSON. Names: " + ", ".join(NAMES))
    sub = p.add_subparsers(dest="analysis", required=True, metavar="NAME", title="analyses")
    for name, text in NAMES.items():
        q = sub.add_parser(name, help=text, description=text + (
            f". Works on --study DIR or on {_ALONE[name]}." if _ALONE[name] else ". Needs --study DIR."))
        q.add_argument("--study", help="study directory written by `slm study`")
        q.add_argument("--out", help="also write the JSON result to this file")
        if name in ("perplexity", "dynamics", "selected-loss"):
            q.add_argument("--losses", nargs="+", metavar="FILE", help="per-token loss dumps (.bin with .json sidecar)")
        if name in ("efficiency", "cosine", "selection"):
            q.add_argument("--runs", nargs="+", metavar="DIR",
                           help="checkpoint dirs (cosine) or run dirs with metrics.jsonl")
        if name == "efficiency":
            q.add_argument("--baseline", metavar="RUN_DIR", help="the CLM baseline's run dir")
        if name == "dynamics":
            q.add_argument("--threshold", type=float, default=0.2, help="|ΔL| margin (default 0.2)")
            q.add_argument("--data", help="dataset dir of the dumped windows, to show example tokens")
            q.add_argument("--split", default="validation", help="split of --data (default validation)")
        if name == "buckets":
            q.add_argument("--before", metavar="FILE", help="losses of the first model")
            q.add_argument("--after", metavar="FILE", help="losses of the second model")
            q.add_argument("--baseline", metavar="FILE", help="losses whose quantile sets the threshold")
            q.add_argument("--quantile", type=float, default=0.7, help="threshold quantile (default 0.7)")
        if name == "selected-loss":
            q.add_argument("--base", metavar="FILE", help="optional: losses whose excess defines one fixed mask for all "
                                                          "dumps (default: each dump's own excess, as SLM selects)")
            q.add_argument("--reference", metavar="FILE", help="reference-model losses on the same tokens")
            q.add_argument("--ratio", type=float, nargs="+", default=[0.6], help="selection ratios (default 0.6)")
        if name == "cosine":
            q.add_argument("--base", metavar="DIR", help="base checkpoint (needed for full checkpoints)")
        if name == "selection":
            q.add_argument("--scores", metavar="DIR", help="reference scores of the runs' train split for the ref loss "
                                                          "columns and the page's excess (default: each run's ref_scores)")
            q.add_argument("--top", type=int, default=20, help="over- and under-selected tokens to list (default 20)")
            q.add_argument("--tables", action="store_true", help="print Markdown tables instead of JSON")
            q.add_argument("--html", metavar="FILE", help="write the selection page of the first run's windows here")
            q.add_argument("--windows", type=int, default=12, help="windows on the --html page (default 12)")
            q.add_argument("--model", metavar="DIR", help="checkpoint whose excess loss colours the --html page "
                                                          "(default: the run's final/)")
    return p


def _need(args, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n.replace("-", "_"), None)]
    if missing:
        alone = _ALONE[args.analysis]
        raise UserError(f"analyze {args.analysis}: missing --{', --'.join(missing)}: pass --study DIR"
                        + (f" or {alone}" if alone else ""))


def _losses(files) -> list[np.ndarray]:
    from .evaluate import load_losses

    out = [load_losses(f) for f in files]
    if len({a.size for a in out}) > 1:
        raise UserError("the loss dumps hold different numbers of tokens ("
                        + ", ".join(f"{f}: {a.size}" for f, a in zip(files, out)) + "): pass dumps of the same windows")
    return out


def _eval_curve(run_dir) -> tuple:
    from .checkpoint import read_metrics

    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        raise UserError(f"{f} not found: pass a run directory written by `slm train`")
    rows = sorted((r["tokens"], r["loss"]) for r in read_metrics(run_dir)
                  if r.get("type") == "eval" and r.get("tokens") is not None and r.get("loss") is not None)
    if not rows:
        raise UserError(f"{f} has no eval rows: train with eval_every > 0 so the run has a loss curve")
    return tuple(zip(*rows))


def _report(args, st) -> dict:
    from .study.report import write_report

    path = write_report(st.dir)
    return {"report": path, "results": path.parent / "results.json",
            "plots": sorted(str(p) for p in (path.parent / "plots").glob("*.png")),
            "selection_html": path.parent / "selection.html" if (path.parent / "selection.html").is_file() else None}


def _perplexity(args, st) -> dict:
    from .evaluate import loss_summary
    from .study.collect import section_groups, section_pipelines, section_runs

    if st is None:
        _need(args, "losses")
        return {str(f): loss_summary(a) for f, a in zip(args.losses, _losses(args.losses))}
    runs, pipelines = section_runs(st), section_pipelines(st)
    return {"split": "test", "pipelines": pipelines,
            "runs": {n: {"group": r["group"], **r["final"]} for n, r in runs.items()},
            "groups": {g: {k: v[k] for k in ("runs", "target_loss", "target_ppl", "noisy_ppl", "own_pooled",
                                             "ext_pooled")}
                       for g, v in section_groups(runs, pipelines).items()}}


def _efficiency(args, st) -> dict:
    from .study.collect import section_efficiency, section_runs
    from .analysis.efficiency import data_efficiency

    if st is not None:
        return section_efficiency(st, section_runs(st))
    _need(args, "baseline", "runs")
    base = _eval_curve(args.baseline)
    return {"baseline": args.baseline, "definition": "curves from the eval rows of metrics.jsonl (tokens, loss)",
            "runs": {r: data_efficiency(*base, *_eval_curve(r)) for r in args.runs}}


def _dynamics(args, st) -> dict:
    from .study.tokens import section_dynamics
    from .analysis.dynamics import classify_dynamics, dynamics_examples

    if st is not None:
        return section_dynamics(st, threshold=args.threshold)
    _need(args, "losses")
    if len(args.losses) < 2:
        raise UserError("analyze dynamics needs at least 2 loss dumps (--losses A.bin B.bin ...) in checkpoint order")
    res = classify_dynamics(np.stack(_losses(args.losses)), args.threshold)
    out = {"files": args.losses, "n_tokens": res.categories.size, "threshold": res.threshold, "shares": res.shares,
           "counts": res.counts, "last_mean": res.last_mean}
    if args.data:
        from .data import TokenDataset

        ds = TokenDataset(args.data)
        n, win = res.categories.size, ds.windows(args.split)
        if n % ds.seq_len or n // ds.seq_len > win.shape[0]:
            raise UserError(f"{n} losses are not whole windows of {ds.path} (seq_len {ds.seq_len}, "
                            f"{win.shape[0]} windows): pass the dataset the dumps were made on")
        tok = ds.tokenizer()
        out["examples"] = dynamics_examples(res, [tok.decode([int(i)]) for i in win[:n // ds.seq_len, 1:].reshape(-1)])
    return out


def _buckets(args, st) -> dict:
    from .analysis.buckets import bucket_transitions, high_low_threshold
    from .study.tokens import section_buckets

    if st is not None:
        return section_buckets(st, args.quantile)
    _need(args, "before", "after", "baseline")
    before, after, baseline = _losses([args.before, args.after, args.baseline])
    thr = high_low_threshold(baseline, args.quantile)
    return {"quantile": args.quantile, **bucket_transitions(before, after, thr)}


def _selected(args, st) -> dict:
    from .analysis.selection_diag import split_losses, topk_mask
    from .study.tokens import FIG6_DEFINITION, section_fig6

    if st is not None:
        return section_fig6(st)
    _need(args, "reference", "losses")
    ref, *rest = _losses([args.reference, *args.losses])
    fixed = _losses([args.base])[0] if args.base else None
    if fixed is not None and fixed.size != ref.size:
        raise UserError("--base and --reference hold different numbers of tokens: pass dumps of the same windows")
    out = {"definition": (FIG6_DEFINITION if fixed is None else "fixed top-k mask of --base loss - --reference loss, "
                          "applied to every dump"), "ratios": {}}
    for r in args.ratio:
        out["ratios"][f"{r:g}"] = {str(f): split_losses(a, topk_mask((a if fixed is None else fixed) - ref, r))
                                   for f, a in zip(args.losses, rest)}
    return out


def _cosine(args, st) -> dict:
    from .analysis.cosine import checkpoint_delta, cosine_matrix, read_state
    from .study.tokens import section_cosine

    if st is not None:
        return section_cosine(st)
    _need(args, "runs")
    base_state, vecs, kinds = None, {}, {}
    for d in args.runs:
        if base_state is None and args.base and not (Path(d) / "adapter_model.safetensors").is_file():
            if not Path(args.base).is_dir():
                raise UserError(f"base checkpoint directory not found: {args.base}: pass the run's starting point")
            base_state = read_state(args.base)
        vecs[d], kinds[d] = checkpoint_delta(d, base_state)
    names, mat = cosine_matrix(vecs)
    return {"names": names, "kinds": kinds, "matrix": mat}


def _selection(args, st) -> dict:
    from .analysis.selection_diag import training_shares
    from .study.collect import section_runs
    from .study.tokens import section_noise, section_selection

    if st is not None:
        return {"harder_noise": section_noise(st, section_runs(st)), "tokens": section_selection(st)}
    _need(args, "runs")
    missing = [d for d in args.runs if not (Path(d) / "metrics.jsonl").is_file()]
    if missing:
        raise UserError(f"{Path(missing[0]) / 'metrics.jsonl'} not found: pass run directories written by `slm train`")
    from .analysis.selection_tables import run_selection, run_selection_page
    from .masks import DIRNAME

    if args.top < 0 or args.windows < 1:
        raise UserError("--top must be >= 0 and --windows >= 1")
    out: dict = {"runs": {}}
    for d in args.runs:
        saved = (Path(d) / DIRNAME / "meta.json").is_file()
        out["runs"][d] = {**training_shares(d), "selection": run_selection(d, args.scores, args.top) if saved else
                          "not saved: train with save_selection=true to get the tables of what the run selected"}
    if args.html:
        out["html"] = run_selection_page(args.runs[0], args.html, args.windows, args.model, args.scores)
    return out


_HANDLERS = {"report": _report, "perplexity": _perplexity, "efficiency": _efficiency, "dynamics": _dynamics,
             "buckets": _buckets, "selected-loss": _selected, "cosine": _cosine, "selection": _selection}


def run_analyze(args: argparse.Namespace) -> dict:
    """Run ``args.analysis``; print the JSON result (and write it to ``args.out``); return it."""
    from .study.results import StudyResults, clean

    name = args.analysis
    if name == "report" and not args.study:
        raise UserError("analyze report needs --study DIR (the out directory of `slm study`)")
    st = StudyResults(args.study) if args.study else None
    try:
        result = clean(_HANDLERS[name](args, st))
    except ValueError as e:  # bad shapes or values in the given files
        raise UserError(f"analyze {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if getattr(args, "tables", False) and st is None:
        from .analysis.selection_tables import selection_markdown

        print("\n".join(selection_markdown(r["selection"]) if isinstance(r["selection"], dict) else f"{d}: {r['selection']}"
                        for d, r in result["runs"].items()))
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.out:
        write_json(args.out, result)
    return result
