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


# --------------------------------------------------------------------------- multiple choice
MC_CHOICES = 4  # the gold answer and 3 distractors: chance is 1/4
_INT = re.compile(r"-?\d+")
_DEC = re.compile(r"-?\d+\.\d+")
_FRAC = re.compile(r"(-?\d+)/(\d+)")


def perturb_answer(answer: str, rng) -> str | None:
    """A numerically perturbed form of ``answer`` (an integer ±1, ±2 or ±10; a fraction's numerator or
    denominator ±1; a decimal's last digit ±1; a list with two neighbours swapped; the number of a
    percentage), or None when the answer has none of these forms."""
    a = normalize_answer(str(answer))
    if a.endswith("%") and (inner := perturb_answer(a[:-1], rng)) is not None:
        return inner + "%"
    if "," in a:
        items = [x.strip() for x in a.split(",")]
        if len(items) > 1 and len(set(items)) > 1:
            i = rng.randrange(len(items) - 1)
            while items[i] == items[i + 1]:
                i = (i + 1) % (len(items) - 1)
            items[i], items[i + 1] = items[i + 1], items[i]
            return ", ".join(items)
        return None
    if _INT.fullmatch(a):
        n = int(a)
        return str(n + rng.choice([d for d in (-10, -2, -1, 1, 2, 10) if abs(n) >= 10 or abs(d) < 10]))
    if m := _FRAC.fullmatch(a):
        num, den = int(m.group(1)), int(m.group(2))
        num, den = (num + rng.choice((-1, 1)), den) if rng.random() < 0.5 or den < 3 else (num, den + rng.choice((-1, 1)))
        return f"{num}/{den}" if den > 0 else None
    if _DEC.fullmatch(a):
        last = int(a[-1])
        return a[:-1] + str(last + 1 if last < 9 else last - 1)
    return None


def distractors(question: dict, pool: list[dict], n: int = MC_CHOICES - 1, seed: int = 0) -> list[str]:
    """``n`` wrong answers for ``question``, each distinct from the gold answer and from one another after
    :func:`normalize_answer`: one numerically perturbed form of the gold answer (:func:`perturb_answer`), the
    rest answers of other questions of the same family in ``pool`` (then more perturbations, then answers of
    any family), those closest to the gold answer's length first: a small model prefers short continuations,
    and choices of one length make that preference no help. Seeded by (``seed``, the question)."""
    import random

    rng = random.Random(f"selective-lm/mc/{seed}/{question['question']}")
    gold = normalize_answer(str(question["answer"]))
    out: list[str] = []

    def add(ans) -> None:
        a = normalize_answer(str(ans))
        if a and a != gold and a not in out and len(out) < n:
            out.append(a)

    def perturbed(tries: int) -> None:
        for i in range(tries):  # a perturbation of the gold answer's length, else the last one drawn
            if (p := perturb_answer(gold, rng)) is not None and (len(p) == len(gold) or i == tries - 1):
                add(p)
                return

    def by_length(answers: list) -> list:
        shuffled = rng.sample(answers, len(answers))
        return sorted(shuffled, key=lambda a: abs(len(normalize_answer(str(a))) - len(gold)))  # stable: ties random

    perturbed(8)
    for ans in by_length([r["answer"] for r in pool if r.get("family") == question.get("family") and r is not question]):
        add(ans)
    for _ in range(n):
        perturbed(8)
    for ans in by_length([r["answer"] for r in pool]):
        add(ans)
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct wrong answers for {question['question']!r}: give a larger pool")
    return out


