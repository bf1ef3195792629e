"""Tests for selective_lm.study.report and the `slm analyze` subcommands on a synthetic study."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from synthetic_study import build_study

from selective_lm.analysis.cli import NAMES, add_analyze_parser, run_analyze
from selective_lm.study.collect import collect
from selective_lm.evaluate import dump_token_losses
from selective_lm.files import UserError
from selective_lm.study.report import render, write_report

SECTIONS = ("## Configuration", "## Results", "## Paper's claims", "## Perplexity", "## Downstream accuracy",
            "## Data efficiency", "## Token loss dynamics", "## Bucket transitions",
            "## Selected vs unselected token loss", "## Update-direction cosine similarity", "## Selection diagnostics")
PLOTS = {"loss_target", "loss_noisy", "accuracy", "selected_loss", "accuracy_vs_loss", "dynamics", "cosine",
         "noise_share"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_study(tmp_path_factory.mktemp("better"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm")
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def analyze(*argv: str) -> dict:
    return run_analyze(_parser().parse_args(["analyze", *map(str, argv)]))


def test_write_report(study, monkeypatch):
    calls = []
    monkeypatch.setattr("selective_lm.study.report.write_report", lambda d: calls.append(d) or write_report(d))
    cli = analyze("report", "--study", study)  # `slm analyze report` = write_report
    path = Path(cli["report"])
    assert calls == [study] and path == study / "report" / "report.md" and len(cli["plots"]) == len(PLOTS)
    md = path.read_text(encoding="utf-8")
    assert md.startswith("# ")
    pos = [md.index(s) for s in SECTIONS]
    assert pos == sorted(pos)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(x).stem for x in links} == PLOTS
    for link in links:
        assert not Path(link).is_absolute() and (path.parent / link).is_file()
        assert (path.parent / link).read_bytes()[:4] == b"\x89PNG"
    assert "[selection.html](selection.html)" in md and (path.parent / "selection.html").is_file()
    res = json.loads((path.parent / "results.json").read_text())
    assert res["claims"][0]["holds"] is True
    assert "✅ holds: **SLM beats CLM on target-domain quality at equal tokens**" in md
    assert "paper (Rho-1 §2.1)" in md and "11.0%" in md
    assert "| slm-topk-0.6 | 1 |" in md and "Seeds: 0 (1 seed; single seed" in md
    assert "Base model: `tiny`" in md and "Training: full-parameter" in md


def test_report_says_plainly_when_claims_fail(tmp_path):
    md = render(collect(build_study(tmp_path, slm_better=False, seeds=(0, 1), ratios=(0.6,))), {}, None)
    assert "❌ does not hold: **SLM beats CLM on target-domain quality at equal tokens**" in md
    assert "do **not** hold" in md and "SLM does not beat CLM here" in md
    assert " ± " in md  # std over two seeds


def test_analyze_help_lists_names(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["analyze", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)
    assert set(NAMES) == {"report", "perplexity", "efficiency", "dynamics", "buckets", "selected-loss", "cosine",
                          "selection"}


def test_slm_main_registers_analyze(capsys):
    pytest.importorskip("selective_lm.study")
    from selective_lm.cli import main

    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "selected-loss" in capsys.readouterr().out
    assert main(["analyze", "dynamics", "--study", "/nonexistent/study"]) == 2


@pytest.mark.parametrize("name", ["perplexity", "efficiency", "dynamics", "buckets", "selected-loss", "cosine",
                                  "selection"])
def test_analyze_on_study(study, name, tmp_path, capsys):
    out = tmp_path / f"{name}.json"
    res = analyze(name, "--study", study, "--out", out)
    assert json.loads(out.read_text()) == res
    assert json.loads(capsys.readouterr().out) == res
    assert res and "error" not in res


def test_analyze_arbitrary_inputs(study):
    ev = study / "evals"
    dumps = [ev / "base/step_000000/noisy.losses.bin", ev / "clm-s0/step_000010/noisy.losses.bin",
             ev / "clm-s0/step_000020/noisy.losses.bin"]
    dyn = analyze("dynamics", "--losses", *dumps, "--data", study / "data/web_math")
    assert sum(dyn["counts"].values()) == dyn["n_tokens"] and dyn["examples"]
    full = analyze("dynamics", "--study", study)["runs"]["clm-s0"]
    assert dyn["shares"] == full["shares"]
    b = analyze("buckets", "--before", dumps[0], "--after", ev / "topk-r0.6-s0/step_000020/noisy.losses.bin",
                "--baseline", dumps[2])
    assert b == analyze("buckets", "--study", study)["runs"]["topk-r0.6-s0"]["vs_base"] | {"quantile": 0.7}
    runs = study / "runs"
    cos = analyze("cosine", "--base", runs / "base/final", "--runs", runs / "clm-s0/final", runs / "topk-r0.6-s0/final")
    assert cos["matrix"][0][0] == pytest.approx(1.0) and cos["kinds"][str(runs / "clm-s0/final")] == "full"
    eff = analyze("efficiency", "--baseline", runs / "clm-s0", "--runs", runs / "topk-r0.6-s0")
    assert eff["runs"][str(runs / "topk-r0.6-s0")]["speedup"] > 1
    ppl = analyze("perplexity", "--losses", dumps[0])
    assert ppl[str(dumps[0])]["tokens"] == dyn["n_tokens"]
    sel = analyze("selected-loss", "--base", dumps[0], "--reference", ev / "reference/step_final/noisy.losses.bin",
                  "--losses", dumps[2], "--ratio", "0.6")
    study_sel = analyze("selected-loss", "--study", study)["ratios"]["0.6"]["runs"]["clm-s0"][-1]
    assert sel["ratios"]["0.6"][str(dumps[2])]["selected"] == pytest.approx(study_sel["selected"])
    shares = analyze("selection", "--runs", runs / "topk-r0.6-s0")
    assert shares["runs"][str(runs / "topk-r0.6-s0")]["noise_share_all"]["mean"] == pytest.approx(0.3)


def test_analyze_bad_input(study, tmp_path):
    with pytest.raises(UserError, match="index.json"):
        analyze("dynamics", "--study", tmp_path)
    with pytest.raises(UserError, match="not found.*missing.bin"):
        analyze("buckets", "--before", tmp_path / "missing.bin", "--after", tmp_path / "a.bin",
                "--baseline", tmp_path / "b.bin")
    with pytest.raises(UserError, match="--study DIR or --before"):
        analyze("buckets")
    with pytest.raises(UserError, match="needs --study"):
        analyze("report")
    with pytest.raises(UserError, match="at least 2"):
        analyze("dynamics", "--losses", study / "evals/base/step_000000/noisy.losses.bin")
    with pytest.raises(UserError, match="--base"):
        analyze("cosine", "--runs", study / "runs/clm-s0/final")
    with pytest.raises(UserError, match="checkpoint directory not found"):
        analyze("cosine", "--base", study / "runs/base/final", "--runs", tmp_path / "nope")
    with pytest.raises(UserError, match="metrics.jsonl"):
        analyze("efficiency", "--baseline", tmp_path, "--runs", tmp_path)
    short = dump_token_losses(np.ones((1, 8), dtype=np.float32), tmp_path / "short.losses.bin")
    with pytest.raises(UserError, match="different numbers of tokens"):
        analyze("dynamics", "--losses", study / "evals/base/step_000000/noisy.losses.bin", short)
