"""The study's token-selection variants: refused configs, their arms and train configs, adding them to a
finished study directory, and the collected comparison with top-k (synthetic study) with Holm's correction."""
import pytest
import yaml

from selective_lm.files import UserError
from selective_lm.study import stats
from selective_lm.study.config import VARIANT_KEYS, VARIANTS, StudyConfig
from selective_lm.study.layout import Study
from selective_lm.study.stages import build_stages, variant_train_kwargs

from test_study import refused


def test_holm_adjusts_like_its_definition():
    ps = [0.01, 0.04, 0.03, None, 0.005]
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    got = stats.holm(ps)
    assert got[3] is None and [got[i] for i in (0, 1, 2, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def test_bad_variant_configs_refused_before_any_stage(tmp_path, capsys):
    out = tmp_path / "s"
    refused(["study", "--out", out, "variants=[sharp]"], capsys, "unknown variant 'sharp'", out)
    refused(["study", "--out", out, "variants=[soft,soft]"], capsys, "distinct", out)
    refused(["study", "--out", out, "variants=[soft]", "strategies=[random]"], capsys, "keep topk", out)
    refused(["study", "--out", out, "variants=[soft]", "variant_ratio=0.5"], capsys, "variant_ratio", out)
    refused(["study", "--out", out, "variants=[self]", "self_fraction=1"], capsys, "self_fraction", out)
    refused(["study", "--out", out, "variants=[warmup]", "variant_warmup=1.2"], capsys, "variant_warmup", out)
    refused(["study", "--out", out, "variants=[reference:0.5]"], capsys, "takes no setting", out)
    refused(["study", "--out", out, "variants=[excess+entropy:-1]"], capsys, "λ must be >= 0", out)
    refused(["study", "--out", out, "variants=[soft:0]"], capsys, "must be > 0", out)
    refused(["study", "--out", out, "variants=[warmup:1]"], capsys, "must be in [0, 1)", out)
    refused(["study", "--out", out, "variants=[warmup:half]"], capsys, "not a number", out)


def test_variant_arms_and_their_train_configs(tmp_path):
    cfg = StudyConfig(out=str(tmp_path / "s"), variants=list(VARIANTS), ratios=[0.6, 0.3], variant_ratio=0.3,
                      seeds=[0, 1], hq_sweep=[])
    cfg.validate()
    st = Study(cfg)
    arms = [a for a in st.arms() if a["arm"] == "variant"]
    assert [a["variant"] for a in arms] == list(VARIANTS) * 2
    assert {a["name"] for a in arms if a["seed"] == 1} == {f"v-{v.replace('+', '-')}-r0.3-s1" for v in VARIANTS}
    assert all(a["ratio"] == 0.3 and a["strategy"] == "topk" for a in arms)
    tcfgs = {}
    for v in VARIANTS:  # every variant is a valid `slm train` config
        tcfgs[v] = st.train_cfg(data=str(tmp_path / "d"), out=str(tmp_path / v), model="tiny", max_tokens=1000,
                                **variant_train_kwargs(st, 1, v))
    assert tcfgs["reference"].score == "reference" and tcfgs["entropy"].score == "entropy"
    assert tcfgs["excess+entropy"].entropy_weight == cfg.entropy_weight
    s = tcfgs["self"]
    assert s.score == "self" and s.ref_scores == [str(st.self_scores(1))]
    assert (s.holdout, s.holdout_fraction, s.holdout_seed) == ("exclude", 0.2, 1)
    assert tcfgs["soft"].weighting == "soft" and tcfgs["dft"].weighting == "dft" and tcfgs["dft"].ref_scores is None
    assert tcfgs["sequence"].selection_scope == "sequence" and tcfgs["sequence"].ref_scores == [str(st.scores(1))]
    for v, score in (("eslm-loss", "loss"), ("eslm-entropy", "model-entropy")):  # reference-free
        assert tcfgs[v].score == score and tcfgs[v].ref_scores is None and tcfgs[v].weighting == "hard"
    assert tcfgs["warmup"].clm_warmup == 0.25
    sch = tcfgs["schedule"]
    assert (sch.ratio, sch.ratio_schedule, sch.ratio_end) == (1.0, "linear", 0.3)
    assert all(t.ratio == 0.3 and t.objective == "slm" for k, t in tcfgs.items() if k != "schedule")
    # name:value sets the variant's own value; the arms of two settings are two arms
    kw = {v: variant_train_kwargs(st, 0, v) for v in ("excess+entropy:0.3", "warmup:0.5", "soft:2")}
    assert kw["excess+entropy:0.3"]["entropy_weight"] == 0.3 and kw["warmup:0.5"]["clm_warmup"] == 0.5
    assert kw["soft:2"]["weight_temperature"] == 2.0
    two = StudyConfig(out=str(tmp_path / "u"), variants=["excess+entropy", "excess+entropy:0.3"], seeds=[0])
    two.validate()
    assert [a["name"] for a in Study(two).arms() if a["arm"] == "variant"] == [
        "v-excess-entropy-r0.6-s0", "v-excess-entropy-0.3-r0.6-s0"]
    names = [x.name for x in build_stages(st)]
    for seed in (0, 1):  # the self-reference is built after the scores, before the arms
        i = names.index(f"s{seed} score")
        assert names[i + 1: i + 3] == [f"s{seed} self-reference", f"s{seed} self-score"]
        assert names.index(f"arm v-self-r0.3-s{seed}") > i + 2
    assert "s0 self-reference" not in [x.name for x in build_stages(Study(StudyConfig(out=str(tmp_path / "t"))))]


def test_variants_added_to_a_finished_study_directory(tmp_path):
    """Variants only add arms: a study directory made before them accepts them; changing a variant
    setting once it is recorded is refused."""
    out = tmp_path / "s"
    cfg = StudyConfig(out=str(out), ratios=[0.6, 0.3])
    cfg.validate()
    Study(cfg).check_dir()
    saved = yaml.safe_load((out / "study.yaml").read_text())
    for k in (*VARIANT_KEYS, "variants"):  # as written before the variants existed
        saved.pop(k)
    (out / "study.yaml").write_text(yaml.safe_dump(saved))
    cfg = StudyConfig(out=str(out), variants=["soft", "self"], variant_ratio=0.3, self_fraction=0.3, ratios=[0.6, 0.3])
    cfg.validate()
    Study(cfg).check_dir()  # accepted, and now recorded
    assert yaml.safe_load((out / "study.yaml").read_text())["self_fraction"] == 0.3
    cfg = StudyConfig(out=str(out), variants=["soft", "self"], variant_ratio=0.3, self_fraction=0.2, ratios=[0.6, 0.3])
    cfg.validate()
    with pytest.raises(UserError, match="self_fraction"):
        Study(cfg).check_dir()
    # a study made without variants (its variant settings saved, unused) takes variants with other settings
    out2 = out.parent / "s2"
    cfg = StudyConfig(out=str(out2), ratios=[0.6, 0.3])
    cfg.validate()
    Study(cfg).check_dir()
    cfg = StudyConfig(out=str(out2), variants=["soft"], variant_ratio=0.3, ratios=[0.6, 0.3])
    cfg.validate()
    Study(cfg).check_dir()
    assert yaml.safe_load((out2 / "study.yaml").read_text())["variant_ratio"] == 0.3


@pytest.fixture(scope="module")
def variant_results(tmp_path_factory):
    from synthetic_study import DROPS, build_study

    from selective_lm.study.collect import collect

    study = build_study(tmp_path_factory.mktemp("var"), variants={"soft": DROPS["topk"] + 0.02, "dft": 0.005,
                                                                  "entropy": DROPS["topk"], "warmup": 0.03,
                                                                  "warmup:0.5": 0.033})
    return study, collect(study)


def test_variants_are_compared_with_topk_and_clm(variant_results):
    _, res = variant_results
    var = res["variants"]
    assert var["baseline"] == "slm-topk-0.3" and var["ratio"] == 0.3
    rows = {r["variant"]: r for r in var["rows"]}
    assert set(rows) == {"soft", "dft", "entropy", "warmup", "warmup:0.5"}
    # two settings of one variant: the one with the lower validation loss is marked; single ones are not
    assert rows["warmup:0.5"]["best_on_validation"] and not rows["warmup"]["best_on_validation"]
    assert not rows["soft"]["best_on_validation"]
    assert rows["soft"]["vs_topk"]["verdict"] == stats.HOLDS  # a larger drop than top-k's
    assert rows["dft"]["vs_topk"]["verdict"] == stats.FAILS  # a smaller one: significantly worse
    assert rows["entropy"]["vs_topk"]["verdict"] != stats.HOLDS  # the same drop
    names = list(rows)
    holm = stats.holm([rows[v]["vs_topk"]["p"] for v in names])
    assert [rows[v]["vs_topk"]["p_holm"] for v in names] == pytest.approx(holm)
    # throughput: cpt_tokens / the arm stage's seconds (synthetic: 10 s for top-k, 10 + index for variants)
    assert rows["dft"]["train_tokens_per_s"]["mean"] == pytest.approx(10000 / 11)
    assert var["baseline_tokens_per_s"]["slm-topk-0.3"]["mean"] == pytest.approx(1000)
    g = res["groups"]
    assert g["variant-soft"]["arm"] == "variant" and g["variant-soft"]["variant"] == "soft"
    assert "variant-soft" not in {b["group"] for b in res["best_ratio"].values()}  # never tuned as a ratio
    found = [f for f in res["findings"] if f["id"] == "f-variant"]
    assert {f["a_group"] for f in found} == {f"variant-{v}" for v in rows}
    assert {h["group"] for h in res["headline"]} >= {"variant-soft", "variant-dft"}
    assert "soft beat top-k" in res["summary"]


def test_variants_section_of_the_report(variant_results, tmp_path):
    from selective_lm.study.report import render

    _, res = variant_results
    md = render(res, {}, None)
    sec = md[md.index("## Token-selection variants"):]
    sec = sec[: sec.index("\n## ")]
    assert "| soft |" in sec and "| dft |" in sec and "Beat top-k (p < 0.05): soft" in sec
    assert "Significantly worse than top-k: dft" in sec and "| warmup:0.5 ★ |" in sec and "★ = the best" in sec
    no_var = dict(res, variants={})
    assert "## Token-selection variants" not in render(no_var, {}, None)


def test_stage_timings_add_up_over_invocations(tmp_path):
    """A stage run in two invocations (a resumed evaluation, a rescoring) counts both; writing the index
    twice in one invocation counts it once; the report keeps its last time."""
    import json

    cfg = StudyConfig(out=str(tmp_path / "s"))
    cfg.validate()
    first = Study(cfg)
    first.timings = {"evaluate": 10.0, "report": 1.0}
    first.write_index()
    first.write_index()
    second = Study(cfg)
    second.timings = {"evaluate": 2.5, "arm x": 3.0, "report": 0.5}
    second.write_index()
    second.write_index()
    t = json.loads((tmp_path / "s" / "index.json").read_text())["timings"]
    assert t == {"evaluate": 12.5, "report": 0.5, "arm x": 3.0}
