"""Tests for selective_lm.analysis.selection_diag."""
import numpy as np
import pytest

from selective_lm.analysis.selection_diag import (
    most_least_selected,
    provenance_shares,
    selection_html,
    split_losses,
    token_selection_rates,
)


def test_provenance_shares_hand_computed():
    sel = np.array([True, True, False, False, True, False])
    prov = np.array([0, 1, 0, 2, 0, 1], dtype=np.uint8)
    res = provenance_shares(sel, prov)
    assert res["n_selected"] == 3 and res["n_unselected"] == 3
    assert res["selected"] == pytest.approx({"content": 2 / 3, "noise": 1 / 3, "offtopic": 0.0})
    assert res["unselected"] == pytest.approx({"content": 1 / 3, "noise": 1 / 3, "offtopic": 1 / 3})
    assert res["selection_rate"] == pytest.approx({"content": 2 / 3, "noise": 0.5, "offtopic": 0.0})
    assert res["counts"]["content"] == {"total": 3, "selected": 2}


def test_provenance_shares_edge_cases():
    res = provenance_shares(np.array([True, True]), np.array([0, 0], dtype=np.uint8))
    assert res["unselected"]["content"] is None
    assert res["selection_rate"]["noise"] is None
    with pytest.raises(ValueError, match="without a label"):
        provenance_shares(np.array([True]), np.array([7], dtype=np.uint8))
    with pytest.raises(ValueError):
        provenance_shares(np.array([True, False]), np.array([0], dtype=np.uint8))


IDS = np.array([7, 7, 7, 7, 3, 3, 3, 3, 9, 5, 5])
SEL = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)


def test_token_selection_rates():
    assert token_selection_rates(IDS, SEL, min_count=3) == [(7, 4, 0.75), (3, 4, 0.25)]
    assert token_selection_rates(IDS, SEL, min_count=1) == [
        (5, 2, 1.0), (9, 1, 1.0), (7, 4, 0.75), (3, 4, 0.25)
    ]
    with pytest.raises(ValueError):
        token_selection_rates(IDS, SEL[:3])


def test_most_least_selected():
    res = most_least_selected(IDS, SEL, decode=lambda i: f"<{i}>", k=2, min_count=2)
    assert res["most"] == [
        {"token_id": 5, "token": "<5>", "count": 2, "rate": 1.0},
        {"token_id": 7, "token": "<7>", "count": 4, "rate": 0.75},
    ]
    assert [e["token_id"] for e in res["least"]] == [3, 7]


def test_selection_html_escapes_and_preserves():
    toks = ["Hello", " <script>alert(1)</script>", "\n", "world & co"]
    page = selection_html(toks, [True, False, False, True], title="Run <A>",
                          excess=[0.5, -1.0, 0.0, 2.25], provenance=[0, 1, 0, 2])
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "world &amp; co" in page
    assert "<title>Run &lt;A&gt;</title>" in page
    assert 'title="#0 excess=0.5000"' in page
    assert '<span class="t u p0" title="#2 excess=0.0000">\n</span>' in page
    assert "pre-wrap" in page
    assert '<span class="t s p0" title="#0 excess=0.5000">Hello</span>' in page
    assert "noise" in page and "offtopic" in page  # legend
    assert "2 selected" in page


def test_selection_html_plain_and_errors():
    page = selection_html(["a", "b"], [False, True], title="t")
    assert '<span class="t s">b</span>' in page and "title=\"" not in page
    with pytest.raises(ValueError):
        selection_html(["a"], [True, False], title="t")
    with pytest.raises(ValueError):
        selection_html(["a"], [True], title="t", excess=[1.0, 2.0])


def test_split_losses():
    res = split_losses(np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, False, True, False]))
    assert res == {"selected": 2.0, "n_selected": 2, "unselected": 3.0, "n_unselected": 2}
    res = split_losses(np.array([[1.0, 5.0]]), np.array([[True, True]]))
    assert res["selected"] == 3.0 and res["unselected"] is None and res["n_unselected"] == 0
    res = split_losses(np.array([1.0, np.nan, 3.0]), np.array([True, True, False]))
    assert res["selected"] == 1.0 and res["n_selected"] == 1
    with pytest.raises(ValueError):
        split_losses(np.ones(3), np.ones(2, dtype=bool))


def test_selection_html_colours_by_excess_and_boxes_the_selection():
    page = selection_html(["a", "b", "c", "sep"], [True, False, True, False], title="t",
                          excess=[2.0, -1.0, 0.0, float("nan")], colour_by_excess=True, note="from <here>")
    # full colour from the 98th percentile of |excess| (here 2 of 0, 1, 2) on; red above 0, blue below
    assert 'style="background:rgba(211,47,47,0.60)">a</span>' in page
    assert 'style="background:rgba(25,118,210,0.30)">b</span>' in page
    half = selection_html(["a", "b"], [1, 0], title="t", excess=[-0.5, 1.0], colour_by_excess=True)
    assert 'style="background:rgba(25,118,210,0.30)">a</span>' in half
    assert ".s{outline:1px solid #212121;font-weight:bold;}" in page and "<p>from &lt;here&gt;</p>" in page
    assert "3 tokens, 2 selected" in page  # NaN: no token
    plain = selection_html(["a"], [True], title="t", excess=[1.0])
    assert "style=" not in plain.split("<body>")[1]
