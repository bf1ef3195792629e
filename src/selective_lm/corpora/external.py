"""Few-shot test questions that nobody here wrote: drawn from an external, pinned generator.

Our own generator (:mod:`selective_lm.corpora.mathgen`) makes the training data; evaluating only on
its questions would measure how well a model learned *our* templates. These questions come from
`reasoning-gym <https://pypi.org/project/reasoning-gym/>`_ (procedural generators, among them a
GSM8K-derived ``gsm_symbolic``), pinned exactly in ``pyproject.toml``.

Why reasoning-gym and not DeepMind's ``mathematics-dataset`` (1.0.1, 2019): the latter does not
import with sympy >= 1.6 (``sympy.solvers.diophantine.base_solution_linear`` moved), and torch
needs a newer sympy. reasoning-gym generates offline (no hub, no network; the templates ship in
the wheel) from ``random.Random(seed + index)`` alone, so a seed gives the same questions on
every machine.

Rows are ``{"family": "reasoning_gym/<task>", "question", "answer", "source": "reasoning-gym==<v>"}``,
the row format :func:`selective_lm.fewshot.fewshot_accuracy` reads. What is changed from the
package's items:

* answer-format instructions aimed at chat models ("Give only the result as your final answer.")
  are cut from the question: our prompt asks for the answer after ``Answer:`` already;
* the answer is written canonically (:func:`canonical_answer`): integers without sign noise,
  reduced fractions ``a/b``, short decimals without trailing zeros; items whose answer cannot be
  written so are skipped;
* items whose answer an exact re-computation does not confirm are skipped (``basic_arithmetic``
  computes with floor division, which is not what the question's ``/`` means when it is inexact);
* questions over :data:`MAX_QUESTION_CHARS` characters or with a line break are skipped (the
  prompt, with two exemplars, must fit in 256 tokens), as are duplicates and the caller's
  ``exclude`` set (compared after :func:`normalize_question`).

The tasks are configured small (one- and two-digit numbers), like the grade-school arithmetic and
pre-algebra a tiny model is trained on; each task gets an equal share of the rows (the first
tasks one more when ``n`` does not divide evenly), then the rows are shuffled with the seed.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import random
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

from selective_lm.files import UserError, atomic_write_text

PACKAGE = "reasoning-gym"
PINNED_VERSION = "0.1.25"  # keep equal to the pin in pyproject.toml
FAMILY_PREFIX = "reasoning_gym"
MAX_QUESTION_CHARS = 200
MAX_DECIMALS = 2  # longer decimal answers are skipped (not a short canonical string)
DRAWS_PER_ROW = 60  # give up on a task after this many draws per wanted row (filters reject most gsm items)


@dataclass(frozen=True)
class Task:
    name: str  # reasoning-gym dataset name
    config: dict = field(default_factory=dict)


# Small numbers throughout: the models are trained on one- and two-digit grade-school arithmetic.
TASKS: tuple[Task, ...] = (
    Task("basic_arithmetic", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2,
                              "format_style": "simple", "whitespace": "single"}),
    Task("chain_sum", {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}),
    Task("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    Task("simple_equations", {"min_terms": 2, "max_terms": 3, "min_value": 1, "max_value": 20}),
    Task("gcd", {"min_numbers": 2, "max_numbers": 2, "min_value": 2, "max_value": 100}),
    Task("lcm", {"min_numbers": 2, "max_numbers": 2, "min_value": 2, "max_value": 20}),
    Task("fraction_simplification", {"min_value": 1, "max_value": 20, "min_factor": 2, "max_factor": 10,
                                     "styles": ("plain",)}),
    Task("gsm_symbolic", {"difficulty": 1.0}),
)

_INSTRUCTION = re.compile(r"\s*Give (?:only )?the [\w ]+? as your final answer\.(?:\s*Do not include units\.)?\s*$")


# --------------------------------------------------------------------------- package
def _import_package():
    try:
        import reasoning_gym
    except ImportError:
        raise UserError(f"external test questions need {PACKAGE}, which is not installed: "
                        f"pip install '{PACKAGE}=={PINNED_VERSION}'") from None
    return reasoning_gym


def package_version() -> str:
    """The installed version (``reasoning_gym.__version__`` lags behind the release, so metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    _import_package()
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # importable but not installed as a distribution (a source checkout)
        return "unknown"


# --------------------------------------------------------------------------- text
def normalize_question(text: str) -> str:
    """What duplicates and ``exclude`` are compared on: lowercase, whitespace collapsed."""
    return re.sub(r"\s+", " ", text).strip().lower()


def clean_question(text: str) -> str:
    """The question without the package's answer-format instruction for chat models."""
    return _INSTRUCTION.sub("", text).strip()


def canonical_answer(text: str) -> str | None:
    """A short canonical answer string, or None when ``text`` is not a plain number.

    ``"-0"`` -> ``"0"``, ``"+7"`` -> ``"7"``, ``"1,234"`` -> ``"1234"``, ``"12.0"`` -> ``"12"``,
    ``"2.50"`` -> ``"2.5"``, ``"4/8"`` -> ``"1/2"``, ``"6/3"`` -> ``"2"``, ``"3/-4"`` -> ``"-3/4"``;
    decimals with more than :data:`MAX_DECIMALS` places and anything else give None.
    """
    s = str(text).strip().strip("$").strip().replace("\u2212", "-")
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = s.lstrip("+")
    if re.fullmatch(r"-?\d+", s):
        return str(int(s))
    if re.fullmatch(r"-?\d*\.\d+|-?\d+\.", s):
        try:
            d = Decimal(s)
        except InvalidOperation:
            return None
        if d == d.to_integral_value():
            return str(int(d))
        d = d.normalize()
        if -d.as_tuple().exponent > MAX_DECIMALS:
            return None
        out = format(d, "f")
        return "0" + out if out.startswith(".") else out.replace("-.", "-0.")
    m = re.fullmatch(r"(-?\d+)\s*/\s*(-?\d+)", s)
    if m:
        den = int(m.group(2))
        if den == 0:
            return None
        f = Fraction(int(m.group(1)), den)
        return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
    return None


# --------------------------------------------------------------------------- checks
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def exact_value(expression: str) -> Fraction:
    """Exact value of an integer expression with + - * / and parentheses (``/`` is true division)."""
    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"not plain arithmetic: {expression!r}")
    return ev(ast.parse(expression.strip(), mode="eval"))


