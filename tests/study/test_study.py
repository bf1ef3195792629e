"""`slm study`: bad configs refused before any stage, the quick study end to end, and resume."""
import json
import math
import re
from pathlib import Path

import pytest

from selective_lm.cli import main

from selective_lm.study.collect import RESULT_KEYS as KEYS
from selective_lm.study.report import SECTIONS


def refused(args, capsys, needle, out):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not out.exists(), "a stage started"


def test_bad_configs_refused_before_any_stage(tmp_path, capsys, tiny_data):
    out = tmp_path / "s"
    refused(["study", "--out", out, "ratoi=0.5"], capsys, "ratoi", out)
    refused(["study", "--out", out, "--corpora", tmp_path / "nope"], capsys, "hq_math.jsonl", out)
    refused(["study", "--out", out, "ratios=[0.6,1.2]"], capsys, "ratios", out)
    refused(["study", "--out", out, "lora={r: 0, alpha: 32}"], capsys, "lora.r", out)
    refused(["study", "--out", out, "baselines=[hq,oracle]"], capsys, "baseline 'oracle'", out)
    refused(["study", "--out", out, "temperature_unit=kelvin"], capsys, "temperature_unit", out)
    refused(["study", "--out", out, "seeds=[0,0]"], capsys, "distinct", out)
    refused(["study", "--out", out, "hq_ratio=0"], capsys, "hq_ratio must hold HQ : budget ratios", out)
    refused(["study", "--out", out, "hq_sweep=[0.1,0.1]"], capsys, "hq_sweep must be distinct", out)
    refused(["study", "--out", out, "baselines=[content]"], capsys, "keep hq in baselines", out)
    refused(["study", "--out", out, "sweep_ratio=0.5"], capsys, "sweep_ratio 0.5", out)
    refused(["study", "--out", out, "strategies=[random]"], capsys, "keep topk in strategies", out)
    refused(["study", "--out", out, "corpus=wiki"], capsys, "unknown corpus 'wiki'", out)
    refused(["study", "--out", out, "web_scale=0"], capsys, "web_scale must be in (0, 100]", out)
    yaml_file = tmp_path / "study.yaml"
    yaml_file.write_text("lora:\n  r: -4\n")
    refused(["study", "--out", out, "--config", yaml_file], capsys, "lora.r", out)
    # a checkpoint whose vocabulary differs from the tokenizer
    from selective_lm.config import TrainConfig
    from selective_lm.train import train
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "ck"), max_steps=1, batch_size=2, progress=False),
          console=False)
    from conftest import make_corpus

    from selective_lm.data import train_tokenizer_from_inputs
    make_corpus(tmp_path / "c.jsonl", n_docs=40)
    train_tokenizer_from_inputs([str(tmp_path / "c.jsonl")], 300, tmp_path / "tok")
    refused(["study", "--out", out, "--model", tmp_path / "ck" / "final", "--tokenizer", tmp_path / "tok"],
            capsys, "vocabulary", out)


# one seed keeps the suite short; the variants section too
QUICK = ["study", "--quick", "--no-progress", "seeds=[0]", "variants=[self,excess+entropy,soft]"]


def test_the_default_study_decides():
    """The no-argument study runs enough seeds for a verdict on every claim, in the paper's regime."""
    from selective_lm.study.config import StudyConfig
    from selective_lm.study.stats import MIN_SEEDS

    cfg = StudyConfig()
    cfg.validate()
    assert len(cfg.seeds) >= MIN_SEEDS and cfg.reference_epochs == 3 and cfg.hq_ratio <= 0.1 and cfg.hq_sweep


def test_a_three_seed_study_gives_every_claim_a_verdict(v2_study):
    from selective_lm.study import stats
    from selective_lm.study.collect import collect

    res = collect(v2_study)
    assert res["claims"] and all(c["verdict"] in (stats.HOLDS, stats.FAILS, stats.NOT_SIG) for c in res["claims"])
    assert "could not be tested" in res["summary"] and "0 could not be tested" in res["summary"]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "quick"
    assert main([*QUICK, "--out", str(out)]) == 0
    return out


