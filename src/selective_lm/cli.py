"""`slm` — one console script, subcommands from a dict of name → (config class, function).

Bad input raises :class:`~selective_lm.files.UserError`; it is printed as one line and the
process exits with code 2, no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .config import EvalConfig, PrepareConfig, ScoreConfig, TrainConfig, add_arguments, dump_yaml, from_args
from . import dist
from .files import UserError


def _prepare(cfg: PrepareConfig) -> None:
    from .data import prepare

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("`slm prepare` runs in one process: start it without torchrun (it is I/O bound), "
                        "then launch train/score/eval with torchrun")
    m = prepare(cfg)
    print(f"prepared {cfg.out}: " + ", ".join(f"{s} {v['windows']} windows" for s, v in m["splits"].items())
          + f", vocab {m['vocab_size']}, seq_len {m['seq_len']}, replaced bytes {m['replaced_bytes']}")


def _score(cfg: ScoreConfig) -> None:
    from .scoring import score

    m = score(cfg)
    dist.print0(f"scored {m['windows']} windows of {cfg.split}: mean reference loss {m['mean_loss']:.4f} "
          f"({m['windows'] * m['seq_len'] / max(m['seconds'], 1e-9):.0f} tok/s) -> {cfg.out}")


def _train(cfg: TrainConfig) -> None:
    from .train import train

    s = train(cfg)
    val = (f"val loss {s['final_val_loss']:.4f} ppl {s['final_val_ppl']:.2f}" if s["final_val_loss"] is not None
           else "no validation split")
    dist.print0(f"finished {s['steps']} steps ({s['tokens']} tokens): {val} -> {cfg.out}/final")


def _eval(cfg: EvalConfig) -> None:
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


def _commands() -> dict[str, tuple[type, Callable, str]]:
    from .study import StudyConfig, run_study

    return {
        "prepare": (PrepareConfig, _prepare, "corpus -> dataset directory of fixed token windows"),
        "score": (ScoreConfig, _score, "reference losses for every token of a dataset split"),
        "train": (TrainConfig, _train, "CLM or SLM training (full or LoRA)"),
        "eval": (EvalConfig, _eval, "perplexity, per-token loss dumps, few-shot exact match, lm-eval tasks"),
        "study": (StudyConfig, run_study, "Rho-1's experiment end to end with a report"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Selective Language Modeling (Rho-1): "
                                     "prepare data, score with a reference model, train CLM/SLM, evaluate, study.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, _, help_text) in _commands().items():
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip())
        add_arguments(p, cls)
    from .analysis.cli import add_analyze_parser

    add_analyze_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        from .model import quiet_hf

        quiet_hf()
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command == "analyze":
            from .analysis.cli import run_analyze

            run_analyze(args)
            return 0
        cls, fn, _ = _commands()[args.command]
        cfg = from_args(cls, args)
        if args.dry_run:
            print(dump_yaml(cfg), end="")
            return 0
        fn(cfg)
        return 0
    except UserError as e:
        if dist.is_main() or not getattr(e, "agreed", False):  # an agreed error is raised by every rank: rank 0 says it
            prefix = "" if dist.world_size() == 1 or dist.is_main() else f"rank {dist.rank()}: "
            print(f"slm: error: {prefix}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slm: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, read-only or missing directories, permissions: the path and the problem
        if dist.is_main():
            where = f" {e.filename}" if e.filename else ""
            print(f"slm: error:{where}: {e.strerror or e} (free space, fix the permissions or choose another "
                  "output path, then run the same command again)", file=sys.stderr)
        return 2
    except Exception as e:
        if not dist.peer_failure(e):
            raise
        print(f"slm: error: rank {dist.rank()} lost another rank mid-run ({dist.first_line(e)}): see that rank's "
              "error above, fix it and re-run with --resume", file=sys.stderr)
        return 2
    finally:
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
