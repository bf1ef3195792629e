"""`slm` — one console script, subcommands from a dict of name → (config class, function).

Bad input raises :class:`~selective_lm.files.UserError`; it is printed as one line and the
process exits with code 2, no traceback. Building the parser imports neither torch nor
transformers (``slm --help`` is instant); the commands import what they need.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable

from .config import (EvalConfig, ExportConfig, FilterConfig, PrepareConfig, ScoreConfig, TrainConfig, add_arguments,
                     dump_yaml, from_args)
from .files import UserError

# The `key=value` example each subcommand's --help shows: its own fields (tests/test_console.py parses each).
EXAMPLES = {
    "prepare": "seq_len=256 val_fraction=0.1",
    "score": "split=validation batch_size=64",
    "train": "ratio=0.3 lora.r=16",
    "eval": "max_windows=100 shots=2",
    "filter": "keep_fraction=0.5 doc_score=ref_loss",
    "export": "merge=true overwrite=true",
    "study": "ratios=0.6,0.3 seeds=0,1,2",
    "corpora": "scale=0.2 seed=1",
}


def _prepare(cfg: PrepareConfig) -> None:
    from . import dist
    from .data import prepare

    m = prepare(cfg)
    if not dist.is_main():
        return
    skipped = [os.path.basename(f) for f in m["skipped_files"]]
    print(f"prepared {cfg.out}: " + ", ".join(f"{s} {v['windows']} windows" for s, v in m["splits"].items())
          + f", vocab {m['vocab_size']}, seq_len {m['seq_len']}, replaced bytes {m['replaced_bytes']}"
          + (f", BOS id {m['bos_id']} before each document" if m["bos_id"] is not None else "")
          + (f", skipped {len(skipped)} files of other types ({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''};"
             f" all listed under skipped_files in {os.path.join(cfg.out, 'manifest.json')})" if skipped else ""))


def _score(cfg: ScoreConfig) -> None:
    from . import dist
    from .scoring import score

    m = score(cfg)
    if m.get("reused"):
        dist.print0(f"{cfg.out} already holds these scores ({m['windows']} windows of {cfg.split}): wrote the "
                    f"dataset column to {cfg.hf_out} without scoring again")
        return
    ent = f", mean entropy {m['mean_entropy']:.4f}" if "mean_entropy" in m else ""
    dist.print0(f"scored {m['windows']} windows of {cfg.split}: mean reference loss {m['mean_loss']:.4f}{ent} "
          f"({m['windows'] * m['seq_len'] / max(m['seconds'], 1e-9):.0f} tok/s) -> {cfg.out}")


def _train(cfg: TrainConfig) -> None:
    from . import dist
    from .train import train

    s = train(cfg)
    val = (f"val loss {s['final_val_loss']:.4f} ppl {s['final_val_ppl']:.2f}" if s["final_val_loss"] is not None
           else "no validation split")
    val += "".join(f"; {n} loss {v['loss']:.4f} ppl {v['ppl']:.2f}" for n, v in s.get("final_eval", {}).items())
    dist.print0(f"finished {s['steps']} steps ({s['tokens']} tokens): {val} -> {cfg.out}/final")


def _eval(cfg: EvalConfig) -> None:
    from . import dist
    from .evaluate import evaluate

    r = evaluate(cfg)
    if not dist.is_main():
        return
    for name, v in r["datasets"].items():
        print(f"{name}: loss {v['loss']:.4f} ppl {v['ppl']:.2f} ({v['tokens']} tokens)")
    if "fewshot" in r:
        f = r["fewshot"]
        print(f"few-shot exact match: {f['accuracy']:.3f} ({f['correct']}/{f['n']}, {f['shots']} shots)")
    for task, metrics in r.get("lm_eval", {}).get("results", {}).items():
        shown = [f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k]
        print(f"lm-eval {task}: {', '.join(shown)}")


def _filter(cfg: FilterConfig) -> None:
    from .filter import filter_documents

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("`slm filter` runs in one process: start it without torchrun")
    m = filter_documents(cfg)
    d, t = m["documents"], m["tokens"]
    print(f"kept {d['kept']} of {d['total']} {m['split']} documents ({t['kept']} of {t['total']} tokens, "
          f"{m['kept_fraction']['tokens']:.1%}) by {m['doc_score']}, threshold "
          + ("none" if m["threshold"] is None else f"{m['threshold']:.4f}")
          + f"; {d['unscored']} unscored documents ({m['unscored']}) -> {os.path.join(cfg.out, m['file'])}")


def _export(cfg: ExportConfig) -> None:
    from .export import export

    m = export(cfg)
    print(f"exported {m['source']}{' with its LoRA adapter merged into ' + m['base'] if m['merged_lora'] else ''} -> "
          f"{cfg.out} (AutoModelForCausalLM.from_pretrained loads it)")


def _corpora(cfg) -> None:
    from .corpora import write_corpora

    m = write_corpora(cfg)
    files = ", ".join(f"{f['path']} {f['documents']} docs" for f in m["files"].values())
    ext = f", fewshot_external.jsonl {m['external']['n']} questions" if "external" in m else ""
    print(f"wrote {cfg.out}: {files}{ext} (leaked held-out problems: {m['leakage']['max_share']:.0%}; `slm prepare --inputs "
          f"{os.path.join(cfg.out, 'web_math.jsonl')} ...` tokenizes one)")


def _commands() -> dict[str, tuple[type, Callable, str]]:
    from .corpora import CorporaConfig
    from .study.config import StudyConfig
    from .study.runner import run_study

    return {
        "prepare": (PrepareConfig, _prepare, "corpus -> dataset directory of fixed token windows"),
        "score": (ScoreConfig, _score, "reference losses for every token of a dataset split"),
        "train": (TrainConfig, _train, "CLM or SLM training (full or LoRA)"),
        "eval": (EvalConfig, _eval, "perplexity, per-token loss dumps, few-shot exact match, lm-eval tasks"),
        "filter": (FilterConfig, _filter, "document scores from token scores; the kept documents as JSONL or Parquet"),
        "export": (ExportConfig, _export, "a run's final weights as a plain HF directory (LoRA merged with --merge)"),
        "study": (StudyConfig, run_study, "Rho-1's experiment end to end with a report"),
        "corpora": (CorporaConfig, _corpora, "write the embedded default corpora as JSONL (no download)"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Selective Language Modeling (Rho-1): "
                                     "prepare data, score with a reference model, train CLM/SLM, evaluate, "
                                     "filter documents, study.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in _commands().items():
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip())
        add_arguments(p, cls, example=EXAMPLES.get(name))
    from .analyze import add_analyze_parser

    add_analyze_parser(sub)
    return parser


def _rank_world() -> tuple[int, int]:
    """(rank, world size) without importing torch: before any command imported :mod:`.dist`, no process
    group exists and torchrun's environment says it."""
    d = sys.modules.get(f"{__package__}.dist")
    if d is not None:
        return d.rank(), d.world_size()
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _os_error_line(e: OSError, args: argparse.Namespace | None, cfg) -> str:
    """One line for an OS error (disk full, read-only or missing directories, permissions): the path,
    the problem and the fix. An error that names no file names the command's output."""
    from .files import NO_SPACE, shown_path

    out = getattr(cfg, "out", None) or getattr(cfg, "dump", None)
    again = "run the same command again"
    if args is not None and args.command == "train" and cfg is not None and not cfg.resume and out \
            and os.path.isfile(os.path.join(out, "config.yaml")):
        again = "run the same command again with --resume"  # the run started: it continues from its checkpoint
    if e.errno in NO_SPACE:  # the space is needed where a copy goes (filename2), else at the file named
        where = e.filename2 or e.filename or out
        where = shown_path(where) if where else None
        what = "no space left" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} on {where or 'the output device'}: free space there or choose another output path, then " \
               f"{again}"
    where = shown_path(e.filename or out) if (e.filename or out) else None
    return f"{f'{where}: ' if where else ''}{e.strerror or e} (fix the permissions or choose another output path, " \
           f"then {again})"


