"""lm-evaluation-harness: run its tasks on a checkpoint, and our few-shot benchmark as its task ``slm_fewshot``.

``slm eval --lm-eval TASKS`` calls ``lm_eval.simple_evaluate`` with the Hugging Face backend ("hf"):
``pretrained=`` the checkpoint (for a LoRA checkpoint its base, with ``peft=`` the adapter) and
``tokenizer=`` the checkpoint's own tokenizer. The task ``slm_fewshot`` is exported to a directory as
a task YAML and a JSONL of documents whose ``prompt`` is the exact prompt ``slm eval --fewshot`` builds
(exemplars, then "Problem: q\\nSolution:"); lm-eval generates greedily until a blank line and scores
with :func:`selective_lm.fewshot.score_generation`, so the two report the same exact match. Run it
outside slm with::

    lm_eval --model hf --model_args pretrained=RUN/final,tokenizer=RUN/final \\
        --include_path TASKS_DIR --tasks slm_fewshot
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from .config import EvalConfig
from .fewshot import fewshot_prompt, score_generation
from .files import UserError, atomic_write_text
from .model import adapter_base, is_adapter, peft_quiet
from .runtime import interactive

FEWSHOT_TASK = "slm_fewshot"
INSTALL = "pip install 'selective-lm[eval]'"


def require_lm_eval() -> None:
    """One line naming the install command when lm-eval is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"--lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL}")


def model_args(checkpoint: str | Path, tokenizer_dir: str | Path, precision: str = "auto",
               device: torch.device | str = "cpu") -> dict:
    """lm-eval's ``hf`` model arguments for a checkpoint: a full one is ``pretrained``; a LoRA adapter is
    ``peft`` on its base as ``pretrained``. The weights load in fp32, as ``slm eval`` loads them, or
    bf16 where ``slm eval`` would autocast to bf16 (precision bf16, or auto on a GPU)."""
    ckpt = Path(checkpoint).resolve()
    args = {"pretrained": str(adapter_base(ckpt)), "peft": str(ckpt)} if is_adapter(ckpt) else {"pretrained": str(ckpt)}
    bf16 = precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")
    return {**args, "tokenizer": str(Path(tokenizer_dir).resolve()), "dtype": "bfloat16" if bf16 else "float32"}


def process_result(doc: dict, results: list[str]) -> dict:
    """lm-eval's per-document metric of ``slm_fewshot`` (named in its YAML): our exact match."""
    return {"exact_match": float(score_generation(results[0], doc["answer"])[0])}


def export_fewshot_task(out_dir: str | Path, tokenizer, questions: list[dict], exemplars: list[dict], shots: int,
                        max_new_tokens: int, max_positions: int) -> Path:
    """Write the lm-eval task ``slm_fewshot`` (YAML + JSONL of documents) into ``out_dir``; returns the YAML.

    Prompts are built with the model's tokenizer and positions, as ``slm eval --fewshot`` builds them
    (exemplars that do not fit with ``max_new_tokens`` are left out), so the task is the same benchmark.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    limit = max_positions - max_new_tokens
    docs = [{"prompt": fewshot_prompt(tokenizer, q, exemplars, shots, limit), "question": q["question"],
             "answer": str(q["answer"]), "family": q.get("family", "all")} for q in questions]
    data = out / f"{FEWSHOT_TASK}.jsonl"
    atomic_write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    q = json.dumps  # a JSON string is a YAML double-quoted scalar
    yaml_text = f"""# Written by `slm eval --lm-eval {FEWSHOT_TASK}`: the held-out few-shot questions of selective-lm,
