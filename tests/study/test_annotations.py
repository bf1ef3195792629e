"""The document filter on annotated errors (selective_lm.study.annotations): AUC by brute force."""
from __future__ import annotations

import json
import random

import pytest
from synthetic_study import build_study

from selective_lm.files import read_json, write_json
from selective_lm.study import stats
from selective_lm.study.annotations import CLEAN, ERROR, section_filter
from selective_lm.study.results import StudyResults


def test_filter_auc_equals_the_share_of_error_clean_pairs_ranked_right(tmp_path):
    study = build_study(tmp_path, seeds=(0, 1, 2), ratios=(0.6,), strategies=("topk",), checkpoints=2)
    index = read_json(study / "index.json")
    rng = random.Random(0)
    want = {}
    for s in (0, 1, 2):
        d = study / f"seed-{s}" / "filter" / "web_math"
        d.mkdir(parents=True)
        rows = ([{"error": ERROR, "slm_doc_score": rng.gauss(2.2, 0.3)} for _ in range(12)]
                + [{"error": CLEAN, "slm_doc_score": rng.gauss(2.0, 0.3)} for _ in range(7)]
                + [{"error": "unannotated", "slm_doc_score": 9.0}, {"error": ERROR, "slm_doc_score": None}])
        (d / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        index["pipelines"][str(s)]["filter"] = str(d)
        err = [r["slm_doc_score"] for r in rows if r["error"] == ERROR and r["slm_doc_score"] is not None]
        ok = [r["slm_doc_score"] for r in rows if r["error"] == CLEAN]
        want[str(s)] = sum((e > c) + 0.5 * (e == c) for e in err for c in ok) / (len(err) * len(ok))
    write_json(study / "index.json", index)
    sec = section_filter(StudyResults(study))
    for s, auc in want.items():
        assert sec["seeds"][s]["auc"] == pytest.approx(auc) and sec["seeds"][s]["n_error"] == 12
        assert sec["seeds"][s]["n_clean"] == 7 and 0 < sec["seeds"][s]["p"] < 1
    assert sec["auc"]["mean"] == pytest.approx(sum(want.values()) / 3) and sec["auc"]["null"] == 0.5
    assert sec["auc"]["verdict"] in (stats.HOLDS, stats.NOT_SIG, stats.FAILS)


def test_no_filter_section_without_annotations(v2_study):
    assert section_filter(StudyResults(v2_study)) == {}
