"""Few-shot evaluation: question files, the prompt, and scoring a model's answers.

The prompt is exemplars written as "Problem: …\nSolution: …\nAnswer: …" followed by the question's
"Problem: q\nSolution:". :func:`fewshot_accuracy` generates greedily and takes the answer after
"Answer:" (exact match, :func:`score_generation`). :mod:`.evaluate` (``slm eval``), the study and the
lm-eval adapter (:mod:`.harness`) all build on this module, which imports neither of them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from . import dist
from .files import UserError
from .runtime import progress as progress_bar


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
