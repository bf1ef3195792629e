import dataclasses
from pathlib import Path

import pytest

from selective_lm.config import (
    EvalConfig,
    ExportConfig,
    LoraConfig,
    PrepareConfig,
    ScoreConfig,
    TrainConfig,
    apply_overrides,
    field_docs,
    from_dict,
    load_yaml,
    resolve,
    to_dict,
)
from selective_lm.files import UserError
from selective_lm.study.config import StudyConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls", [PrepareConfig, ScoreConfig, TrainConfig, EvalConfig, LoraConfig, StudyConfig,
                                 ExportConfig])
def test_every_field_has_a_docstring(cls):
    docs = field_docs(cls)
    assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []


def test_documented_default_study_equals_the_defaults():
    assert to_dict(from_dict(StudyConfig, load_yaml(ROOT / "configs" / "study-default.yaml"))) == to_dict(StudyConfig())


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("study-*.yaml")))
def test_recipes_resolve(name):
    cfg = resolve(StudyConfig, str(ROOT / "configs" / name))
    assert cfg.out.startswith("slm-study")
    cfg.validate()


def test_precedence_yaml_overrides_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: d\nout: o\nratio: 0.5\nlr: 0.01\nlora: {r: 4}\n")
    cfg = resolve(TrainConfig, str(f), ["ratio=0.3", "lora.alpha=8"], {"lr": 0.02})
    assert (cfg.ratio, cfg.lr, cfg.lora.r, cfg.lora.alpha) == (0.3, 0.02, 4, 8.0)


def test_type_errors_and_lists():
    with pytest.raises(UserError, match="integer"):
        from_dict(TrainConfig, {"batch_size": "many"})
    with pytest.raises(UserError, match="unknown config key 'lora.rank'"):
        from_dict(TrainConfig, {"lora": {"rank": 4}})
    assert from_dict(StudyConfig, {"seeds": "0,1,2"}).seeds == [0, 1, 2]
    assert from_dict(StudyConfig, {"seeds": ["0,1", "2"]}).seeds == [0, 1, 2]
    assert apply_overrides({}, ["a.b=3"]) == {"a": {"b": 3}}
    with pytest.raises(UserError, match="key=value"):
        apply_overrides({}, ["ratio"])


def test_numbers_parse_as_written():
    from selective_lm.cli import build_parser
    from selective_lm.config import from_args

    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--lr", "5e-5", "--max-tokens", "1e9",
                                      "max_steps=1_000"])
    cfg = from_args(TrainConfig, args)
    assert cfg.lr == 5e-5 and cfg.max_tokens == 10**9 and cfg.max_steps == 1000