# {len(docs)} questions, {min(shots, len(exemplars))} exemplars, prompts fitted to {max_positions} positions.
task: {FEWSHOT_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {q(str(data))}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
num_fewshot: 0
generation_kwargs:
  until: [{q(chr(10) * 2)}]
  do_sample: false
  max_gen_toks: {max_new_tokens}
process_results: !function selective_lm.harness.process_result
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    path = out / f"{FEWSHOT_TASK}.yaml"
    atomic_write_text(path, yaml_text)
    return path


@contextlib.contextmanager
def quiet_lm_eval(bars: bool):
    """While lm-eval runs, only its results and its warnings reach the log: PEFT's deprecation warning on loading
    an adapter is silenced (:func:`~selective_lm.model.peft_quiet`); outside a git repository git's "fatal: not a
    git repository" (lm-eval asks ``git describe`` for its results' git_hash) is not printed; and without
    ``bars`` (--no-progress, or not a terminal) its tqdm bars are off, although it passes ``disable=False``."""
    from lm_eval import evaluator
    from tqdm import std

    def git_hash_quietly() -> str | None:
        try:
            r = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
        except OSError:  # no git
            return None
        return r.stdout.strip() or None

    patches = [(evaluator, "get_git_commit_hash", git_hash_quietly)] if hasattr(evaluator, "get_git_commit_hash") else []
    if not bars:
        init = std.tqdm.__init__

        def no_bar(self, *args, **kwargs):
            kwargs["disable"] = True
            init(self, *args, **kwargs)

        patches.append((std.tqdm, "__init__", no_bar))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        with peft_quiet():
            yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def run_lm_eval(cfg: EvalConfig, questions: list[dict], exemplars: list[dict], tokenizer_dir: str | Path,
                device: torch.device, add_bos: bool = False) -> dict:
    """``lm_eval.simple_evaluate`` on ``cfg.model`` for the tasks ``cfg.lm_eval``; returns lm-eval's result.
    ``add_bos``: contexts start with the tokenizer's BOS, as the training documents did."""
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoConfig, AutoTokenizer

    bars = cfg.progress and interactive()
    if not bars:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    args = model_args(cfg.model, tokenizer_dir, cfg.precision, device)
    positions = AutoConfig.from_pretrained(args["pretrained"]).max_position_embeddings
    args["max_length"] = positions  # the model's context, as slm eval uses it (not the tokenizer's guess)
    if add_bos:
        args["add_bos_token"] = True
    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_lm_eval(bars))
        tasks_dir = cfg.lm_eval_tasks_dir
        if FEWSHOT_TASK in cfg.lm_eval:
            tasks_dir = tasks_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="slm-lm-eval-"))
            export_fewshot_task(tasks_dir, AutoTokenizer.from_pretrained(tokenizer_dir), questions, exemplars,
                                cfg.shots, cfg.max_new_tokens, positions)
        # lm-eval's own tasks take seconds to index: only when asked for
        manager = TaskManager(include_path=tasks_dir, include_defaults=set(cfg.lm_eval) != {FEWSHOT_TASK})
        if unknown := [t for t in cfg.lm_eval if t not in manager.all_tasks]:
            raise UserError(f"lm-eval knows no task {', '.join(unknown)}: see `lm_eval ls tasks` for its tasks, or "
                            f"pass --lm-eval-tasks-dir DIR holding their YAML")
        try:
            result = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=list(cfg.lm_eval), task_manager=manager,
                                             batch_size=cfg.batch_size, device=str(device), log_samples=True,
                                             limit=cfg.lm_eval_limit or None)
        except Exception as e:
            if (dataset := unreachable_dataset(e)) is None:
                raise
            hub = [t for t in cfg.lm_eval if t != FEWSHOT_TASK]
            raise UserError(f"lm-eval cannot fetch the data of task {', '.join(hub)} (dataset {dataset}) from the Hugging "
                            "Face Hub: it is not reachable from here (no network, or HF_HUB_OFFLINE is set) and the "
                            "datasets cache does not hold it; run the task once where the Hub is reachable (the cache "
                            f"keeps it), or run local tasks only ({FEWSHOT_TASK}, --lm-eval-tasks-dir)") from None
    result["model_args"] = args
    result["tasks_dir"] = str(Path(cfg.lm_eval_tasks_dir).resolve()) if cfg.lm_eval_tasks_dir else None
    return result


def unreachable_dataset(e: BaseException) -> str | None:
    """The Hub dataset named by an error that says the Hub cannot be reached (``datasets`` raises the built-in
    ConnectionError "Couldn't reach 'NAME' on the Hub (OfflineModeIsEnabled)", or huggingface_hub's own errors);
    None for any other error."""
    import re

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {type(e).__name__, *(c.__name__ for c in type(e).__mro__)}
        if isinstance(e, ConnectionError) or names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError"}:
            m = re.search(r"'([^'\s]+)'", str(e))  # a dataset name has no space
            return m.group(1) if m else "?"
        e = e.__cause__ or e.__context__
    return None


def result_summary(result: dict) -> dict:
    """The part of lm-eval's result that goes into ``slm eval``'s JSON: metrics per task, what was run, and
    the first 20 ``slm_fewshot`` outputs (beside ``slm eval --fewshot``'s own ``examples``)."""
    out = {k: result.get(k) for k in ("results", "groups", "n-samples", "versions", "model_args", "tasks_dir")
           if result.get(k) is not None}
    samples = sorted((result.get("samples") or {}).get(FEWSHOT_TASK, []), key=lambda s: s["doc_id"])
    if samples:
        out["examples"] = [{"question": s["doc"]["question"], "answer": s["doc"]["answer"],
                            "correct": bool(s["exact_match"]), "output": s["resps"][0][0]} for s in samples[:20]]
    return out