def mc_prompt(question: dict, exemplars: list[dict], shots: int) -> str:
    """The multiple-choice context: ``shots`` exemplars as "Problem: q\\nAnswer: a" and the question as
    "Problem: q\\nAnswer:" (no worked solution: the choice is scored right after the question, as
    lm-evaluation-harness scores direct-answer tasks)."""
    head = "".join(f"Problem: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in exemplars[:shots])
    return head + f"Problem: {question['question']}\nAnswer:"


def mc_items(questions: list[dict], pool: list[dict] | None = None, seed: int = 0) -> list[dict]:
    """``questions`` with their choices: ``{"question", "answer", "family", "choices", "gold"}``; the gold
    answer sits at a seeded position among :data:`MC_CHOICES` choices."""
    import random

    pool = questions if pool is None else pool
    items = []
    for q in questions:
        wrong = distractors(q, pool, MC_CHOICES - 1, seed)
        gold = random.Random(f"selective-lm/mc-order/{seed}/{q['question']}").randrange(MC_CHOICES)
        choices = wrong[:gold] + [normalize_answer(str(q["answer"]))] + wrong[gold:]
        items.append({**q, "choices": choices, "gold": gold})
    return items


@torch.inference_mode()
def choice_logliks(model, tokenizer, contexts: list[str], continuations: list[str], batch_size: int = 64,
                   device: torch.device | str = "cpu", bos_id: int | None = None,
                   max_positions: int | None = None) -> list[float]:
    """Σ log p(continuation tokens | context) per pair, as lm-evaluation-harness computes ``loglikelihood``:
    the pair is tokenized whole and the continuation is the tokens after the context's own encoding (a
    context is cut from the left to fit ``max_positions``)."""
    from .loss import IGNORE_INDEX
    from .model import model_token_losses

    device = torch.device(device)
    head = [] if bos_id is None else [bos_id]
    limit = max_positions or getattr(model.config, "max_position_embeddings", None) or 10**9
    seqs: list[tuple[list[int], int]] = []
    for ctx, cont in zip(contexts, continuations):
        c = tokenizer.encode(ctx, add_special_tokens=False)
        whole = tokenizer.encode(ctx + cont, add_special_tokens=False)
        if whole[:len(c)] != c:  # a merge across the boundary: keep the context's own tokens, then the rest
            whole = c + tokenizer.encode(cont, add_special_tokens=False)
        ids = (head + whole)[-limit:]
        seqs.append((ids, len(whole) - len(c)))
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # batches of similar length: little padding
    was_training = model.training
    model.eval()
    for s in range(0, len(seqs), batch_size):
        idx = order[s:s + batch_size]
        chunk = [seqs[i] for i in idx]
        width = max(len(ids) for ids, _ in chunk)
        inputs = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, k) in enumerate(chunk):
            t = torch.tensor(ids)
            inputs[i, :len(ids)], mask[i, :len(ids)] = t, 1
            targets[i, len(ids) - k - 1:len(ids) - 1] = t[len(ids) - k:]  # position j predicts token j + 1
        losses = model_token_losses(model, inputs.to(device), targets.to(device), attention_mask=mask.to(device))
        for i, v in zip(idx, (-losses.float().sum(dim=1)).cpu().tolist()):
            out[i] = v
    model.train(was_training)
    return out


def mc_accuracy(model, tokenizer, items: list[dict], exemplars: list[dict], shots: int = 2, batch_size: int = 64,
                device: torch.device | str = "cpu", bos_id: int | None = None,
                max_positions: int | None = None) -> dict:
    """Multiple-choice accuracy of ``items`` (:func:`mc_items`) as lm-evaluation-harness scores it: ``acc``
    (the choice with the highest log-likelihood of " choice\\n" after :func:`mc_prompt`), ``acc_norm`` (the
    highest log-likelihood per character of the continuation), ``chance`` (1 / choices) and ``answer_nll``
    (the gold continuation's mean negative log-likelihood, nats per answer)."""
    contexts, conts = [], []
    for it in items:
        ctx = mc_prompt(it, exemplars, shots)
        contexts += [ctx] * len(it["choices"])
        conts += [f" {c}\n" for c in it["choices"]]
    ll = choice_logliks(model, tokenizer, contexts, conts, batch_size, device, bos_id, max_positions)
    correct = correct_norm = 0
    nll, i = 0.0, 0
    for it in items:
        k = len(it["choices"])
        mine, chars = ll[i:i + k], [len(c) for c in conts[i:i + k]]
        i += k
        correct += max(range(k), key=lambda j: mine[j]) == it["gold"]
        correct_norm += max(range(k), key=lambda j: mine[j] / chars[j]) == it["gold"]
        nll -= mine[it["gold"]]
    n = max(1, len(items))
    return {"acc": correct / n, "acc_norm": correct_norm / n, "correct": correct, "correct_norm": correct_norm,
            "n": len(items), "choices": MC_CHOICES, "chance": 1 / MC_CHOICES, "answer_nll": nll / n, "shots": shots}
