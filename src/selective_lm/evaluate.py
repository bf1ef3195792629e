"""Evaluation: perplexity (sum of nats / number of tokens), per-token loss dumps, few-shot exact match
(and lm-evaluation-harness tasks, see :mod:`selective_lm.harness`)."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from . import dist
from .config import EvalConfig
from .data import TokenDataset
from .files import UserError, write_json
from .model import autocast_ctx, check_compatible, load_model, model_token_losses, resolve_device
from .tokenizer import adds_bos, load_tokenizer
from .runtime import progress as progress_bar


@torch.inference_mode()
def dataset_token_losses(model, ds: TokenDataset, split: str = "validation", max_windows: int = 0,
                         batch_size: int = 32, device: torch.device | str = "cpu", precision: str = "auto",
                         progress: bool = False) -> np.ndarray:
    """Per-token losses [windows, seq_len] (float32) of the first ``max_windows`` windows of a split.

    Under torchrun the batches are dealt round-robin to the ranks (every rank runs the same number of
    forwards, as FSDP needs) and each round's rows are all-gathered to the host: every rank returns
    the array a single process computes, batch for batch, and no device holds more than one round.
    """
    device = torch.device(device)
    n = ds.num_windows(split)
    n = min(n, max_windows) if max_windows else n
    out = np.zeros((n, ds.seq_len), dtype=np.float32)
    was_training = model.training
    model.eval()

    def losses_of(start: int) -> torch.Tensor:
        inputs, targets = ds.batch(split, np.arange(start, min(start + batch_size, n)))
        return model_token_losses(model, inputs.to(device), targets.to(device))

    with autocast_ctx(device, precision):
        batches = dist.gathered_batches(list(range(0, n, batch_size)), batch_size, n, losses_of)
        for starts, rows in progress_bar(batches, desc=f"eval {Path(ds.path).name} {split}", enabled=progress,
                                         leave=False):
            for start, r in zip(starts, rows):
                out[start:start + len(r)] = r.numpy()
    model.train(was_training)
    result = out
    if not np.isfinite(result).all():
        raise UserError(f"the model gives non-finite losses on {ds.path} ({split}): it has diverged; "
                        "evaluate an earlier checkpoint", agreed=True)
    return result


def loss_summary(losses: np.ndarray) -> dict:
    """Mean loss and perplexity from per-token losses (sum of nats / tokens)."""
    total = float(np.asarray(losses, dtype=np.float64).sum())
    tokens = int(np.asarray(losses).size)
    loss = total / max(1, tokens)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens}


def dump_token_losses(losses: np.ndarray, path: str | Path, meta: dict | None = None) -> Path:
    """Write per-token losses as a float16 memmap (aligned with the targets) plus a JSON sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    mm = np.memmap(tmp, dtype=np.float16, mode="w+", shape=losses.shape)
    mm[:] = losses.astype(np.float16)
    mm.flush()
    del mm
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), {"dtype": "float16", "shape": list(losses.shape), **(meta or {})})
    return path


def load_token_losses(path: str | Path) -> np.ndarray:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(path, dtype=np.float16, mode="r", shape=tuple(meta["shape"]))


# --------------------------------------------------------------------------- few-shot exact match
def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{p}:{i} is not valid JSON: fix or remove that line") from None
    return rows


def check_rows(rows: list[dict], path: str | Path, keys: tuple[str, ...]) -> list[dict]:
    """Refuse few-shot rows without the keys the prompts need (one line naming the first bad row)."""
    for i, row in enumerate(rows, 1):
        missing = [k for k in keys if not isinstance(row, dict) or row.get(k) is None]
        if missing:
            raise UserError(f"{path}: row {i} has no {', '.join(missing)}: every row needs {', '.join(keys)}")
    return rows


def format_exemplar(ex: dict) -> str:
    return f"Problem: {ex['question']}\nSolution: {ex['solution']}\nAnswer: {ex['answer']}\n\n"


