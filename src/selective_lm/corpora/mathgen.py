"""Deterministic generator of small arithmetic and pre-algebra problems.

Every problem carries a short, correct worked solution and a short canonical answer
string (what exact-match evaluation compares). Only ``random.Random(seed)`` is used, so
the same seed gives the same problems on every machine.

The models trained on this data are tiny, so the mix is deliberately easy: about 60% of
each family's items are "easy" (one- and two-digit sums, times tables, ``x + a = b``),
the rest "medium" (multi-digit numbers, two-step equations, unlike denominators, word
problems with two operations). Every ``A = B = C`` chain of plain arithmetic in a
solution is literally true; ``tests/study/test_mathgen.py`` checks this mechanically.
"""
from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from collections.abc import Callable, Iterator, Sequence

EASY_SHARE = 0.6


@dataclass(frozen=True)
class Problem:
    family: str
    question: str
    solution: str
    answer: str


def format_problem(p: Problem) -> str:
    """The canonical training form: ``Problem: ...\\nSolution: ...\\nAnswer: ...\\n``."""
    return f"Problem: {p.question}\nSolution: {p.solution}\nAnswer: {p.answer}\n"


_STRIP = string.punctuation + " "


def normalise_question(question: str) -> str:
    """The identity of a question: lowercase, whitespace collapsed, punctuation stripped at both ends.

    Problems are assigned to train/validation/test by a keyed hash of this form, and the leakage
    check compares questions in this form, so two wordings that differ only in case, spacing or a
    final ``?``/``.`` count as one problem.
    """
    return " ".join(question.lower().split()).strip(_STRIP)


# --------------------------------------------------------------------- helpers
def _easy(rng: random.Random) -> bool:
    return rng.random() < EASY_SHARE


