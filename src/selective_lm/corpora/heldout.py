"""Problem-level held-out splits of the embedded corpora, and the check that they hold.

Every problem goes to ``train``, ``validation`` or ``test`` by a keyed hash of its *template
instance* (:func:`instance_key`: the multiset of numbers in its normalised question), so a question
that recurs (the generator repeats its easy items) and every rewording of it ("What is 7 * 8?",
"Multiply 7 by 8.", "What is 8 times 7?") land in one split wherever they appear. :func:`leakage`
re-reads written corpora and counts the validation/test problems whose question occurs verbatim in
any training text, and those whose template instance does.
Its scan of the training text does not rely on the layouts the generator writes: after undoing the
other notations (LaTeX, number words) it tries every word of every line as a start and every
following sentence end (``.``, ``?``, ``!``, end of line) as an end, so a question pasted into prose,
a forum post or a noise block is found as well as one in ``Problem:`` form.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import re
import string
from itertools import chain
from pathlib import Path

from .mathgen import normalise_question
from .noise import INLINE, canonical_text

SPLITS = ("train", "validation", "test")
SPLIT_SHARES = {"train": 0.84, "validation": 0.08, "test": 0.08}
EVAL_SETS = ("hq_math/validation", "hq_math/test", "web_math/validation", "web_math/test", "fewshot_eval")
_STRIP = string.punctuation + " "


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:/\d+)?")


def instance_key(question: str) -> str:
    """The template instance of a question: the sorted numbers of its normal form (``#7,8`` for any
    wording of 7 × 8 or 8 × 7), or the normal form itself when it holds no number."""
    q = normalise_question(question)
    nums = _NUMBER.findall(q)
    return "#" + ",".join(sorted(nums)) if nums else q


class ProblemSplit:
    """``split(question)``: the split of a question under seed ``seed`` (a keyed BLAKE2b of its
    template instance, :func:`instance_key`)."""

    def __init__(self, seed: int):
        self.key = hashlib.sha256(f"selective-lm/{seed}/problem-split".encode()).digest()
        self._memo: dict[str, str] = {}

    def __call__(self, question: str) -> str:
        q = instance_key(question)
        split = self._memo.get(q)
        if split is None:
            h = hashlib.blake2b(q.encode(), key=self.key, digest_size=8).digest()
            u = int.from_bytes(h, "big") / 2.0 ** 64
            split = "train" if u < SPLIT_SHARES["train"] else (
                "validation" if u < SPLIT_SHARES["train"] + SPLIT_SHARES["validation"] else "test")
            self._memo[q] = split
        return split


# the layouts the generator writes a question in (after canonical_text): canonical, "Q: " / "Q. ",
# "Exercise N. ", and a forum post whose question is the line after "Posted by ... on ..."
_QUESTION_LINE = re.compile(r"^(?:Problem: |Q[:.] |Exercise \d+\. )(.+)$", re.M)
_POSTED = re.compile(r"^Posted by [^\n]+ on [^\n]+\n([^\n]+)$", re.M)
_DIGIT = re.compile(r"\d")
_END = re.compile(r"[.?!]")


def extract_questions(text: str, *, canonical: bool = False) -> list[str]:
    """The normalised questions of a document, from the layouts the generator writes (``canonical``:
    ``text`` has been through ``canonical_text`` already)."""
    text, out = text if canonical else canonical_text(text), []
    for m in chain(_QUESTION_LINE.finditer(text), _POSTED.finditer(text)):
        q, changed = m.group(1), True
        while changed:  # inline debris that a web page appends to a line
            changed = False
            for d in INLINE:
                if q.endswith(d):
                    q, changed = q[:-len(d)], True
        out.append(normalise_question(q))
    return out


def find_questions(texts: list[str], wanted: set[str], *, canonical: bool = False) -> set[str]:
    """The members of ``wanted`` (normalised questions) that occur anywhere in ``texts``, bounded by a
    word start and a sentence end, whatever the layout around them."""
    firsts = {q.split(" ", 1)[0] for q in wanted}
    found: set[str] = set()
    for text in texts:
        for raw in (text if canonical else canonical_text(text)).splitlines():
            if not _DIGIT.search(raw):
                continue  # every generated question holds a number
            line = " ".join(raw.lower().split())
            ends = [m.end() for m in _END.finditer(line)] + [len(line)]
            pos = 0
            for w in line.split(" "):
                if w.lstrip(_STRIP) in firsts:
                    k = bisect.bisect_right(ends, pos)
                    for e in ends[k:k + 10]:
                        c = line[pos:e].strip(_STRIP)
                        if c in wanted:
                            found.add(c)
                pos += len(w) + 1
    return found


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def leakage(corpora_dir: str | Path) -> dict:
    """Normalised-question overlap of the held-out problems with all training text.

    For each of ``hq_math/validation``, ``hq_math/test``, ``web_math/validation``, ``web_math/test``
    and ``fewshot_eval``: ``problems`` (distinct questions), ``leaked`` (how many occur in training
    text: hq_math and web_math rows of split train, noise blocks included, and all of prose.jsonl) and
    ``share``; ``instance_leaked`` / ``instance_share``: how many have the template instance
    (:func:`instance_key`) of a training question, i.e. the same numbers in any wording; ``max_share``
    over the five (both kinds), and ``self_check``: the share of the training rows' own
    questions that the scan finds (1.0 unless the scan misses a layout). Rows without ``split`` count
    as training rows.
    """
    root = Path(corpora_dir)
    sets: dict[str, set[str]] = {name: set() for name in EVAL_SETS}
    train_texts, own = [], set()
    for corpus in ("hq_math", "web_math"):
        for r in _rows(root / f"{corpus}.jsonl"):
            split, text = r.get("split", "train"), canonical_text(r["text"])
            if split == "train":
                train_texts.append(text)
                own.update(extract_questions(text, canonical=True))
            else:
                sets.setdefault(f"{corpus}/{split}", set()).update(extract_questions(text, canonical=True))
    train_texts += [canonical_text(r["text"]) for r in _rows(root / "prose.jsonl")]
    sets["fewshot_eval"] = {normalise_question(canonical_text(r["question"]))
                            for r in _rows(root / "fewshot_eval.jsonl")}
    found = find_questions(train_texts, own.union(*sets.values()), canonical=True)
    train_keys = {instance_key(q) for q in own}
    out: dict = {}
    for name, qs in sets.items():
        leaked = len(qs & found)
        inst = sum(instance_key(q) in train_keys for q in qs)
        out[name] = {"problems": len(qs), "leaked": leaked, "share": round(leaked / max(1, len(qs)), 6),
                     "instance_leaked": inst, "instance_share": round(inst / max(1, len(qs)), 6)}
    out["max_share"] = max(max(v["share"], v["instance_share"]) for v in out.values())
    out["self_check"] = round(len(own & found) / max(1, len(own)), 6)
    return out
