"""External few-shot test questions (reasoning-gym): deterministic, well-formed, correct, scorable."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym")

from selective_lm.fewshot import check_rows, read_jsonl, score_generation
from selective_lm.files import UserError
from selective_lm.corpora import external

N = 80  # 10 per task: enough to see every task, quick to make


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return external.external_questions(N, seed=3)


def _exact(expression: str) -> Fraction:
    """Independent of external.exact_value: integers become Fractions and Python evaluates."""
    assert re.fullmatch(r"[\d\s+\-*/()]+", expression), expression
    return eval(re.sub(r"\d+", lambda m: f"F({m.group()})", expression), {"__builtins__": {}, "F": Fraction})


def _rederive(row: dict) -> Fraction | None:
    """The answer worked out from the question text alone (None where that needs a word-problem solver)."""
    task, q = row["family"].split("/")[1], row["question"]
    if task == "basic_arithmetic":
        return _exact(re.fullmatch(r"Calculate (.+)\.", q).group(1))
    if task == "chain_sum":
        return _exact(re.fullmatch(r".*problem: (.+) =", q).group(1))
    if task == "products":
        return _exact(re.fullmatch(r".*multiplication: (.+?)\.?", q).group(1))
    if task == "simple_equations":
        var, eq = re.fullmatch(r".*? (\w)(?: in the equation| that satisfies)?: (.+)", q).groups()
        left, right = eq.split("=")
        f = lambda x: _exact(re.sub(rf"\b{var}\b", f"({x})", left)) - _exact(re.sub(rf"\b{var}\b", f"({x})", right))
        return -f(0) / (f(1) - f(0))  # linear in the variable
    if task in ("gcd", "lcm"):
        nums = [int(x) for x in re.findall(r"\d+", q.split(":")[1])]
        return Fraction((math.gcd if task == "gcd" else math.lcm)(*nums))
    if task == "fraction_simplification":
        a, b = re.search(r"(\d+)/(\d+)", q).groups()
        return Fraction(int(a), int(b))
    assert task == "gsm_symbolic", task
    return None


def test_row_format_and_stratified(rows):
    assert len(rows) == N
    version = external.package_version()
    assert version == external.PINNED_VERSION
    for r in rows:
        assert set(r) == {"family", "question", "answer", "source"}
        assert r["source"] == f"reasoning-gym=={version}"
        assert all(isinstance(v, str) and v for v in r.values())
    counts = Counter(r["family"] for r in rows)
    assert counts == {f"reasoning_gym/{t.name}": N // len(external.TASKS) for t in external.TASKS}
    assert len({external.normalize_question(r["question"]) for r in rows}) == N  # no duplicates
    assert len({r["family"] for r in rows[:N // 2]}) == len(external.TASKS)  # shuffled: a prefix has every task
    uneven = Counter(r["family"] for r in external.external_questions(len(external.TASKS) + 3, seed=3))
    assert sorted(uneven.values(), reverse=True) == [2, 2, 2] + [1] * (len(external.TASKS) - 3)


def test_questions_short_and_single_line(rows):
    for r in rows:
        q = r["question"]
        assert len(q) <= external.MAX_QUESTION_CHARS and "\n" not in q and q == q.strip()
        assert "as your final answer" not in q and "Do not include units" not in q  # the chat-model instruction is cut


def test_answers_canonical_and_correct(rows):
    checked = Counter()
    for r in rows:
        a = r["answer"]
        assert external.canonical_answer(a) == a
        assert re.fullmatch(r"-?\d+(/\d+|\.\d{1,2})?", a), a
        assert a != "-0" and not re.fullmatch(r"-?0\d+.*", a) and not a.endswith(".0")
        value = _rederive(r)
        if value is not None:
            assert Fraction(a) == value, r
            checked[r["family"]] += 1
    assert len(checked) == len(external.TASKS) - 1  # all but the word problems re-derived


def test_every_answer_scores_correct(rows):
    for r in rows:
        ok, pred = score_generation(f" Let me work it out.\nAnswer: {r['answer']}\n\nProblem: next", r["answer"])
        assert ok and pred == r["answer"], r
        assert not score_generation(f" x\nAnswer: {r['answer']}1", r["answer"])[0]


def test_canonical_answer():
    cases = {"7": "7", "-3": "-3", "+7": "7", "-0": "0", "007": "7", "12.0": "12", "2.50": "2.5", "-.5": "-0.5",
             "1,234": "1234", "$3/4$": "3/4", "4/8": "1/2", "6/3": "2", "3/-4": "-3/4", "\u22125": "-5"}
    for raw, want in cases.items():
        assert external.canonical_answer(raw) == want, raw
    for bad in ("1/0", "3.14159", "x = 3", "", "1e5", "twelve"):
        assert external.canonical_answer(bad) is None, bad


def test_deterministic_in_process(rows):
    assert external.external_questions(N, seed=3) == rows
    other = external.external_questions(N, seed=4)
    assert other != rows and len(other) == N


def test_deterministic_across_processes_offline(rows, tmp_path):
    """A fresh interpreter (other hash seed, sockets refused) makes the same questions: no network needed."""
    script = tmp_path / "gen.py"
    script.write_text(
        "import json, socket, sys\n"
        "def refuse(*a, **k):\n    raise OSError('network used')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
        "from selective_lm.corpora.external import external_questions\n"
        f"json.dump(external_questions({N}, seed=3), sys.stdout)\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(external.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == rows


def test_exclude(rows):
    dropped = rows[::3]
    exclude = {"  " + r["question"].upper().replace(" ", "   ") + " " for r in dropped}  # compared normalised
    again = external.external_questions(N, seed=3, exclude=exclude)
    assert len(again) == N
    keys = {external.normalize_question(r["question"]) for r in again}
    assert not keys & {external.normalize_question(r["question"]) for r in dropped}
    assert Counter(r["family"] for r in again) == Counter(r["family"] for r in rows)  # still stratified


def test_write_external(tmp_path):
    path = tmp_path / "sub" / "external.jsonl"
    meta = external.write_external(path, 16, seed=1)
    back = check_rows(read_jsonl(path), path, ("question", "answer"))
    assert back == external.external_questions(16, seed=1)
    assert meta["package"] == "reasoning-gym" and meta["version"] == external.PINNED_VERSION and meta["n"] == 16
    assert meta["tasks"] == [t.name for t in external.TASKS] and sum(meta["per_family"].values()) == 16
    assert [p.name for p in path.parent.iterdir()] == ["external.jsonl"]  # no temporary left behind


def test_pin_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(external.__file__).parents[3] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert f"{external.PACKAGE}=={external.PINNED_VERSION}" in deps


def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import raises ImportError
    with pytest.raises(UserError, match=re.escape(f"pip install 'reasoning-gym=={external.PINNED_VERSION}'")):
        external.external_questions(4, seed=0)
