"""Tests for the deterministic math problem generator: answers, worked steps, determinism."""
from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest

from selective_lm.corpora.mathgen import (_UNITS, FAMILIES, Problem, format_problem, generate_problems, iter_problems,
                                       normalise_question)

N_PER_FAMILY = 300


def _frac_str(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _ev(expr: str) -> Fraction:
    """Evaluate plain arithmetic exactly (numbers become Fractions)."""
    code = re.sub(r"\d+(?:\.\d+)?", lambda m: f"Fraction('{m.group(0)}')", expr)
    return eval(code, {"Fraction": Fraction, "__builtins__": {}})  # noqa: S307 - our own generated text


def _ints(s: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", s)]


def expected_answer(p: Problem) -> str:
    """Recompute the answer from the question text alone."""
    q, f = p.question, p.family
    if f in ("add", "sub", "mul", "div"):
        if "remainder" in q:
            a, b = _ints(q)
            return str(a % b)
        a, b = _ints(q)
        if q.startswith("Subtract"):
            a, b = b, a
        return _frac_str({"add": Fraction(a + b), "sub": Fraction(a - b), "mul": Fraction(a * b),
                          "div": Fraction(a, b)}[f])
    if f == "linear":
        m = re.fullmatch(r"Solve for \w: (.+)\.|Solve (.+) for \w\.|Solve (.+)\.|If (.+), what is \w\?", q)
        eq = next(g for g in m.groups() if g)
        var = re.search(r"[xyn]", eq)[0]

        def side(s: str, x: int) -> Fraction:
            return _ev(re.sub(rf"(\d){var}", rf"\1*({x})", s).replace(var, f"({x})"))

        lhs, rhs = eq.split(" = ")
        c = side(lhs, 0) - side(rhs, 0)  # lhs - rhs = slope * v + c
        slope = side(lhs, 1) - side(rhs, 1) - c
        assert slope != 0, q
        return _frac_str(-c / slope)
    if f == "fraction":
        if q.startswith(("Simplify", "Reduce")):
            n, d = _ints(q)
            return _frac_str(Fraction(n, d))
        return _frac_str(_ev(q[len("What is "):-1]))
    if f == "percent":
        if m := re.fullmatch(r"What is (\d+)% of (\d+)\?", q):
            return _frac_str(Fraction(int(m[1]) * int(m[2]), 100))
        if m := re.fullmatch(r"What percent of (\d+) is (\d+)\?", q):
            return _frac_str(Fraction(100 * int(m[2]), int(m[1]))) + "%"
        m = re.fullmatch(r"(Increase|Decrease) (\d+) by (\d+)%\.", q)
        sign = 1 if m[1] == "Increase" else -1
        return _frac_str(int(m[2]) * (1 + sign * Fraction(int(m[3]), 100)))
    if f == "gcd":
        a, b = _ints(q)
        return str(math.gcd(a, b) if "common divisor" in q or "common factor" in q else math.lcm(a, b))
    if f == "order_ops":
        m = re.fullmatch(r"(?:What is|Calculate|Evaluate) ([\d ()+\-*/]+)[?.]", q)
        return _frac_str(_ev(m[1]))
    if f == "sequence":
        if m := re.fullmatch(r"What is the (\d+)\w\w term of the arithmetic sequence (-?\d+), (-?\d+), (-?\d+), \.\.\.\?", q):
            n, t1, t2, t3 = map(int, m.groups())
            assert t3 - t2 == t2 - t1
            return str(t1 + (n - 1) * (t2 - t1))
        t = _ints(q)
        if t[1] - t[0] == t[2] - t[1] == t[3] - t[2]:
            return str(t[3] + t[1] - t[0])
        assert t[1] * t[1] == t[0] * t[2] and t[2] * t[2] == t[1] * t[3]
        return str(t[3] * t[1] // t[0])
    if f == "word":
        n = _ints(q)
        if "more." in q:
            return str(n[0] + n[1])
        if "gives" in q:
            return str(n[0] - n[1])
        if "boxes" in q:
            return str(n[0] * n[1])
        if "shares" in q:
            return str(n[0] // n[1])
        if "change" in q:
            return str(n[2] - n[0] * n[1])
        if "travels" in q:
            return str(n[0] * n[1])
        if "years old" in q:
            return str(n[0] + n[1] + n[2])
        assert "packs" in q, q
        return str(n[0] + n[1] * n[2])
    if f == "compare":
        if m := re.fullmatch(r"Sort (.+) from smallest to largest\.", q):
            return ", ".join(str(v) for v in sorted(int(x) for x in m[1].split(", ")))
        m = re.fullmatch(r"Which is (larger|smaller): (\S+) or (\S+)\?", q)
        a, b = m[2], m[3]
        big = Fraction(a) > Fraction(b)
        return a if big == (m[1] == "larger") else b
    if f == "units":
        table = {many: (small, k) for _, many, small, k in _UNITS}
        m = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)(?: and (\d+) (\w+))?\?", q)
        want, n, unit = m[1], int(m[2]), m[3]
        if unit in table and table[unit][0] == want:
            return str(n * table[unit][1] + (int(m[4]) if m[4] else 0))
        assert table[want][0] == unit, q
        return _frac_str(Fraction(n, table[want][1]))
    raise AssertionError(f"unknown family {f}")


_PURE = set("0123456789 +-*/().")


def _pure_suffix(s: str) -> str:
    i = len(s)
    while i > 0 and s[i - 1] in _PURE:
        i -= 1
    return s[i:].strip()


def _pure_prefix(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in _PURE:
        i += 1
    return s[:i].strip()


def check_chains(solution: str) -> int:
    """Assert every run of plain-arithmetic parts of an ``A = B = C`` chain is equal; return #checks."""
    checks = 0
    for seg in re.split(r"[.;,:]\s+", solution.rstrip(".")):
        parts = seg.split("=")
        if len(parts) < 2:
            continue
        cleaned = []
        for i, part in enumerate(parts):
            if i == 0:
                part = _pure_suffix(part)
            elif i == len(parts) - 1:
                part = _pure_prefix(part)
            else:
                part = part.strip() if set(part) <= _PURE else ""
            cleaned.append(part if re.search(r"\d", part) else "")
        run: list[Fraction] = []
        for part in cleaned + [""]:
            if part:
                run.append(_ev(part))
                continue
            if len(run) >= 2:
                assert len(set(run)) == 1, (solution, seg, run)
                checks += len(run) - 1
            run = []
    return checks


@pytest.fixture(scope="module")
def by_family() -> dict[str, list[Problem]]:
    return {f: generate_problems(N_PER_FAMILY, 11, [f]) for f in FAMILIES}


def test_families() -> None:
    assert len(FAMILIES) == 13 and len(set(FAMILIES)) == 13
    assert {p.family for p in generate_problems(500, 3)} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_recomputed(by_family: dict[str, list[Problem]], family: str) -> None:
    probs = by_family[family]
    assert all(p.family == family for p in probs)
    for p in probs:
        assert p.answer == expected_answer(p), p
        assert p.answer in p.solution, p  # the worked steps reach the answer
        assert p.question.endswith(("?", ".")) and "\n" not in p.question + p.solution + p.answer


@pytest.mark.parametrize("family", FAMILIES)
def test_worked_steps_are_true(by_family: dict[str, list[Problem]], family: str) -> None:
    checks = sum(check_chains(p.solution) for p in by_family[family])
    if family != "compare":  # integer comparisons and sorting have no equalities
        assert checks >= N_PER_FAMILY // 2, (family, checks)


def test_chain_checker_catches_errors() -> None:
    assert check_chains("37 + 48 = 30 + 40 + 7 + 8 = 70 + 15 = 85.") == 3
    with pytest.raises(AssertionError):
        check_chains("So the next number is 20 + 4 = 25.")
    with pytest.raises(AssertionError):
        check_chains("25% of 80 is 25/100 * 80 = 2000/100 = 21.")


def test_easy_items_well_represented() -> None:
    probs = generate_problems(2000, 5)
    short = sum(len(p.answer) <= 2 for p in probs) / len(probs)
    assert short > 0.4
    adds = [p for p in probs if p.family == "add"]
    assert sum(max(map(int, re.findall(r"\d+", p.question))) < 10 for p in adds) / len(adds) > 0.2
    assert sum(re.fullmatch(r"What is \d+ \* \d+\?", p.question) is not None and len(p.answer) <= 3
               for p in probs if p.family == "mul") > 30


def test_determinism_and_seeds() -> None:
    a, b = generate_problems(300, 42), generate_problems(300, 42)
    assert a == b
    assert generate_problems(300, 43) != a
    stream = iter_problems(42)
    assert [next(stream) for _ in range(300)] == a
    assert generate_problems(0, 1) == []


def test_format_problem() -> None:
    p = Problem("add", "What is 37 + 48?", "37 + 48 = 30 + 40 + 7 + 8 = 70 + 15 = 85.", "85")
    assert format_problem(p) == ("Problem: What is 37 + 48?\nSolution: 37 + 48 = 30 + 40 + 7 + 8 = 70 + 15 = 85.\n"
                                 "Answer: 85\n")


def test_normalise_question() -> None:
    assert normalise_question("What is 3 + 4?") == "what is 3 + 4"
    assert normalise_question("  WHAT  is\n3 +  4 . ") == "what is 3 + 4"
    assert normalise_question("Which is larger: 0.6 or 0.65?") == "which is larger: 0.6 or 0.65"
    assert normalise_question("What is the 5th term of the arithmetic sequence 3, 5, 7, ...?") == (
        "what is the 5th term of the arithmetic sequence 3, 5, 7")
    assert normalise_question("What is 3 + 4?") != normalise_question("What is 3 + 45?")
    for p in generate_problems(2000, 7):  # idempotent, and every question keeps its numbers
        n = normalise_question(p.question)
        assert normalise_question(n) == n and re.findall(r"\d+", n) == re.findall(r"\d+", p.question)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_problems(5, 0, ["calculus"])
    with pytest.raises(ValueError):
        generate_problems(5, 0, [])
    with pytest.raises(ValueError):
        generate_problems(-1, 0)