def _frac(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _pick(rng: random.Random, templates: Sequence[str], **kw: object) -> str:
    return rng.choice(templates).format(**kw)


def _binary_q(sym: str, word: str, verb: str, prep: str) -> tuple[str, ...]:
    """Question templates for ``a <sym> b``; the plain "What is" form is twice as likely."""
    return (f"What is {{a}} {sym} {{b}}?", f"What is {{a}} {sym} {{b}}?", f"Calculate {{a}} {sym} {{b}}.",
            f"What is {{a}} {word} {{b}}?", f"{verb} {{a}} {prep} {{b}}.")


_ADD_Q = _binary_q("+", "plus", "Add", "and")
_SUB_Q = _binary_q("-", "minus", "Subtract", "from")[:4] + ("Subtract {b} from {a}.",)
_MUL_Q = _binary_q("*", "times", "Multiply", "by")
_DIV_Q = _binary_q("/", "divided by", "Divide", "by")


# -------------------------------------------------------------------- families
def _add(rng: random.Random) -> Problem:
    if _easy(rng):
        small = rng.random() < 0.5
        a, b = (rng.randint(1, 9), rng.randint(1, 9)) if small else (rng.randint(10, 60), rng.randint(1, 30))
    else:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
    s = a + b
    if min(a, b) < 10 or (a % 10 == 0 and b % 10 == 0):
        sol = f"{a} + {b} = {s}."
    else:  # split off the ones digits
        ta, oa, tb, ob = a - a % 10, a % 10, b - b % 10, b % 10
        parts = " + ".join(str(t) for t in (ta, tb, oa, ob) if t)
        sol = f"{a} + {b} = {parts} = {ta + tb} + {oa + ob} = {s}."
    return Problem("add", _pick(rng, _ADD_Q, a=a, b=b), sol, str(s))


def _sub(rng: random.Random) -> Problem:
    if _easy(rng):
        a = rng.randint(2, 20)
        b = rng.randint(1, min(a - 1, 9)) if a > 9 and rng.random() < 0.6 else rng.randint(1, a - 1)
    else:
        a = rng.randint(20, 999)
        b = rng.randint(10, a - 1) if rng.random() < 0.8 else rng.randint(a + 1, a + 200)
    d = a - b
    if d < 0:
        sol = f"{a} - {b} = -({b} - {a}) = {d}."
    elif b < 10 or b % 10 == 0:
        sol = f"{a} - {b} = {d}."
    else:
        tb, ob = b - b % 10, b % 10
        sol = f"{a} - {b} = {a} - {tb} - {ob} = {a - tb} - {ob} = {d}."
    return Problem("sub", _pick(rng, _SUB_Q, a=a, b=b), sol, str(d))


def _mul(rng: random.Random) -> Problem:
    if _easy(rng):
        a, b = rng.randint(2, 10), rng.randint(2, 10)
    elif rng.random() < 0.7:
        a, b = rng.randint(11, 99), rng.randint(2, 9)
    else:
        a, b = rng.randint(11, 30), rng.randint(11, 19)
    p = a * b
    if a < 11 or (b < 10 and a % 10 == 0) or (b > 10 and b % 10 == 0):
        sol = f"{a} * {b} = {p}."
    elif b < 10:  # split the two-digit factor into tens and ones
        ta, oa = a - a % 10, a % 10
        sol = f"{a} * {b} = {ta} * {b} + {oa} * {b} = {ta * b} + {oa * b} = {p}."
    else:
        tb, ob = b - b % 10, b % 10
        sol = f"{a} * {b} = {a} * {tb} + {a} * {ob} = {a * tb} + {a * ob} = {p}."
    return Problem("mul", _pick(rng, _MUL_Q, a=a, b=b), sol, str(p))


def _div(rng: random.Random) -> Problem:
    easy = _easy(rng)
    if easy or rng.random() < 0.5:
        b = rng.randint(2, 10) if easy else rng.randint(2, 12)
        q = rng.randint(1, 10) if easy else rng.randint(11, 50)
        return Problem("div", _pick(rng, _DIV_Q, a=b * q, b=b), f"{b} * {q} = {b * q}, so {b * q} / {b} = {q}.",
                       str(q))
    b, q = rng.randint(3, 12), rng.randint(2, 30)
    r = rng.randint(1, b - 1)
    a = b * q + r
    question = _pick(rng, ("What is the remainder when {a} is divided by {b}?",
                           "Find the remainder of {a} divided by {b}."), a=a, b=b)
    return Problem("div", question, f"{b} * {q} = {b * q} and {a} = {b} * {q} + {r}, so the remainder is {r}.",
                   str(r))


def _linear(rng: random.Random) -> Problem:
    v = rng.choice("xxxyn")
    if _easy(rng):
        kind, x, a = rng.randrange(3), rng.randint(1, 20), rng.randint(1, 20)
        if kind == 0:
            eq, sol = f"{v} + {a} = {x + a}", f"Subtract {a} from both sides: {v} = {x + a} - {a} = {x}."
        elif kind == 1:
            eq, sol = f"{v} - {a} = {x - a}", f"Add {a} to both sides: {v} = {x - a} + {a} = {x}."
        else:
            a, x = rng.randint(2, 10), rng.randint(1, 10)
            eq, sol = f"{a}{v} = {a * x}", f"Divide both sides by {a}: {v} = {a * x} / {a} = {x}."
    elif rng.random() < 0.6:  # a*v + b = c
        x, a, b = rng.randint(-10, 15), rng.randint(2, 9), rng.choice([i for i in range(-20, 21) if i])
        c = a * x + b
        eq = f"{a}{v} + {b} = {c}" if b > 0 else f"{a}{v} - {-b} = {c}"
        step = f"{c} - {b}" if b > 0 else f"{c} + {-b}"
        sol = f"{a}{v} = {step} = {a * x}, so {v} = {a * x} / {a} = {x}."
    else:  # a*v - b = c*v + d
        x, a = rng.randint(-10, 15), rng.randint(2, 9)
        c, b = rng.randint(1, a - 1), rng.randint(1, 20)
        d, k = (a - c) * x - b, a - c
        eq = f"{a}{v} - {b} = {c}{v} + {d}" if d >= 0 else f"{a}{v} - {b} = {c}{v} - {-d}"
        sol = f"Move the {v} terms to the left: {a}{v} - {c}{v} = {d} + {b}, so " + (
            f"{k}{v} = {d + b} and {v} = {d + b} / {k} = {x}." if k != 1 else f"{v} = {d + b}.")
    question = _pick(rng, ("Solve {eq} for {v}.", "Solve {eq}.", "Solve for {v}: {eq}.",
                           "If {eq}, what is {v}?"), eq=eq, v=v)
    return Problem("linear", question, sol, str(x))


def _fraction(rng: random.Random) -> Problem:
    easy = _easy(rng)
    kind = rng.choice(["same", "same", "simplify"] if easy else ["unlike", "unlike", "sub", "mul"])
    if kind == "simplify":
        p, q = rng.randint(1, 7), rng.randint(2, 9)
        while math.gcd(p, q) != 1 or p >= q:
            p, q = rng.randint(1, 7), rng.randint(2, 9)
        k = rng.randint(2, 6)
        n, d = p * k, q * k
        return Problem("fraction", _pick(rng, ("Simplify {n}/{d}.", "Reduce {n}/{d} to lowest terms."), n=n, d=d),
                       f"The greatest common divisor of {n} and {d} is {k}, so "
                       f"{n}/{d} = ({n} / {k})/({d} / {k}) = {p}/{q}.", f"{p}/{q}")
    if kind == "same":
        d = rng.randint(3, 12)
        a, b = rng.randint(1, d - 1), rng.randint(1, d - 1)
        res, q = Fraction(a + b, d), f"What is {a}/{d} + {b}/{d}?"
        sol = f"{a}/{d} + {b}/{d} = ({a} + {b})/{d} = {a + b}/{d}"
    elif kind == "mul":
        a, b, c, d = rng.randint(1, 5), rng.randint(2, 9), rng.randint(1, 5), rng.randint(2, 9)
        res, q = Fraction(a * c, b * d), f"What is {a}/{b} * {c}/{d}?"
        sol = f"{a}/{b} * {c}/{d} = ({a} * {c})/({b} * {d}) = {a * c}/{b * d}"
    else:
        b, d = rng.sample(range(2, 11), 2)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        op = "-" if kind == "sub" else "+"
        if op == "-" and Fraction(a, b) < Fraction(c, d):
            a, b, c, d = c, d, a, b
        lcm = b * d // math.gcd(b, d)
        na, nc = a * lcm // b, c * lcm // d
        top = na + nc if op == "+" else na - nc
        res, q = Fraction(top, lcm), f"What is {a}/{b} {op} {c}/{d}?"
        sol = f"{a}/{b} {op} {c}/{d} = {na}/{lcm} {op} {nc}/{lcm} = {top}/{lcm}"
    ans = _frac(res)
    sol += "." if sol.endswith(f"= {ans}") else f" = {ans}."
    return Problem("fraction", q, sol, ans)


def _percent(rng: random.Random) -> Problem:
    easy = _easy(rng)
    p = rng.choice([10, 20, 25, 50] if easy else [5, 15, 30, 40, 60, 75, 12, 35, 80, 90])
    step = 100 // math.gcd(p, 100)  # n is a multiple of step, so p% of n is whole
    n = step * rng.randint(1, max(1, (100 if easy else 400) // step))
    part = p * n // 100
    if easy or rng.random() < 0.4:
        return Problem("percent", f"What is {p}% of {n}?", f"{p}% of {n} is {p}/100 * {n} = {p * n}/100 = {part}.",
                       str(part))
    if rng.random() < 0.5:
        return Problem("percent", f"What percent of {n} is {part}?",
                       f"{part} / {n} * 100 = {part * 100} / {n} = {p}, so {part} is {p}% of {n}.", f"{p}%")
    verb, sign = rng.choice([("Increase", "+"), ("Decrease", "-")])
    new = n + part if sign == "+" else n - part
    return Problem("percent", f"{verb} {n} by {p}%.",
                   f"{p}% of {n} is {p}/100 * {n} = {part}, so the new value is {n} {sign} {part} = {new}.", str(new))


def _gcd(rng: random.Random) -> Problem:
    easy = _easy(rng)
    g = rng.randint(1, 6) if easy else rng.randint(2, 15)
    p, q = rng.sample(range(1, 8 if easy else 13), 2)
    g = 2 if g * min(p, q) == 1 else g
    a, b = g * p, g * q
    real_g = math.gcd(a, b)
    if easy or rng.random() < 0.5:
        question = _pick(rng, ("What is the greatest common divisor of {a} and {b}?",
                               "Find the greatest common divisor of {a} and {b}.",
                               "What is the highest common factor of {a} and {b}?"), a=a, b=b)
        x, y, steps = max(a, b), min(a, b), []
        while y:  # Euclid's algorithm
            steps.append(f"{x} = {x // y} * {y} + {x % y}")
            x, y = y, x % y
        sol = "; ".join(steps) + f". The last nonzero remainder is {real_g}, so the answer is {real_g}."
        return Problem("gcd", question, sol, str(real_g))
    lcm = a * b // real_g
    question = _pick(rng, ("What is the least common multiple of {a} and {b}?",
                           "Find the least common multiple of {a} and {b}."), a=a, b=b)
    sol = (f"The greatest common divisor of {a} and {b} is {real_g}, so the least common multiple is "
           f"{a} * {b} / {real_g} = {a * b} / {real_g} = {lcm}.")
    return Problem("gcd", question, sol, str(lcm))


def _order_ops(rng: random.Random) -> Problem:
    if _easy(rng):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        shapes = [
            (f"{a} + {b} * {c}", [f"First multiply: {b} * {c} = {b * c}", f"Then add: {a} + {b * c} = {a + b * c}"]),
            (f"{a} * {b} - {c}",
             [f"First multiply: {a} * {b} = {a * b}", f"Then subtract: {a * b} - {c} = {a * b - c}"]),
            (f"({a} + {b}) * {c}",
             [f"First the parentheses: {a} + {b} = {a + b}", f"Then {a + b} * {c} = {(a + b) * c}"]),
            (f"{a + 9} - {b} + {c}",
             [f"Work from left to right: {a + 9} - {b} = {a + 9 - b}", f"Then {a + 9 - b} + {c} = {a + 9 - b + c}"])]
    else:
        a, b, c, d = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 20)
        e, q = b + rng.randint(1, 10), rng.randint(2, 9)
        shapes = [
            (f"{a} * {b} + {c} * {d}",
             [f"{a} * {b} = {a * b}", f"{c} * {d} = {c * d}", f"Then {a * b} + {c * d} = {a * b + c * d}"]),
            (f"({e} - {b}) * {c} + {d}", [f"First the parentheses: {e} - {b} = {e - b}",
                                          f"Then {e - b} * {c} = {(e - b) * c}",
                                          f"Finally {(e - b) * c} + {d} = {(e - b) * c + d}"]),
            (f"{d} + {b} * {c} - {a}", [f"First multiply: {b} * {c} = {b * c}", f"Then {d} + {b * c} = {d + b * c}",
                                        f"Finally {d + b * c} - {a} = {d + b * c - a}"]),
            (f"{d} + {b * q} / {b} * {c}", [f"Left to right, divide first: {b * q} / {b} = {q}",
                                            f"Then {q} * {c} = {q * c}", f"Finally {d} + {q * c} = {d + q * c}"])]
    expr, steps = rng.choice(shapes)
    question = _pick(rng, ("What is {e}?", "What is {e}?", "Calculate {e}.", "Evaluate {e}."), e=expr)
    return Problem("order_ops", question, ". ".join(steps) + ".", steps[-1].rsplit("= ", 1)[1])


def _sequence(rng: random.Random) -> Problem:
    kind = "next" if _easy(rng) else rng.choice(["ratio", "nth"])
    if kind == "next":
        start, diff = rng.randint(1, 20), rng.randint(1, 10)
        if rng.random() < 0.3:
            start, diff = start + 4 * diff, -diff
        terms = [start + i * diff for i in range(4)]
        ans = terms[-1] + diff
        rel, op = (f"{diff} more", "+") if diff > 0 else (f"{-diff} less", "-")
        sol = (f"Each term is {rel} than the one before: {terms[1]} - {terms[0]} = {diff}. "
               f"So the next number is {terms[-1]} {op} {abs(diff)} = {ans}.")
    elif kind == "ratio":
        start, ratio = rng.randint(1, 5), rng.choice([2, 2, 3])
        terms = [start * ratio ** i for i in range(4)]
        ans = terms[-1] * ratio
        sol = (f"Each term is {ratio} times the one before: {terms[1]} / {terms[0]} = {ratio}. "
               f"So the next number is {terms[-1]} * {ratio} = {ans}.")
    else:
        start, diff, n = rng.randint(1, 20), rng.randint(2, 9), rng.randint(5, 20)
        ans = start + (n - 1) * diff
        sol = (f"The first term is {start} and the common difference is {start + diff} - {start} = {diff}. "
               f"The {_ordinal(n)} term is {start} + ({n} - 1) * {diff} = {start} + {(n - 1) * diff} = {ans}.")
        q = (f"What is the {_ordinal(n)} term of the arithmetic sequence "
             f"{start}, {start + diff}, {start + 2 * diff}, ...?")
        return Problem("sequence", q, sol, str(ans))
    return Problem("sequence", f"What is the next number in the sequence {', '.join(map(str, terms))}?", sol, str(ans))


_NAMES = (("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Maria", "she"), ("Sam", "he"), ("Lena", "she"),
          ("Omar", "he"), ("Priya", "she"), ("Jack", "he"), ("Mia", "she"), ("Leo", "he"), ("Zoe", "she"),
          ("Ravi", "he"), ("Emma", "she"), ("Noah", "he"), ("Lucy", "she"))
_ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "cookies", "stamps", "shells", "cards", "eggs")
_GOODS = (("notebook", "notebooks"), ("pen", "pens"), ("sandwich", "sandwiches"), ("ticket", "tickets"),
          ("ball", "balls"), ("cup of tea", "cups of tea"))


def _word(rng: random.Random) -> Problem:
    (name, he), (other, _) = rng.sample(_NAMES, 2)
    he, item, easy = he.capitalize(), rng.choice(_ITEMS), _easy(rng)
    kind = rng.randrange(4) if easy else rng.randrange(8)
    lo, hi = (2, 20) if easy else (10, 90)
    if kind == 0:
        a, b = rng.randint(lo, hi), rng.randint(2, 10 if easy else 40)
        q = f"{name} has {a} {item}. {he} buys {b} more. How many {item} does {name} have now?"
        sol, ans = f"{a} + {b} = {a + b}. {name} has {a + b} {item}.", a + b
    elif kind == 1:
        a = rng.randint(lo + 2, hi + 10)
        b = rng.randint(1, a - 1)
        q = f"{name} has {a} {item} and gives {b} to {other}. How many {item} does {name} have left?"
        sol, ans = f"{a} - {b} = {a - b}. {name} has {a - b} {item} left.", a - b
    elif kind == 2:
        a, b = (rng.randint(2, 9), rng.randint(2, 9)) if easy else (rng.randint(3, 15), rng.randint(4, 24))
        q = f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
        sol, ans = f"{a} * {b} = {a * b}. There are {a * b} {item}.", a * b
    elif kind == 3:
        b, each = rng.randint(2, 6 if easy else 12), rng.randint(2, 9 if easy else 25)
        q = f"{name} shares {b * each} {item} equally among {b} friends. How many {item} does each friend get?"
        sol, ans = f"{b * each} / {b} = {each}. Each friend gets {each} {item}.", each
    elif kind == 4:
        (one, many), price, k = rng.choice(_GOODS), rng.randint(2, 9), rng.randint(2, 5)
        bill = next(x for x in (10, 20, 50, 100) if x >= price * k)
        q = (f"A {one} costs {price} dollars. {name} buys {k} {many} and pays with a {bill}-dollar bill. "
             f"How much change does {name} get, in dollars?")
        sol, ans = f"{k} * {price} = {price * k} dollars. {bill} - {price * k} = {bill - price * k}.", bill - price * k
    elif kind == 5:
        v, t = rng.choice([30, 40, 50, 60, 70, 80, 90]), rng.randint(2, 6)
        q = f"A car travels at {v} km per hour for {t} hours. How many km does it travel?"
        sol, ans = f"Distance is speed times time: {v} * {t} = {v * t}. It travels {v * t} km.", v * t
    elif kind == 6:
        a, b, c = rng.randint(5, 15), rng.randint(2, 10), rng.randint(2, 10)
        q = f"{name} is {a} years old. {other} is {b} years older. How old will {other} be in {c} years?"
        sol = (f"{other} is {a} + {b} = {a + b} years old now. "
               f"In {c} years {other} will be {a + b} + {c} = {a + b + c}.")
        ans = a + b + c
    else:
        a, k, b = rng.randint(2, 20), rng.randint(2, 6), rng.randint(3, 12)
        q = (f"{name} has {a} {item}. {he} buys {k} packs with {b} {item} in each pack. "
             f"How many {item} does {name} have now?")
        sol, ans = f"{k} * {b} = {k * b}. {a} + {k * b} = {a + k * b}.", a + k * b
    return Problem("word", q, sol, str(ans))


def _compare(rng: random.Random) -> Problem:
    easy = _easy(rng)
    kind = rng.choice(["int", "int", "sort"] if easy else ["dec", "frac", "neg", "sort"])
    big = rng.random() < 0.5
    word = "larger" if big else "smaller"
    if kind == "sort":
        vals = rng.sample(range(1, 50 if easy else 500), 3 if easy else 4)
        srt = sorted(vals)
        ans = ", ".join(map(str, srt))
        return Problem("compare", f"Sort {', '.join(map(str, vals))} from smallest to largest.",
                       f"The smallest is {srt[0]} and the largest is {srt[-1]}. In increasing order: {ans}.", ans)
    if kind in ("int", "neg"):
        a, b = rng.sample(range(1, 100) if kind == "int" else range(-30, 30), 2)
        hi, lo = max(a, b), min(a, b)
        return Problem("compare", f"Which is {word}: {a} or {b}?", f"{hi} > {lo}, so {hi if big else lo} is {word}.",
                       str(hi if big else lo))
    if kind == "dec":  # hundredths x and y; 0.6 vs 0.65 is the classic trap
        x = rng.randint(1, 99)
        y = rng.choice([(x // 10) * 10, x + 1, x - 1, x + 10, rng.randint(1, 99)])
        while y == x or not 0 < y < 100:
            y = rng.randint(1, 99)
        s = [f"0.{v // 10}" if v % 10 == 0 else f"0.{v:02d}" for v in (x, y)]
        hi, lo = (s[0], s[1]) if x > y else (s[1], s[0])
        pad = [f"{t} = 0.{v:02d}" for t, v in zip(s, (x, y)) if len(t) == 3]
        sol = (f"{' and '.join(pad)}. " if pad else "") + (
            f"Since 0.{max(x, y):02d} > 0.{min(x, y):02d}, {hi if big else lo} is {word}.")
        return Problem("compare", f"Which is {word}: {s[0]} or {s[1]}?", sol, hi if big else lo)
    while True:  # two distinct reduced proper fractions with different denominators
        b, d = rng.randint(2, 9), rng.randint(2, 9)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        f1, f2 = Fraction(a, b), Fraction(c, d)
        if f1 != f2 and b != d and f1.denominator == b and f2.denominator == d:
            break
    lcm = b * d // math.gcd(b, d)
    n1, n2 = a * lcm // b, c * lcm // d
    hi, lo = (f"{a}/{b}", f"{c}/{d}") if f1 > f2 else (f"{c}/{d}", f"{a}/{b}")
    sol = (f"{a}/{b} = {n1}/{lcm}. {c}/{d} = {n2}/{lcm}. Since {max(n1, n2)}/{lcm} > {min(n1, n2)}/{lcm}, "
           f"{hi if big else lo} is {word}.")
    return Problem("compare", f"Which is {word}: {a}/{b} or {c}/{d}?", sol, hi if big else lo)


_UNITS = (("meter", "meters", "centimeters", 100), ("kilometer", "kilometers", "meters", 1000),
          ("hour", "hours", "minutes", 60), ("minute", "minutes", "seconds", 60),
          ("kilogram", "kilograms", "grams", 1000), ("day", "days", "hours", 24), ("week", "weeks", "days", 7),
          ("foot", "feet", "inches", 12), ("liter", "liters", "milliliters", 1000),
          ("dollar", "dollars", "cents", 100), ("year", "years", "months", 12), ("dozen", "dozens", "items", 12))


def _units(rng: random.Random) -> Problem:
    one, many, small, f = rng.choice(_UNITS)
    easy = _easy(rng)
    n = rng.randint(2, 10) if easy else rng.randint(2, 40)
    fact = f"1 {one} = {f} {small}"
    if easy or rng.random() < 0.3:
        return Problem("units", f"How many {small} are in {n} {many}?",
                       f"{fact}, so {n} {many} = {n} * {f} = {n * f} {small}.", str(n * f))
    if rng.random() < 0.5:
        return Problem("units", f"How many {many} are in {n * f} {small}?",
                       f"{fact}, so {n * f} {small} = {n * f} / {f} = {n} {many}.", str(n))
    extra = rng.randint(1, f - 1)
    return Problem("units", f"How many {small} are in {n} {many} and {extra} {small}?",
                   f"{fact}, so {n} {many} = {n} * {f} = {n * f} {small}. "
                   f"Adding {extra} gives {n * f} + {extra} = {n * f + extra} {small}.", str(n * f + extra))


_GENERATORS: dict[str, Callable[[random.Random], Problem]] = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "linear": _linear, "fraction": _fraction,
    "percent": _percent, "gcd": _gcd, "order_ops": _order_ops, "sequence": _sequence,
    "word": _word, "compare": _compare, "units": _units,
}
FAMILIES: tuple[str, ...] = tuple(_GENERATORS)


def iter_problems(seed: int, families: Sequence[str] | None = None) -> Iterator[Problem]:
    """Endless deterministic stream of problems; each family is drawn uniformly at random."""
    fams = tuple(families) if families is not None else FAMILIES
    unknown = [f for f in fams if f not in _GENERATORS]
    if unknown or not fams:
        raise ValueError(f"unknown or empty families: {unknown or fams!r}; known: {', '.join(FAMILIES)}")
    rng = random.Random(seed)
    while True:
        yield _GENERATORS[rng.choice(fams)](rng)


def generate_problems(n: int, seed: int, families: Sequence[str] | None = None) -> list[Problem]:
    """``n`` problems from :func:`iter_problems` (easy items may repeat)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return list(islice(iter_problems(seed, families), n))
