"""Tests for the embedded default corpora: layout, spans, problem-level splits and leakage, near-domain noise,
determinism, cache."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from selective_lm.corpora import default as corpora
from selective_lm.corpora.default import (
    FILE_NAMES,
    OFFTOPIC_MODULES,
    PROSE_MODULES,
    PROVENANCE,
    CorporaPaths,
    build_default_corpora,
    render_module_doc,
)
from selective_lm.files import UserError, read_json, sha256_file
from selective_lm.corpora.heldout import EVAL_SETS, SPLITS, ProblemSplit, extract_questions, leakage
from selective_lm.corpora.mathgen import _UNITS, FAMILIES, generate_problems, normalise_question
from selective_lm.corpora.noise import canonical_text, latexify, math_table, number_words, wrong_solution

SCALE = 0.02


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> CorporaPaths:
    return build_default_corpora(tmp_path_factory.mktemp("corpora") / "c", seed=3, scale=SCALE, progress=False)


def _content_and_labelled(row: dict) -> tuple[str, list[tuple[str, int]]]:
    """(content text with noise cut out, [(span text, label)])."""
    content, spans, pos = [], [], 0
    for s, e, lab in row["spans"]:
        content.append(row["text"][pos:s])
        spans.append((row["text"][s:e], lab))
        pos = e
    content.append(row["text"][pos:])
    return "".join(content), spans


def _blocks(text: str) -> list[str]:
    return [b for b in text.split("\n\n") if b.strip()]


def test_layout_and_manifest(built: CorporaPaths) -> None:
    m = read_json(built.manifest)
    assert m["format_version"] == corpora.FORMAT_VERSION == 2 and m["seed"] == 3 and m["scale"] == SCALE
    assert m["python_version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    assert set(m["files"]) == set(FILE_NAMES)
    for key, info in m["files"].items():
        path = getattr(built, key)
        assert path == built.root / info["path"] and path.is_file()
        assert path.stat().st_size == info["bytes"] and sha256_file(path) == info["sha256"]
        assert len(_rows(path)) == info["documents"] > 0
    assert {"splits", "split_shares", "leakage", "provenance_labels", "noise_char_share",
            "near_domain_char_share", "web_label_chars"} <= set(m)
    assert m["split_shares"] == {"train": 0.84, "validation": 0.08, "test": 0.08}


def test_label_names_agree() -> None:
    """One table of provenance names: corpora's spans, `slm prepare`'s manifest and span-name parsing."""
    from selective_lm.data import PROVENANCE_LABELS
    from selective_lm.sources import CONTEXT_LABEL, LABEL_NAMES

    assert PROVENANCE == {0: "content", 1: "noise", 2: "offtopic", 3: "wrong_solution", 4: "near_duplicate",
                          5: "perturbed_table", 6: "other_notation"}
    assert PROVENANCE_LABELS == {str(k): v for k, v in PROVENANCE.items()}
    assert LABEL_NAMES == {**{v: k for k, v in PROVENANCE.items()}, "context": CONTEXT_LABEL}  # context: reserved


def test_hq_math(built: CorporaPaths) -> None:
    rows = _rows(built.hq_math)
    n_eval = round(corpora.HQ_DOCS * SCALE * 0.08)
    assert sum(r["split"] == "train" for r in rows) == round(corpora.HQ_DOCS * SCALE) - 2 * n_eval
    tables = 0
    for r in rows:
        assert set(r) == {"text", "split"} and r["split"] in SPLITS
        n = r["text"].count("Problem: ")
        assert 2 <= n <= 6 and r["text"].count("\nSolution: ") == n and r["text"].count("\nAnswer: ") == n
        assert "\n\nProblem: " in r["text"]
        tables += len(_blocks(r["text"])) > n
    assert 0 < tables < 0.3 * len(rows)


@pytest.mark.parametrize("corpus", ["hq_math", "web_math"])
def test_eval_splits_are_big_enough(built: CorporaPaths, corpus: str) -> None:
    """Validation and test: 8% of the documents each, and at least EVAL_MIN_CHARS characters (the floor
    that gives --quick its 24 windows of 257 tokens at up to 3.3 characters a token)."""
    from selective_lm.study.config import QUICK

    assert corpora.EVAL_MIN_CHARS >= QUICK["eval_windows_target"] * 257 * 3.3
    rows = _rows(getattr(built, corpus))
    stats = read_json(built.manifest)["splits"][corpus]
    n = round((corpora.HQ_DOCS if corpus == "hq_math" else corpora.WEB_DOCS) * SCALE)
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        assert stats[split] == {"documents": len(mine), "chars": sum(len(r["text"]) for r in mine)}
        if split != "train":
            assert len(mine) >= round(0.08 * n) and stats[split]["chars"] >= corpora.EVAL_MIN_CHARS


def test_web_spans_valid(built: CorporaPaths) -> None:
    rows = _rows(built.web_math)
    assert len(rows) >= round(corpora.WEB_DOCS * SCALE)
    chars, shares = Counter(), []
    for r in rows:
        assert set(r) == {"text", "spans", "split"} and r["split"] in SPLITS
        text, spans = r["text"], r["spans"]
        prev_end, prev_label = 0, None
        for s, e, lab in spans:
            assert isinstance(s, int) and isinstance(e, int) and lab in range(1, 7)
            assert prev_end <= s < e <= len(text)
            assert not (s == prev_end and lab == prev_label)  # touching spans of one label are merged
            prev_end, prev_label = e, lab
            chars[lab] += e - s
        covered = sum(e - s for s, e, _ in spans)
        chars[0] += len(text) - covered
        shares.append(covered / len(text))
    total = sum(chars.values())
    share = 1 - chars[0] / total
    assert 0.4 < share < 0.65, share
    near = sum(chars[k] for k in (3, 4, 5, 6)) / total
    assert 0.08 < near < 0.25, near
    assert all(chars[k] / total > 0.01 for k in (3, 4, 5, 6)), chars
    assert chars[2] > 0 and chars[1] > chars[2]
    m = read_json(built.manifest)
    assert m["noise_char_share"] == pytest.approx(share, abs=1e-5)
    assert m["near_domain_char_share"] == pytest.approx(near, abs=1e-5)
    assert m["web_label_chars"] == {PROVENANCE[k]: chars[k] for k in range(7)}
    assert min(shares) < 0.1 and max(shares) > 0.75  # some pages almost clean, some mostly junk


def test_web_content_is_math_and_noise_is_diverse(built: CorporaPaths) -> None:
    content, noise = [], []
    for r in _rows(built.web_math):
        c, spans = _content_and_labelled(r)
        content.append(c)
        noise += [t for t, lab in spans if lab in (1, 2)]
    content_text, noise_text = "".join(content), "".join(noise)
    assert content_text.count("Answer: ") > 100
    for needle in ("Posted by", "<", "https://", "&nbsp;", "\\", "$", "Exercise ", "Short answer"):
        assert needle not in content_text, needle
    kinds = ("Posted by", "<div", "https://", "Home", "\\begin", "timetable", "| ", "©", "sessionid", "OFF")
    assert sum(k in noise_text for k in kinds) >= 8
    lines = Counter(line for line in noise_text.splitlines() if len(line) > 40)
    assert lines.most_common(1)[0][1] > 3  # boilerplate repeats across pages


# ------------------------------------------------------------------ problem-level splits and leakage
def test_documents_hold_problems_of_their_split_only(built: CorporaPaths) -> None:
    split_of = ProblemSplit(3)
    for corpus in ("hq_math", "web_math"):
        per_split = Counter()
        for r in _rows(getattr(built, corpus)):
            qs = extract_questions(r["text"])
            assert qs or corpus == "web_math"  # wholly off-topic pages hold no problem
            assert {split_of(q) for q in qs} <= {r["split"]}, (corpus, r["split"], qs)
            per_split[r["split"]] += len(qs)
        assert all(per_split[s] > 20 for s in SPLITS), per_split


def test_split_assignment_is_by_normalised_question() -> None:
    split_of = ProblemSplit(3)
    assert split_of("What is 3 + 4?") == split_of("  what IS 3 +   4 ") == split_of("What is 3 + 4.")
    qs = {p.question for p in generate_problems(20000, seed=1)}
    shares = Counter(split_of(q) for q in qs)
    assert abs(shares["train"] / len(qs) - 0.84) < 0.03 and abs(shares["test"] / len(qs) - 0.08) < 0.02
    assert Counter(ProblemSplit(4)(q) for q in qs) != shares  # the key depends on the seed


def test_eval_heldout_and_stratified(built: CorporaPaths) -> None:
    evals = _rows(built.fewshot_eval)
    assert len(evals) == corpora.N_EVAL == 400
    assert all(set(r) == {"family", "question", "answer"} for r in evals)
    qs = [r["question"] for r in evals]
    assert len({normalise_question(q) for q in qs}) == len(qs)
    assert {ProblemSplit(3)(q) for q in qs} == {"test"}
    counts = Counter(r["family"] for r in evals)
    assert set(counts) == set(FAMILIES) and min(counts.values()) >= 400 // len(FAMILIES)
    assert sum(len(r["answer"]) <= 2 for r in evals) > 120  # easy items well represented
    train = "\n".join(r["text"] for r in _rows(built.hq_math) + _rows(built.web_math) + _rows(built.prose)
                      if r.get("split", "train") == "train")
    leaked = [q for q in qs if q in train]
    assert not leaked, leaked[:5]


def test_exemplars(built: CorporaPaths) -> None:
    ex = _rows(built.fewshot_exemplars)
    assert len(ex) == 8 and len({r["family"] for r in ex}) == 8
    assert all(set(r) == {"family", "question", "solution", "answer"} and r["answer"] in r["solution"] for r in ex)
    assert {ProblemSplit(3)(r["question"]) for r in ex} == {"train"}


def test_leakage_is_zero(built: CorporaPaths) -> None:
    leak = read_json(built.manifest)["leakage"]
    assert leak == leakage(built.root)
    assert set(leak) == set(EVAL_SETS) | {"max_share", "self_check"}
    for name in EVAL_SETS:
        assert leak[name]["problems"] > 20 and leak[name]["leaked"] == 0 and leak[name]["share"] == 0.0, name
        assert leak[name]["instance_leaked"] == 0, name  # not even reworded: the split is by template instance
    assert leak["max_share"] == 0.0 and leak["self_check"] == 1.0


def test_planted_leaks_are_found(built: CorporaPaths, tmp_path: Path) -> None:
    """A held-out question copied into training text in prose, forum and LaTeX layouts is counted."""
    root = tmp_path / "leaky"
    shutil.copytree(built.root, root)
    hq, web, prose = (_rows(root / FILE_NAMES[k]) for k in ("hq_math", "web_math", "prose"))
    eval_q = _rows(root / FILE_NAMES["fewshot_eval"])[5]["question"]
    hq_test = next(r for r in hq if r["split"] == "test")["text"].split("\n")[0][len("Problem: "):]
    web_val = next(q for r in web if r["split"] == "validation" for q in re.findall(r"^Problem: (.*\d.*/.*)$",
                                                                                     r["text"], re.M))
    prose[0]["text"] = prose[0]["text"][:200] + f" So. {eval_q} Yes.\n" + prose[0]["text"][200:]
    train_web = next(r for r in web if r["split"] == "train")
    train_web["text"] += f"some chatter\n<p>Re: {hq_test}&nbsp;</p>\n"
    train_hq = next(r for r in hq if r["split"] == "train")
    train_hq["text"] += "\nExample: " + latexify(web_val) + "\n"
    for key, rows in (("hq_math", hq), ("web_math", web), ("prose", prose)):
        (root / FILE_NAMES[key]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    leak = leakage(root)
    assert leak["fewshot_eval"]["leaked"] >= 1 and leak["hq_math/test"]["leaked"] >= 1
    assert leak["web_math/validation"]["leaked"] >= 1 and leak["max_share"] > 0
    assert leak["self_check"] == 1.0


def test_reworded_leak_is_an_instance_leak(built: CorporaPaths, tmp_path: Path) -> None:
    """A held-out problem's numbers in another wording in training text: no verbatim leak, but an
    instance leak; and every wording of one instance goes to one split."""
    from selective_lm.corpora.heldout import ProblemSplit, instance_key

    split = ProblemSplit(3)
    assert instance_key("What is 7 * 8?") == instance_key("Multiply 8 by 7.") == "#7,8"
    assert split("What is 7 * 8?") == split("Multiply 8 by 7.") == split("what is 8 times 7 ?")
    root = tmp_path / "reworded"
    shutil.copytree(built.root, root)
    hq = _rows(root / FILE_NAMES["hq_math"])
    test_q = next(q for r in hq if r["split"] == "test" for q in re.findall(r"^Problem: (What is \d+ \* \d+\?)$",
                                                                               r["text"], re.M))
    a, b = re.findall(r"\d+", test_q)
    train_hq = next(r for r in hq if r["split"] == "train")
    train_hq["text"] += f"\nProblem: Multiply {b} by {a}.\nSolution: {a} * {b} = {int(a) * int(b)}.\nAnswer: {int(a) * int(b)}\n"
    (root / FILE_NAMES["hq_math"]).write_text("".join(json.dumps(r) + "\n" for r in hq), encoding="utf-8")
    leak = leakage(root)
    assert leak["hq_math/test"]["leaked"] == 0 and leak["hq_math/test"]["instance_leaked"] >= 1
    assert leak["max_share"] > 0


# ------------------------------------------------------------------ near-domain noise
_SIMPLE = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")


def _labelled_blocks(built: CorporaPaths, label: int, with_split: bool = False) -> list:
    """The blocks of one label (touching blocks of a label share a span: split at blank lines)."""
    return [(b + "\n", r["split"]) if with_split else b + "\n" for r in _rows(built.web_math)
            for t, lab in _content_and_labelled(r)[1] if lab == label for b in _blocks(t)]


def test_wrong_solutions_are_wrong() -> None:
    rng = random.Random(0)
    for p in generate_problems(3000, seed=5):
        text = wrong_solution(rng, p)
        m = re.fullmatch(r"Problem: (.+)\nSolution: (.+)\nAnswer: (.+)\n", text)
        assert m and m.group(1) == p.question, text
        stated = m.group(3)
        assert stated != p.answer, (p, text)
        if re.fullmatch(r"-?\d+(/\d+)?", stated) and re.fullmatch(r"-?\d+(/\d+)?", p.answer):
            assert Fraction(stated) != Fraction(p.answer), (p, text)


def test_wrong_solutions_in_corpus_are_wrong_and_content_right(built: CorporaPaths) -> None:
    blocks = _labelled_blocks(built, 3)
    assert len(blocks) > 20 and all(re.fullmatch(r"Problem: .+\nSolution: .+\nAnswer: .+\n", b) for b in blocks)
    content = "".join(_content_and_labelled(r)[0] for r in _rows(built.web_math)) + "".join(
        r["text"] + "\n" for r in _rows(built.hq_math))
    truth = dict(re.findall(r"^Problem: (.+)\n.*\nAnswer: (.+)$", content, re.M))  # the same question as content
    checked = 0
    for b in blocks:
        q, stated = re.fullmatch(r"Problem: (.+)\nSolution: .+\nAnswer: (.+)\n", b).groups()
        if m := _SIMPLE.fullmatch(q):
            assert int(stated) != eval(f"{m.group(1)} {m.group(2)} {m.group(3)}"), b  # noqa: S307
            checked += 1
        if q in truth:
            assert stated != truth[q], b
            checked += 1
    assert checked >= 3
    right = re.findall(r"^Problem: What is (\d+) ([-+*]) (\d+)\?\n.*\nAnswer: (-?\d+)$", content, re.M)
    assert len(right) > 10 and all(int(a) == eval(f"{x} {op} {y}") for x, op, y, a in right)  # noqa: S307


def test_near_duplicates_repeat_an_earlier_problem_with_one_number_changed(built: CorporaPaths) -> None:
    rows = _rows(built.web_math)
    blocks = _labelled_blocks(built, 4, with_split=True)
    assert len(blocks) > 10
    split_of, found = ProblemSplit(3), 0
    content = {s: "".join(_content_and_labelled(r)[0] for r in rows if r["split"] == s) for s in SPLITS}
    for b, split in blocks:
        m = re.fullmatch(r"Problem: (.+)\nSolution: (.+)\nAnswer: (.+)\n", b)
        assert m and split_of(m.group(1)) == split
        found += m.group(2) in content[split]  # the solution of an earlier problem, verbatim
    assert found >= 0.9 * len(blocks)


def _table_entries(text: str) -> list[bool]:
    """For each entry line of the numeric tables in ``text``: is it right?"""
    units = {name: f for one, many, small, f in _UNITS for name in (one, many)}
    out = []
    for line in text.splitlines():
        if m := re.fullmatch(r"(\d+) ([*+]) (\d+) = (\d+)", line):
            a, b = int(m.group(1)), int(m.group(3))
            out.append(int(m.group(4)) == (a * b if m.group(2) == "*" else a + b))
        elif m := re.fullmatch(r"\| (\d+) \| (\d+) \|", line):
            out.append(int(m.group(2)) == int(m.group(1)) ** 2)
        elif (m := re.fullmatch(r"(\d+) ([a-z]+) = (\d+) [a-z]+", line)) and m.group(2) in units:
            out.append(int(m.group(3)) == int(m.group(1)) * units[m.group(2)])
    return out


def test_perturbed_tables_are_wrong_and_content_tables_right(built: CorporaPaths) -> None:
    perturbed = _labelled_blocks(built, 5)
    assert len(perturbed) > 10
    for t in perturbed:
        entries = _table_entries(t)
        assert len(entries) >= 8 and 1 <= entries.count(False) <= 3, t
    rng = random.Random(1)
    for _ in range(300):
        assert all(_table_entries(math_table(rng)))
        assert _table_entries(math_table(rng, 2)).count(False) == 2
    content = [_content_and_labelled(r)[0] for r in _rows(built.web_math)] + [
        r["text"] for r in _rows(built.hq_math)]
    entries = [e for c in content for e in _table_entries(c)]
    assert len(entries) > 80 and all(entries)


def test_other_notation_is_correct_math(built: CorporaPaths) -> None:
    blocks = _labelled_blocks(built, 6)
    assert len(blocks) > 10
    styles = Counter("words" if b.startswith("Q. ") else "latex" if "$" in b else "layout" for b in blocks)
    assert set(styles) == {"words", "latex", "layout"}, styles
    for b in blocks:
        plain = canonical_text(b)
        if m := re.fullmatch(r"Q\. What is (\d+) (plus|minus|times|divided by) (\d+)\?\n"
                             r"A\. (\d+) (?:plus|minus|times|divided by) (\d+) equals (\d+)\.\n", plain):
            x, op, y, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(6))
            assert r == {"plus": x + y, "minus": x - y, "times": x * y, "divided by": x / y}[op], b
        elif m := _SIMPLE.search(plain):
            answer = re.search(r"(?:Answer|Short answer): (-?\d+)", plain).group(1)
            assert int(answer) == eval(f"{m.group(1)} {m.group(2)} {m.group(3)}"), b  # noqa: S307
    for p in generate_problems(3000, seed=6):  # LaTeX is a notation only: canonical_text undoes it
        for t in (p.question, p.solution):
            assert canonical_text(latexify(t)) == canonical_text(t), t
    assert canonical_text("Q. What is fifty-six divided by Seven?") == "Q. What is 56 divided by 7?"
    assert [number_words(n) for n in (0, 13, 40, 56)] == ["zero", "thirteen", "forty", "fifty-six"]


def test_prose(built: CorporaPaths) -> None:
    rows = _rows(built.prose)
    texts = [r["text"] for r in rows]
    assert all(set(r) == {"text"} and r["text"].strip() for r in rows)
    total = sum(map(len, texts))
    assert 0.7 * corpora.PROSE_CHARS * SCALE < total < 1.3 * corpora.PROSE_CHARS * SCALE
    math_chars = sum(len(t) for t in texts if " = " in t and "Python Library" not in t and "statement" not in t)
    assert 0.02 < math_chars / total < 0.2
    joined = "".join(texts)
    assert "\b" not in joined and " at 0x" not in joined


def test_allowlists_disjoint_and_safe() -> None:
    assert not set(PROSE_MODULES) & set(OFFTOPIC_MODULES)
    for bad in ("antigravity", "this", "idlelib", "tkinter", "turtle", "webbrowser"):
        assert bad not in PROSE_MODULES + OFFTOPIC_MODULES
        with pytest.raises(ValueError):
            render_module_doc(bad)
    doc = render_module_doc("fractions")
    assert doc.startswith("Python Library Documentation") and "class Fraction" in doc
    assert "FILE" not in doc.splitlines() and "MODULE REFERENCE" not in doc


def test_deterministic(built: CorporaPaths, tmp_path: Path) -> None:
    again = build_default_corpora(tmp_path / "again", seed=3, scale=SCALE, progress=False)
    for name in list(FILE_NAMES.values()) + ["manifest.json"]:
        assert (built.root / name).read_bytes() == (again.root / name).read_bytes(), name
    other = build_default_corpora(tmp_path / "other", seed=4, scale=SCALE, progress=False)
    assert other.hq_math.read_bytes() != built.hq_math.read_bytes()


def test_deterministic_across_hash_seeds(built: CorporaPaths, tmp_path: Path) -> None:
    code = ("import sys; from selective_lm.corpora.default import build_default_corpora as b; "
            f"b(sys.argv[1], seed=3, scale={SCALE}, progress=False)")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(Path(corpora.__file__).parents[2]))
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "sub")], check=True, env=env)
    assert read_json(tmp_path / "sub" / "manifest.json")["files"] == read_json(built.manifest)["files"]


def test_cache_and_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "c"
    paths = build_default_corpora(root, seed=0, scale=0.01, progress=False)
    stamp = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.iterdir()}
    again = build_default_corpora(root, seed=0, scale=0.01, progress=False)
    assert again == paths
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.iterdir()} == stamp
    old = paths.hq_math.read_bytes()
    build_default_corpora(root, seed=0, scale=0.01, overwrite=True, progress=False)
    new = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.iterdir()}
    assert all(new[name] != stamp[name] for name in stamp)
    assert paths.hq_math.read_bytes() == old
    # a damaged file (size mismatch) or other arguments regenerate
    paths.web_math.write_text("truncated\n", encoding="utf-8")
    build_default_corpora(root, seed=0, scale=0.01, progress=False)
    assert paths.web_math.stat().st_size == read_json(paths.manifest)["files"]["web_math"]["bytes"] > 100
    build_default_corpora(root, seed=0, scale=0.012, progress=False)
    assert read_json(paths.manifest)["scale"] == 0.012


def test_bad_scale(tmp_path: Path) -> None:
    for bad in (0, -1, float("nan"), "1", True):
        with pytest.raises(UserError):
            build_default_corpora(tmp_path / "x", scale=bad, progress=False)


def test_slm_corpora_writes_the_default_without_the_study(tmp_path: Path) -> None:
    """`slm corpora` is the generators' own command: the files `slm prepare` reads, external questions
    that repeat none of ours, and bad input refused in one line."""
    from selective_lm.cli import main
    from selective_lm.corpora.default import own_questions
    from selective_lm.corpora.external import normalize_question
    from selective_lm.data import prepare
    from selective_lm.config import PrepareConfig

    out = tmp_path / "c"
    assert main(["corpora", "--out", str(out), "--scale", "0.01", "--external", "6", "--no-progress"]) == 0
    m = read_json(out / "manifest.json")
    assert m["scale"] == 0.01 and m["leakage"]["max_share"] == 0
    ext = [json.loads(line) for line in (out / "fewshot_external.jsonl").read_text().splitlines()]
    assert len(ext) == 6 and not {normalize_question(r["question"]) for r in ext} & own_questions(out)
    ds = prepare(PrepareConfig(inputs=[str(out / "web_math.jsonl")], out=str(tmp_path / "ds"), vocab_size=300,
                               seq_len=32, progress=False))
    assert ds["splits"]["train"]["windows"] > 0 and ds["splits"]["test"]["windows"] > 0


def test_slm_corpora_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    from selective_lm.cli import main

    assert main(["corpora", "--out", str(tmp_path / "c"), "--scale", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scale must be in (0, 100]" in err[0]
    assert main(["corpora"]) == 2 and "pass --out DIR" in capsys.readouterr().err
