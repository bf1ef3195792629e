"""Multiple-choice evaluation (selective_lm.fewshot): distractors, and scoring against a brute-force
log-likelihood from the model's full logits."""
from __future__ import annotations

import random

import pytest
import torch

from selective_lm.fewshot import (MC_CHOICES, choice_logliks, distractors, mc_accuracy, mc_items, mc_prompt,
                                  normalize_answer, perturb_answer)

POOL = ([{"family": "add", "question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in
         [(3, 4), (10, 20), (7, 8), (41, 5), (2, 2), (90, 9)]]
        + [{"family": "fraction", "question": f"Simplify {a}/{b}.", "answer": f"{a}/{b}"} for a, b in
           [(1, 3), (2, 5), (3, 7), (5, 9)]]
        + [{"family": "sort", "question": "Sort 3, 1, 2.", "answer": "1, 2, 3"},
           {"family": "percent", "question": "What is 10% of 120?", "answer": "12%"},
           {"family": "decimal", "question": "What is 0.1 + 0.2?", "answer": "0.3"}])


def test_perturbed_answers_keep_the_form_and_change_the_value():
    rng = random.Random(0)
    for ans, form in (("171", r"-?\d+"), ("3/14", r"-?\d+/\d+"), ("0.18", r"-?\d+\.\d+"), ("12%", r"-?\d+%"),
                      ("78, 130, 370", r"\d+, \d+, \d+"), ("-6", r"-?\d+")):
        for _ in range(20):
            p = perturb_answer(ans, rng)
            assert p is not None and p != ans, ans
            assert __import__("re").fullmatch(form, p), (ans, p)
    assert perturb_answer("x = y", rng) is None and perturb_answer("7, 7", rng) is None


def test_distractors_never_equal_the_gold_answer_and_are_seeded():
    for q in POOL:
        d = distractors(q, POOL, 3, seed=1)
        assert len(d) == 3 == len(set(d))
        assert normalize_answer(q["answer"]) not in d
        assert d == distractors(q, POOL, 3, seed=1)  # fixed seed, same distractors
    q = POOL[0]
    fam = {r["answer"] for r in POOL if r["family"] == "add"}
    assert sum(a in fam for a in distractors(q, POOL, 3, seed=0)) >= 1  # answers of the same kind are used
    with pytest.raises(ValueError, match="distinct wrong answers"):
        distractors({"family": "x", "question": "?", "answer": "word"}, [], 3)


def test_mc_items_put_the_gold_answer_among_the_choices():
    items = mc_items(POOL, seed=3)
    assert {it["gold"] for it in items} <= set(range(MC_CHOICES))
    for it, q in zip(items, POOL):
        assert len(it["choices"]) == MC_CHOICES and it["choices"][it["gold"]] == normalize_answer(q["answer"])
        assert len(set(it["choices"])) == MC_CHOICES
    assert mc_items(POOL, seed=3) == items
    assert mc_prompt(POOL[1], POOL[:2], 1) == "Problem: What is 3 + 4?\nAnswer: 7\n\nProblem: What is 10 + 20?\nAnswer:"


def _brute_loglik(model, tok, ctx: str, cont: str, bos: int | None) -> float:
    """Σ log p(continuation) from the full logits of one unpadded sequence."""
    c = tok.encode(ctx, add_special_tokens=False)
    whole = tok.encode(ctx + cont, add_special_tokens=False)
    ids = ([bos] if bos is not None else []) + whole
    k = len(whole) - len(c)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logp[j - 1, ids[j]] for j in range(len(ids) - k, len(ids))))


@pytest.fixture(scope="module")
def model_and_tok(tiny_data):
    from selective_lm.data import TokenDataset
    from selective_lm.model import build_model

    ds = TokenDataset(tiny_data)
    tok = ds.tokenizer()
    model = build_model("tiny", vocab_size=len(tok), seq_len=64, eos_id=tok.eos_token_id, seed=0).eval()
    return model, tok


def test_choice_logliks_equal_brute_force_with_padding(model_and_tok):
    model, tok = model_and_tok
    ctxs = ["Problem: What is 3 + 4?\nAnswer:", "the sum of 7 and 8 is", "x"]
    conts = [" 7\n", " 15 and more words\n", " 0\n"]
    for bos in (None, tok.eos_token_id):
        got = choice_logliks(model, tok, ctxs, conts, batch_size=2, bos_id=bos)
        want = [_brute_loglik(model, tok, c, x, bos) for c, x in zip(ctxs, conts)]
        assert got == pytest.approx(want, abs=1e-4)


def test_mc_accuracy_is_argmax_of_the_logliks(model_and_tok):
    model, tok = model_and_tok
    items = mc_items(POOL[:6], pool=POOL, seed=0)
    ex = POOL[6:8]
    r = mc_accuracy(model, tok, items, ex, shots=2, batch_size=5)
    correct = correct_norm = 0
    nll = 0.0
    for it in items:
        ll = [_brute_loglik(model, tok, mc_prompt(it, ex, 2), f" {c}\n", None) for c in it["choices"]]
        correct += max(range(len(ll)), key=ll.__getitem__) == it["gold"]
        correct_norm += max(range(len(ll)), key=lambda j: ll[j] / len(f" {it['choices'][j]}\n")) == it["gold"]
        nll -= ll[it["gold"]]
    assert (r["correct"], r["correct_norm"], r["n"]) == (correct, correct_norm, 6)
    assert r["acc"] == correct / 6 and r["chance"] == 1 / MC_CHOICES
    assert r["answer_nll"] == pytest.approx(nll / 6, rel=1e-4)


def test_distractors_match_the_gold_answers_length_first():
    pool = [{"family": "add", "question": f"q{i}", "answer": a} for i, a in
            enumerate(["171", "12", "9", "4411", "505", "87", "300", "6"])]
    q = pool[0]
    d = distractors(q, pool, 3, seed=0)
    assert all(len(x) == 3 for x in d)  # 171: the perturbed one and the two other 3-digit answers
    assert set(d) - {"505", "300"} and len(set(d) & {"505", "300"}) == 2