def main(argv: list[str] | None = None) -> int:
    args = cfg = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "analyze" and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]  # key=value between flags: `--data d ratio=0.5 --out x lr=1`
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "analyze":
            from .analyze import run_analyze

            run_analyze(args)
            return 0
        cls, fn, _ = _commands()[args.command]
        try:
            cfg = from_args(cls, args)
        except UserError as e:  # the same arguments on every rank: the same error, said once by rank 0
            e.agreed = True
            raise
        if args.dry_run:
            print(dump_yaml(cfg), end="")
            return 0
        from .model import quiet_hf
        from .runtime import set_default_threads

        quiet_hf()
        set_default_threads()  # unless OMP_NUM_THREADS says otherwise
        fn(cfg)
        return 0
    except UserError as e:
        rank, world = _rank_world()
        if rank == 0 or not getattr(e, "agreed", False):  # an agreed error is raised by every rank: rank 0 says it
            prefix = "" if world == 1 or rank == 0 else f"rank {rank}: "
            print(f"slm: error: {prefix}{e}", file=sys.stderr)
        elif world > 1:  # under torchrun the first rank to exit gets the others killed: let rank 0 say it first
            import time

            time.sleep(10)
        return 2
    except KeyboardInterrupt:
        print("slm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .files import os_error

        if (err := os_error(e)) is not None:  # Python's OSError, or a library's with the OS's text ("os error 28")
            if _rank_world()[0] == 0:
                print(f"slm: error: {_os_error_line(err, args, cfg)}", file=sys.stderr)
            return 2
        d = sys.modules.get(f"{__package__}.dist")
        if d is None or not d.peer_failure(e):
            raise
        print(f"slm: error: rank {d.rank()} lost another rank mid-run ({d.first_line(e)}): see that rank's "
              "error above, fix it and re-run with --resume", file=sys.stderr)
        return 2
    finally:
        if (d := sys.modules.get(f"{__package__}.dist")) is not None:
            d.cleanup()


if __name__ == "__main__":
    sys.exit(main())
