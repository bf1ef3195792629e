"""The CHAMP reader (selective_lm.corpora.champ): split by problem, provenance labels on the right characters,
no validation or test problem in any training row."""
from __future__ import annotations

import json

import pytest

from selective_lm.corpora.champ import FILES, LABELS, build_champ_corpora, load_champ, split_of


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("champ") / "c"
    build_champ_corpora(out, seed=1, prose_scale=0, web_scale=0.05, max_problems=40, progress=False)
    return out


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_files_manifest_and_split_by_problem(small):
    m = json.loads((small / "manifest.json").read_text())
    assert all((small / f).is_file() for f in FILES) and m["provenance_labels"] == {str(k): v for k, v in LABELS.items()}
    hq, web = _rows(small / "hq_math.jsonl"), _rows(small / "web_math.jsonl")
    assert len(hq) == 40 and m["splits"] == {s: sum(r["split"] == s for r in hq) for s in ("train", "validation", "test")}
    split = {r["problem"]: r["split"] for r in hq}
    assert all(r["split"] == split[r["problem"]] == split_of(r["problem"], 1) for r in web)  # one split per problem
    assert {r["problem"] for r in _rows(small / "fewshot_eval.jsonl")} == {p for p, s in split.items() if s == "test"}
    assert split_of("P_Combinatorics_1", 1) == split_of("P_Combinatorics_1", 1)
    assert len({split_of(p, s) for p in split for s in range(5)}) == 3
    assert m["leakage"]["max_share"] == 0 and m["leakage"]["test"]["problems"] == sum(s == "test" for s in split.values())


def test_labels_cover_the_text_from_the_annotated_first_wrong_step(small):
    problems = load_champ()
    web = _rows(small / "web_math.jsonl")
    annotated = [r for r in web if r["error"] == "first wrong step annotated"]
    assert annotated and any(r["error"] == "no mistake" for r in web)
    for r in annotated:
        (s, e, lab), = r["spans"]
        a = problems[r["problem"]]["fws_annotations"][r["source"]]
        assert lab == 1 and r["text"][s:e] == a["text"][a["start_idx"]:]  # from the first wrong step to the end
        assert r["text"][s:].startswith(a["text"][a["start_idx"]:a["end_idx"]])
        assert r["text"][:s].startswith("Problem: ") and "\nSolution: " in r["text"][:s]
    for r in web:
        if r["error"] == "no mistake":
            assert r["spans"] == []
        if r["error"] == "unannotated":
            (s, e, lab), = r["spans"]
            assert lab == 2 and r["text"][s:e].strip() and "Problem: " not in r["text"][s:e]


def test_leakage_is_found_when_planted(small, tmp_path):
    from selective_lm.corpora.champ import leakage

    problems = dict(list(load_champ().items())[:40])
    rows = {f: _rows(small / f"{f}.jsonl") for f in ("hq_math", "web_math")}
    test = next(r for r in rows["hq_math"] if r["split"] == "test")
    rows["web_math"].append({"text": "copied: " + test["text"], "split": "train"})
    assert leakage(rows, problems)["test"]["leaked"] == 1


def test_deterministic_and_cached(small, tmp_path):
    again = build_champ_corpora(tmp_path / "c", seed=1, prose_scale=0, web_scale=0.05, max_problems=40, progress=False)
    for f in FILES:
        assert (again / f).read_bytes() == (small / f).read_bytes(), f