def test_quick_study_end_to_end(quick_study):
    md = (quick_study / "report" / "report.md").read_text()
    for s in SECTIONS:
        assert s in md, s
    res = json.loads((quick_study / "report" / "results.json").read_text())
    for k in KEYS:
        assert k in res, k
    names = {r["name"] for r in res["runs"]} if isinstance(res["runs"], list) else set(res["runs"])
    assert {"clm-s0", "hq-s0", "topk-r0.6-s0", "random-r0.6-s0", "hq-1in2-s0", "topk-r0.6-1in2-s0"} <= names
    # v3: the paper's regime, problems split with zero leakage, test and validation evaluations
    index = json.loads((quick_study / "index.json").read_text())
    assert index["version"] == 3 and set(index["pipelines"]) == {"0"} and index["regime"]["hq_label"] == "1:4"
    leak = json.loads((quick_study / "seed-0" / "corpora" / "manifest.json").read_text())["leakage"]
    assert leak["max_share"] == 0.0
    evals = sorted((quick_study / "seed-0" / "evals" / "clm").glob("step_*"))
    first, final = (json.loads((d / "metrics.json").read_text()) for d in (evals[0], evals[-1]))
    assert {"test", "mc"} <= set(first) and "fewshot" not in first  # multiple choice at every checkpoint
    assert {"test", "validation", "fewshot", "mc"} <= set(final) and {"own", "external"} <= set(final["mc"])
    assert final["mc"]["own"]["n"] == 16 and final["mc"]["own"]["chance"] == 0.25 and final["fewshot"]["external"]["n"] == 8
    # the HQ-only arm repeats its HQ share (1/4 of the budget: 4 epochs); the sweep arm has its end only
    hq = json.loads((quick_study / "seed-0" / "runs" / "hq" / "run.json").read_text())
    assert hq["holdout"]["side"] == "only" and hq["holdout"]["windows"] * 256 * 4 == pytest.approx(24_576, rel=0.05)
    assert len(list((quick_study / "seed-0" / "evals" / "topk-r0.6-1in2").glob("step_*"))) == 1
    assert "Smoke test" in md and "Written by `slm study`" in md
    assert "not tested (1 seed" in md and "✅" not in md.split("## Verdicts")[1].split("## Headline")[0]
    # what the issue asks of the quick report
    assert "**HQ : budget = 1:4**" in md and "chance is 25%" in md and "own gold-answer NLL" in md
    assert "speed-up (tokens)" in md and "speed-up (FLOPs, k=1)" in md
    assert "| 1:2 |" in md.split("## HQ-size sweep")[1]

    def finite(x):
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, dict):
            for v in x.values():
                finite(v)
        elif isinstance(x, list):
            for v in x:
                finite(v)
    finite(res)
    assert (quick_study / "report" / "selection.html").is_file()
    # the variants: a self-reference on a held-out share, entropies in the scores, one section in the report
    assert {"v-self-r0.6-s0", "v-excess-entropy-r0.6-s0", "v-soft-r0.6-s0"} <= names
    overlap = [json.loads(x)["topk_overlap"] for x in open(quick_study / "seed-0" / "runs" / "random-r0.6" /
                                                               "metrics.jsonl") if '"train"' in x]
    assert overlap and all(0.0 < o < 1.0 for o in overlap)
    assert [r["variant"] for r in res["variants"]["rows"]] == ["self", "excess+entropy", "soft"]
    assert "## Token-selection variants" in md
    sd = quick_study / "seed-0"
    ref = json.loads((sd / "runs" / "self-reference" / "final" / "slm_meta.json").read_text())["holdout"]
    arm = json.loads((sd / "runs" / "v-self-r0.6" / "final" / "slm_meta.json").read_text())
    assert ref["side"] == "only" and arm["holdout"]["side"] == "exclude" and arm["self_reference"] is True
    assert json.loads((sd / "scores" / "web_math" / "manifest.json").read_text())["entropy_file"]


def test_resumed_study_skips_finished_stages(quick_study, capsys):
    before = json.loads((quick_study / "report" / "results.json").read_text())
    assert main([*QUICK, "--out", str(quick_study)]) == 0
    out = capsys.readouterr().out
    stage_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert stage_lines and all(line.endswith(": cached") for line in stage_lines), out
    after = json.loads((quick_study / "report" / "results.json").read_text())
    for r in (before, after):
        r["config"].pop("timings", None)
        r["config"].pop("timings_total", None)
        r["summary"] = re.sub(r"Its stages took \d+m\d+s in all", "", r["summary"])  # a wall time, summed anew
    assert before == after


def test_study_killed_while_saving_the_base_resumes_to_the_same_results(quick_study, tmp_path):
    from test_kill import killed

    out = tmp_path / "quick"
    args = [*QUICK, "--out", str(out)]
    killed(args, "selective_lm.model.commit_dir", 1, "before")  # the base model's checkpoint, half written
    assert main(args) == 0
    runs = sorted(p.parent.name for p in (quick_study / "seed-0" / "runs").glob("*/run.json"))
    assert runs and runs == sorted(p.parent.name for p in (out / "seed-0" / "runs").glob("*/run.json"))
    for name in runs:
        a = json.loads((quick_study / "seed-0" / "runs" / name / "run.json").read_text())
        b = json.loads((out / "seed-0" / "runs" / name / "run.json").read_text())
        assert a["final_val_loss"] == b["final_val_loss"], name
    # the stages the killed invocation finished keep their seconds (timings.json, written after each stage)
    timings = json.loads((out / "index.json").read_text())["timings"]
    assert all(timings.get(k, 0) > 0 for k in ("s0 corpora", "s0 tokenizer", "s0 prepare")), timings


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(__file__).parents[2] / "configs").glob("study-*.yaml")))
def test_every_study_recipe_loads_and_validates(recipe):
    """Each configs/study-*.yaml names only keys the study knows, with values it accepts."""
    from selective_lm.options import resolve
    from selective_lm.study.config import StudyConfig

    cfg = resolve(StudyConfig, str(Path(__file__).parents[2] / "configs" / recipe))
    assert cfg.seeds and len(cfg.seeds) >= 3, recipe  # every recipe gives each claim a verdict
