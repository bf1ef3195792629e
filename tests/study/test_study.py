"""`slm study`: bad configs refused before any stage, the quick study end to end, and resume."""
import json
import math

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


QUICK = ["study", "--quick", "--no-progress", "variants=[self,excess+entropy,soft]"]  # with the variants section


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
    assert {"clm-s0", "hq-s0", "content-s0", "topk-r0.6-s0", "random-r0.6-s0", "stochastic-r0.6-s0"} <= names
    # v2: one pipeline per seed, problems split with zero leakage, test and validation evaluations
    index = json.loads((quick_study / "index.json").read_text())
    assert index["version"] == 2 and set(index["pipelines"]) == {"0"}
    leak = json.loads((quick_study / "seed-0" / "corpora" / "manifest.json").read_text())["leakage"]
    assert leak["max_share"] == 0.0
    final = sorted((quick_study / "seed-0" / "evals" / "clm").glob("step_*"))[-1]
    m = json.loads((final / "metrics.json").read_text())
    assert {"test", "validation", "fewshot"} <= set(m) and {"own", "external"} <= set(m["fewshot"])
    assert m["fewshot"]["external"]["n"] == 48
    assert "Smoke test" in md and "Written by `slm study`" in md
    assert "not tested (1 seed" in md and "✅" not in md  # one seed never "holds"
    overlap = [json.loads(x)["topk_overlap"] for x in open(quick_study / "seed-0" / "runs" / "stochastic-r0.6" /
                                                               "metrics.jsonl") if '"train"' in x]
    assert overlap and all(0.0 < o < 1.0 for o in overlap)

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
