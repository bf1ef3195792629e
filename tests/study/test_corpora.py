"""Tests for the embedded default corpora: layout, spans, held-out split, determinism, cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from selective_lm.study import corpora
from selective_lm.study.corpora import (
    FILE_NAMES,
    OFFTOPIC_MODULES,
    PROSE_MODULES,
    PROVENANCE,
    CorporaPaths,
    build_default_corpora,
    render_module_doc,
)
from selective_lm.files import UserError, read_json, sha256_file
from selective_lm.study.mathgen import FAMILIES

SCALE = 0.02


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> CorporaPaths:
    return build_default_corpora(tmp_path_factory.mktemp("corpora") / "c", seed=3, scale=SCALE, progress=False)


def test_layout_and_manifest(built: CorporaPaths) -> None:
    m = read_json(built.manifest)
    assert m["format_version"] == 1 and m["seed"] == 3 and m["scale"] == SCALE
    assert m["python_version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    assert set(m["files"]) == set(FILE_NAMES)
    for key, info in m["files"].items():
        path = getattr(built, key)
        assert path == built.root / info["path"] and path.is_file()
        assert path.stat().st_size == info["bytes"] and sha256_file(path) == info["sha256"]
        assert len(_rows(path)) == info["documents"] > 0
    assert PROVENANCE == {0: "content", 1: "noise", 2: "offtopic"}


def test_hq_math(built: CorporaPaths) -> None:
    rows = _rows(built.hq_math)
    assert len(rows) == round(corpora.HQ_DOCS * SCALE)
    for r in rows:
        assert set(r) == {"text"}
        n = r["text"].count("Problem: ")
        assert 2 <= n <= 6 and r["text"].count("\nSolution: ") == n and r["text"].count("\nAnswer: ") == n
        assert "\n\nProblem: " in r["text"]


def test_web_spans_valid(built: CorporaPaths) -> None:
    rows = _rows(built.web_math)
    assert len(rows) == round(corpora.WEB_DOCS * SCALE)
    chars, labelled = Counter(), 0
    shares = []
    for r in rows:
        assert set(r) == {"text", "spans"}
        text, spans = r["text"], r["spans"]
        prev_end, prev_label = 0, None
        for s, e, lab in spans:
            assert isinstance(s, int) and isinstance(e, int) and lab in (1, 2)
            assert prev_end <= s < e <= len(text)
            assert not (s == prev_end and lab == prev_label)  # touching spans of one label are merged
            prev_end, prev_label = e, lab
            chars[lab] += e - s
        covered = sum(e - s for s, e, _ in spans)
        labelled += covered
        chars[0] += len(text) - covered
        shares.append(covered / len(text))
    total = sum(chars.values())
    share = labelled / total
    assert 0.35 < share < 0.7, share
    assert chars[2] > 0 and chars[1] > chars[2]
    m = read_json(built.manifest)
    assert m["noise_char_share"] == pytest.approx(share, abs=1e-5)
    assert m["web_label_chars"] == {"content": chars[0], "noise": chars[1], "offtopic": chars[2]}
    assert min(shares) < 0.1 and max(shares) > 0.75  # some pages almost clean, some mostly junk


def test_web_content_is_math_and_noise_is_diverse(built: CorporaPaths) -> None:
    rows = _rows(built.web_math)
    content, noise = [], []
    for r in rows:
        pos = 0
        for s, e, _ in r["spans"]:
            content.append(r["text"][pos:s])
            noise.append(r["text"][s:e])
            pos = e
        content.append(r["text"][pos:])
    content_text, noise_text = "".join(content), "".join(noise)
    assert content_text.count("Answer: ") > 100
    for needle in ("Posted by", "<", "https://", "&nbsp;", "\\"):
        assert needle not in content_text, needle
    kinds = ("Posted by", "<div", "https://", "Home", "\\begin", "timetable", "| ", "©", "sessionid", "OFF")
    assert sum(k in noise_text for k in kinds) >= 8
    lines = Counter(line for line in noise_text.splitlines() if len(line) > 40)
    assert lines.most_common(1)[0][1] > 3  # boilerplate repeats across pages


def test_eval_heldout_and_stratified(built: CorporaPaths) -> None:
    evals = _rows(built.fewshot_eval)
    assert len(evals) == corpora.N_EVAL == 400
    assert all(set(r) == {"family", "question", "answer"} for r in evals)
    qs = [r["question"] for r in evals]
    assert len(set(qs)) == len(qs)
    counts = Counter(r["family"] for r in evals)
    assert set(counts) == set(FAMILIES) and min(counts.values()) >= 400 // len(FAMILIES)
    assert sum(len(r["answer"]) <= 2 for r in evals) > 120  # easy items well represented
    train = "\n".join(r["text"] for r in _rows(built.hq_math) + _rows(built.web_math))
    leaked = [q for q in qs if q in train]
    assert not leaked, leaked[:5]


def test_exemplars(built: CorporaPaths) -> None:
    ex = _rows(built.fewshot_exemplars)
    assert len(ex) == 8 and len({r["family"] for r in ex}) == 8
    assert all(set(r) == {"family", "question", "solution", "answer"} and r["answer"] in r["solution"] for r in ex)
    assert not {r["question"] for r in ex} & {r["question"] for r in _rows(built.fewshot_eval)}


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
    code = ("import sys; from selective_lm.study.corpora import build_default_corpora as b; "
            f"b(sys.argv[1], seed=3, scale={SCALE}, progress=False)")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(Path(corpora.__file__).parents[1]))
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
