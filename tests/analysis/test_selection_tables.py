"""SelectionCounter (selective_lm.analysis.selection_tables) against counting by hand."""
from collections import Counter

import numpy as np
import pytest

from selective_lm.analysis.selection_tables import SelectionCounter, selection_markdown
from selective_lm.tokenclass import CLASSES


def test_counts_equal_counting_by_hand_in_any_number_of_chunks():
    rng = np.random.default_rng(0)
    vocab = 30
    table = rng.integers(1, len(CLASSES), size=vocab).astype(np.uint8)
    ids = rng.integers(0, vocab, size=5000)
    prov = rng.choice([0, 2, 7], size=5000)  # labels need not start at 0 or be contiguous
    sel = rng.random(5000) < np.where(prov == 2, 0.2, 0.7)
    ref = rng.normal(3, 1, size=5000)
    c = SelectionCounter(vocab, table)
    for s in range(0, 5000, 1234):
        c.add(ids[s:s + 1234], sel[s:s + 1234], prov[s:s + 1234], ref[s:s + 1234])
    res = c.result({0: "zero", 2: "two", 7: "seven", 9: "unused"}, lambda i: f"<{i}>", top=5, min_count=5)
    n, k = 5000, int(sel.sum())
    assert res["tokens"] == n and res["selected"] == k
    for name, code in (("zero", 0), ("two", 2), ("seven", 7)):
        m = prov == code
        row = res["labels"][name]
        assert (row["tokens"], row["selected"]) == (int(m.sum()), int(sel[m].sum()))
        assert row["selection_rate"] == pytest.approx(sel[m].mean()) and row["stream_share"] == pytest.approx(m.mean())
        assert row["share_of_selected"] == pytest.approx(sel[m].sum() / k) and row["ref_loss"] == pytest.approx(ref[m].mean())
    assert res["labels"]["unused"]["tokens"] == 0 and res["labels"]["unused"]["selection_rate"] is None
    for name, row in res["classes"].items():
        m = table[ids] == CLASSES.index(name)
        assert (row["tokens"], row["selected"]) == (int(m.sum()), int(sel[m].sum()))
    counts, chosen = Counter(ids.tolist()), Counter(ids[sel].tolist())
    gap = {i: chosen[i] - counts[i] * k / n for i in counts if counts[i] >= 5}
    over = sorted(gap, key=lambda i: (-gap[i], i))[:5]
    under = sorted(gap, key=lambda i: (gap[i], i))[:5]
    assert [e["token_id"] for e in res["over_selected"]] == over
    assert [e["token_id"] for e in res["under_selected"]] == under
    e = res["over_selected"][0]
    assert e["token"] == f"<{e['token_id']}>" and e["count"] == counts[e["token_id"]]
    assert e["stream_share"] == pytest.approx(counts[e["token_id"]] / n)


def test_without_provenance_or_scores_and_markdown():
    c = SelectionCounter(4, np.array([4, 4, 2, 1], np.uint8))
    c.add(np.array([0, 1, 2, 2, 3, 0]), np.array([1, 1, 0, 0, 1, 1], bool))
    res = c.result(None, str, top=2, min_count=1)
    assert "labels" not in res and res["classes"]["markup"]["selection_rate"] == 0
    assert res["classes"]["letters"]["ref_loss"] is None
    md = selection_markdown({**res, "run": "r", "steps": 1, "context_targets": 2})
    assert "| token class |" in md and "| markup | 2 |" in md and "2 context-only targets" in md
    with pytest.raises(ValueError, match="shapes differ"):
        c.add(np.array([0, 1]), np.array([True]))