def extract_answer(generated: str) -> str | None:
    m = re.search(r"Answer:\s*([^\n]*)", generated)
    if not m:
        return None
    return m.group(1).strip().rstrip(".").strip()


def normalize_answer(ans: str) -> str:
    return re.sub(r"\s+", " ", ans.strip().rstrip(".")).strip()


def score_generation(generated: str, answer) -> tuple[bool, str | None]:
    """(exact match, extracted answer) of a greedy continuation: the answer after "Answer:" in its first
    paragraph, compared after :func:`normalize_answer`. The lm-eval task ``slm_fewshot`` scores the same way."""
    pred = extract_answer(generated.split("\n\n")[0])
    return pred is not None and normalize_answer(pred) == normalize_answer(str(answer)), pred


def fewshot_prompt(tokenizer, question: dict, exemplars: list[dict], shots: int, limit: int) -> str:
    """The prompt of one question: the first ``shots`` exemplars (fewer when the prompt would exceed ``limit``
    tokens) and "Problem: q\nSolution:". It is tokenized as one string, as running text is in training
    (and as lm-eval tokenizes a context)."""
    tail = f"Problem: {question['question']}\nSolution:"
    text = tail
    for k in range(1, min(shots, len(exemplars)) + 1):
        candidate = "".join(format_exemplar(ex) for ex in exemplars[:k]) + tail
        if len(tokenizer.encode(candidate)) > limit:
            break
        text = candidate
    return text


@torch.inference_mode()
def fewshot_accuracy(model, tokenizer, questions: list[dict], exemplars: list[dict], shots: int = 4,
                     max_new_tokens: int = 48, batch_size: int = 32, device: torch.device | str = "cpu",
                     max_positions: int | None = None, progress: bool = False, bos_id: int | None = None) -> dict:
    """Greedy few-shot exact match: prompts of exemplars + "Problem: q\\nSolution:", answer after "Answer:".

    ``tokenizer`` is the one the model was trained with (:func:`~selective_lm.tokenizer.load_tokenizer`);
    a prompt starts with ``bos_id`` when given, as every training document did. Exemplars are
    dropped from the prompt (fewest first) when the prompt would not fit in ``max_positions``
    (default: the model's max_position_embeddings) with ``max_new_tokens``.
    """
    device = torch.device(device)
    head = [] if bos_id is None else [bos_id]
    limit = (max_positions or model.config.max_position_embeddings) - max_new_tokens - len(head)
    eos = tokenizer.eos_token_id
    prompts = [head + tokenizer.encode(fewshot_prompt(tokenizer, q, exemplars, shots, limit),
                                       add_special_tokens=False)[-limit:] for q in questions]
    was_training = model.training
    model.eval()
    outcomes: dict[int, tuple[bool, str | None, str]] = {}
    starts = list(range(0, len(prompts), batch_size))[dist.rank()::dist.world_size()]  # torchrun: a share per rank
    for start in progress_bar(starts, desc="few-shot", enabled=progress, leave=False):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), eos, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):  # left padding
            input_ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=eos, eos_token_id=eos)
        for i, row in enumerate(gen[:, width:].tolist()):
            text = tokenizer.decode(row, skip_special_tokens=True)
            outcomes[start + i] = (*score_generation(text, questions[start + i]["answer"]), text.split("\n\n")[0])
    model.train(was_training)
    if dist.world_size() > 1:
        import torch.distributed as tdist

        parts: list = [None] * dist.world_size()
        tdist.all_gather_object(parts, outcomes)
        outcomes = {k: v for p in parts for k, v in p.items()}
    correct, records = 0, []
    per_family: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        ok, pred, output = outcomes[i]
        correct += ok
        per_family.setdefault(q.get("family", "all"), []).append(int(ok))
        if len(records) < 20:
            records.append({"question": q["question"], "answer": q["answer"], "prediction": pred, "correct": ok,
                            "output": output})
    n = len(questions)
    return {"accuracy": correct / max(1, n), "correct": correct, "n": n, "shots": min(shots, len(exemplars)),
            "per_family": {k: sum(v) / len(v) for k, v in sorted(per_family.items())}, "examples": records}