def _same(value: Fraction | int, answer: str) -> bool:
    return canonical_answer(str(Fraction(value))) == answer


def _confirmed(task: str, item: dict, answer: str) -> bool:
    """Whether an exact re-computation from the item's parameters gives ``answer``."""
    meta = item.get("metadata", {})
    try:
        if task in ("basic_arithmetic", "chain_sum", "products"):
            return _same(exact_value(meta["expression"]), answer)
        if task == "simple_equations":
            left, right = meta["equation"].split("=")
            var = meta["variable"]
            sub = lambda side: re.sub(rf"\b{var}\b", f"({answer})", side)
            return exact_value(sub(left)) == exact_value(sub(right))
        if task == "gcd":
            return _same(math.gcd(*meta["numbers"]), answer)
        if task == "lcm":
            return _same(math.lcm(*meta["numbers"]), answer)
        if task == "fraction_simplification":
            return _same(Fraction(meta["numerator"], meta["denominator"]), answer) and "/" in answer
        if task == "gsm_symbolic":  # no independent solver: the answer must agree with the template's value
            return canonical_answer(str(meta["answer_value"])) == answer
    except (KeyError, ValueError, ZeroDivisionError, SyntaxError, TypeError):
        return False
    return False


# --------------------------------------------------------------------------- generation
def _task_seed(seed: int, task: str) -> int:
    """Separate seeds per task: reasoning-gym draws item i from Random(seed + i) in every task, so one
    seed would give chain_sum and products the same numbers. Random(str) is stable across processes."""
    return random.Random(f"external/{seed}/{task}").randrange(2**31)


def _shares(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


def external_questions(n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
                       tasks: tuple[Task, ...] = TASKS) -> list[dict]:
    """``n`` test questions from reasoning-gym, stratified over ``tasks``; the same for a seed.

    ``exclude``: question texts (e.g. our own generator's) that must not appear; compared after
    :func:`normalize_question`. Raises :class:`~selective_lm.files.UserError` when the package is
    missing, ValueError when a task cannot fill its share.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rg = _import_package()
    version = package_version()
    if version != PINNED_VERSION:
        warnings.warn(f"{PACKAGE}=={version} is installed, the study pins {PINNED_VERSION}: its questions may differ "
                      f"from a pinned run's (pip install '{PACKAGE}=={PINNED_VERSION}')", stacklevel=2)
    source = f"{PACKAGE}=={version}"
    banned = {normalize_question(q) for q in exclude}
    rows: list[dict] = []
    for task, want in zip(tasks, _shares(n, len(tasks))):
        if want == 0:
            continue
        limit = DRAWS_PER_ROW * want + 100
        data = rg.create_dataset(task.name, size=limit, seed=_task_seed(seed, task.name), **task.config)
        got = 0
        for idx in range(limit):
            item = data[idx]
            question = clean_question(item["question"])
            answer = canonical_answer(item["answer"])
            key = normalize_question(question)
            if (answer is None or not question or "\n" in question or len(question) > MAX_QUESTION_CHARS
                    or key in banned or not _confirmed(task.name, item, answer)):
                continue
            banned.add(key)  # no duplicates within the set either
            rows.append({"family": f"{FAMILY_PREFIX}/{task.name}", "question": question, "answer": answer,
                         "source": source})
            got += 1
            if got == want:
                break
        if got < want:
            raise ValueError(f"{task.name}: only {got} of {want} usable questions in {limit} draws "
                             "(ask for fewer, or exclude less)")
    random.Random(f"external/{seed}/order").shuffle(rows)
    return rows


def write_external(path: str | Path, n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> dict:
    """Write :func:`external_questions` as JSONL (atomically); returns what was written."""
    rows = external_questions(n, seed, exclude=exclude)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["family"]] = counts.get(r["family"], 0) + 1
    return {"package": PACKAGE, "version": package_version(), "tasks": [t.name for t in TASKS],
            "per_family": dict(sorted(counts.items())), "n": len(rows), "seed": seed, "path": str(path),
            "excluded": len(exclude)}
