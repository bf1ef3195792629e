"""Tests for selective_lm.study.report / plots and the `slm analyze` subcommands on a synthetic v2 study."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from synthetic_study import build_study

from selective_lm.analyze import NAMES, add_analyze_parser, run_analyze
from selective_lm.files import UserError
from selective_lm.study.collect import collect
from selective_lm.study.plots import CAPTIONS
from selective_lm.study.report import SECTIONS, render, write_report

PLOTS = {"loss_target", "loss_noisy", "accuracy", "selected_loss", "accuracy_vs_loss", "efficiency", "overlap",
         "noise_kinds", "noise_share", "dynamics", "cosine"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm")
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def analyze(*argv: str) -> dict:
    return run_analyze(_parser().parse_args(["analyze", *map(str, argv)]))


@pytest.fixture(scope="module")
def written(v2_study):
    return write_report(v2_study, writer="slm study")


def test_report_sections_in_order_and_plots(written):
    md = written.read_text(encoding="utf-8")
    assert md.startswith("# ") and "Written by `slm study`" in md and "Smoke test" not in md
    pos = [md.index(s) for s in SECTIONS]
    assert pos == sorted(pos)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(x).stem for x in links} == PLOTS
    for link in links:
        f = written.parent / link
        assert not Path(link).is_absolute() and f.read_bytes()[:4] == b"\x89PNG"
        assert f"_{CAPTIONS[Path(link).stem]}_" in md  # a caption under every plot
    assert "[selection.html](selection.html)" in md
    verdicts = md[md.index("## Verdicts"):md.index("## Headline")]
    assert "✅ **(a) SLM beats CLM at equal tokens — test target loss**" in verdicts
    assert "(a) SLM beats CLM at equal tokens — own multiple-choice accuracy" in verdicts
    assert "(a) SLM beats CLM at equal tokens — external gold-answer NLL" in verdicts
    assert "p = " in verdicts and "Hedges' g" in verdicts and "n seeds 3/3" in verdicts
    head = md[md.index("## Headline"):md.index("## Perplexity")]
    rows = [line.split(" | ")[0].strip("| ") for line in head.splitlines() if line.startswith("| ")][1:]
    assert rows[:4] == ["reference", "clm", "hq", "content"] and any(r.startswith("slm-topk") for r in rows)
    assert "(n=360)" in head and "±" in head  # 120 multiple-choice questions × 3 seeds
    appendix = md[md.index("## Appendix"):]
    assert "**total**" in appendix and "**6.0**" in appendix and md.count("### Configuration") == 1
    assert "observed loss at the first → last checkpoint" in md
    assert "units of the selection set's excess-loss std" in md
    res = json.loads((written.parent / "results.json").read_text())
    assert res["written_by"] == "slm study" and res["claims"][0]["verdict"] == "holds"


def test_selection_html_counts_real_tokens(written):
    page = (written.parent / "selection.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "excess=nan" not in page
    summary = re.search(r"<p>(\d+) tokens, (\d+) selected \(([\d.]+)%\)", page)
    n, k = int(summary.group(1)), int(summary.group(2))
    assert n == 4 * 16 and k == round(0.6 * n)  # 4 windows of 16 tokens, top-k at 0.6; no separator lines
    assert f"{k / n:.1%} of {n} test tokens selected" in page


def test_quick_label_and_failed_claims(tmp_path):
    res = collect(build_study(tmp_path, quick=True, slm_better=False, ratios=(0.6,), strategies=("topk",),
                              checkpoints=4))
    md = render(res, {}, None)
    assert "Smoke test (`--quick`)" in md.split("## Summary")[0]
    assert "Written by `slm analyze report`" in md
    assert "❌ **(a) SLM beats CLM at equal tokens — test target loss**" in md and "**Against the paper**" in md


def test_accuracy_floor_is_stated(tmp_path):
    md = render(collect(build_study(tmp_path, acc_floor=True, ratios=(0.6,), strategies=("topk",), checkpoints=4)),
                {}, None)
    assert "| own exact match | ⚪ at floor: not used | CLM's accuracy is at floor" in md
    assert "own exact match" not in md[md.index("## Verdicts"):md.index("## Headline")]


def test_multiple_choice_at_chance_is_not_used_for_claims(tmp_path):
    res = collect(build_study(tmp_path, mc_chance_level=True, ratios=(0.6,), strategies=("topk",), checkpoints=4))
    status = {d["key"]: d["status"] for d in res["downstream"]}
    assert status["own_mc_acc"] == status["ext_mc_acc"] == "at chance" and status["own_answer_nll"] == "usable"
    assert not [c for c in res["claims"] if "multiple-choice" in c["metric"]]
    md = render(res, {}, None)
    assert "⚪ at chance: not used" in md and "not used for claims: own multiple-choice accuracy" in md


def test_analyze_help_lists_names(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["analyze", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


def test_analyze_report(v2_study, written, monkeypatch):
    calls = []
    monkeypatch.setattr("selective_lm.study.report.write_report", lambda d: calls.append(d) or written)
    cli = analyze("report", "--study", v2_study)
    assert calls == [v2_study] and Path(cli["report"]) == written and len(cli["plots"]) == len(PLOTS)


@pytest.mark.parametrize("name", ["perplexity", "efficiency", "dynamics", "buckets", "selected-loss", "cosine",
                                  "selection"])
def test_analyze_on_study(v2_study, name, tmp_path, capsys):
    out = tmp_path / f"{name}.json"
    res = analyze(name, "--study", v2_study, "--out", out)
    assert json.loads(out.read_text()) == res
    assert json.loads(capsys.readouterr().out) == res
    assert res and "error" not in res


def test_analyze_arbitrary_inputs(v2_study):
    ev = v2_study / "seed-0" / "evals"
    ref = ev / "reference/step_final/test.noisy.losses.bin"
    dump = ev / "clm-s0/step_000100/test.noisy.losses.bin"
    sel = analyze("selected-loss", "--reference", ref, "--losses", dump, "--ratio", "0.6")
    study = analyze("selected-loss", "--study", v2_study)["ratios"]["0.6"]["runs"]["clm-s0"][-1]
    assert sel["ratios"]["0.6"][str(dump)]["selected"] == pytest.approx(study["selected"])
    runs = v2_study / "seed-0" / "runs"
    shares = analyze("selection", "--runs", runs / "topk-r0.6-s0")
    assert shares["runs"][str(runs / "topk-r0.6-s0")]["noise_share_all"]["mean"] == pytest.approx(0.3)
    with pytest.raises(UserError, match="needs --study"):
        analyze("report")
    with pytest.raises(UserError, match="index.json"):
        analyze("dynamics", "--study", v2_study / "nope")