def evaluate(cfg: EvalConfig) -> dict:
    """`slm eval`: perplexity per dataset, optional dumps and few-shot accuracy.

    Under torchrun every rank loads the model and evaluates a share of the windows and questions;
    sums of nats and token counts are reduced across ranks, and rank 0 writes the files.
    """
    device = dist.local_device(resolve_device(cfg.device))
    dist.init(device)

    def open_all():  # every input is checked before anything is computed or written
        if cfg.lm_eval:
            from .harness import require_lm_eval

            require_lm_eval()
            if dist.world_size() > 1:
                raise UserError("--lm-eval runs in one process: start slm eval without torchrun (lm-eval spreads "
                                "over GPUs itself with `accelerate launch -m lm_eval`)", agreed=True)
        datasets = [TokenDataset(d) for d in cfg.data]
        for ds in datasets:
            check_compatible(cfg.model, ds)
        questions, exemplars, tok = [], [], None
        tok_dir = cfg.model if (Path(cfg.model) / "tokenizer.json").is_file() else \
            (datasets[0].tokenizer_dir if datasets else None)
        if cfg.fewshot or cfg.lm_eval:
            if cfg.fewshot:
                questions = check_rows(read_jsonl(cfg.fewshot), cfg.fewshot, ("question", "answer"))
                questions = questions[:cfg.fewshot_limit] if cfg.fewshot_limit else questions
            if cfg.exemplars:
                exemplars = check_rows(read_jsonl(cfg.exemplars), cfg.exemplars, ("question", "solution", "answer"))
            if tok_dir is None:
                raise UserError(f"no tokenizer in {cfg.model}: pass --data DIR so its tokenizer is used")
            tok = load_tokenizer(tok_dir)  # its tokenizer.json as saved, not a class AutoTokenizer picks by model type
        return datasets, questions, exemplars, tok, tok_dir

    datasets, questions, exemplars, tok, tok_dir = dist.agree(open_all)
    model = load_model(cfg.model, device) if datasets or cfg.fewshot else None
    results: dict = {"model": str(Path(cfg.model).resolve()), "split": cfg.split, "datasets": {}}
    for ds in datasets:
        losses = dataset_token_losses(model, ds, cfg.split, cfg.max_windows, cfg.batch_size, device,
                                      cfg.precision, cfg.progress)
        summary = loss_summary(losses)
        if cfg.dump and dist.is_main():
            name = Path(ds.path).name
            summary["dump"] = str(dump_token_losses(losses, Path(cfg.dump) / f"{name}.{cfg.split}.losses.bin",
                                                    {"dataset": str(ds.path), "split": cfg.split,
                                                     "dataset_fingerprint": ds.fingerprint}))
        results["datasets"][str(ds.path)] = summary
    if cfg.fewshot:
        # prompts start like the training documents: with the datasets' BOS, else the tokenizer's own
        bos_id = datasets[0].bos_id if datasets else (tok.bos_token_id if adds_bos(tok) else None)
        results["fewshot"] = fewshot_accuracy(model, tok, questions, exemplars, cfg.shots, cfg.max_new_tokens,
                                              cfg.batch_size, device, progress=cfg.progress, bos_id=bos_id)
    if cfg.lm_eval:
        from .harness import result_summary, run_lm_eval

        del model  # lm-eval loads its own copy
        bos = datasets[0].bos_id is not None if datasets else adds_bos(tok)
        results["lm_eval"] = result_summary(run_lm_eval(cfg, questions, exemplars, tok_dir, device, add_bos=bos))
    if cfg.out and dist.is_main():
        write_json(cfg.out, results)
    return results
