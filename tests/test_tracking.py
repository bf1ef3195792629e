"""One logging hook: metrics.jsonl, TensorBoard and library callbacks see the same rows; a tracker whose
package is missing is refused in one line before anything starts."""
import json
import sys

import pytest

from selective_lm.cli import main
from selective_lm.config import TrainConfig
from selective_lm.files import UserError
from selective_lm.tracking import MetricsLogger, scalars, trackers
from selective_lm.train import train


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_scalars_equal_metrics_jsonl(tiny_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = []
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), batch_size=4, max_steps=6, log_every=2,
                      eval_every=3, eval_windows=8, progress=False, report_to=["tensorboard"])
    cfg.validate()
    train(cfg, console=False, callbacks=[seen.append])
    expected = rows(tmp_path / "run")
    assert {r["type"] for r in expected} == {"train", "eval"} and len(expected) == 5  # steps 2 4 6, evals 3 6
    assert seen == expected  # the callback got every row, as written

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tb = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    want: dict[str, dict[int, float]] = {}
    for r in expected:
        for tag, v in scalars(r).items():
            want.setdefault(tag, {})[r["step"]] = v
    assert "train/loss" in want and "eval/ppl" in want and set(tb) == set(want)
    for tag, by_step in want.items():
        assert set(tb[tag]) == set(by_step), tag
        for step, v in by_step.items():
            assert tb[tag][step] == pytest.approx(v, rel=1e-6, abs=1e-6), (tag, step)  # stored as float32


def test_missing_tracker_refused_before_anything(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as when it is not installed
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(out), "--max-steps", "2", "report_to=wandb"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "report_to=wandb needs the wandb package: pip install 'selective-lm[wandb]'" in err
    assert not out.exists()


def test_report_to_values():
    assert trackers(["none"]) == [] and trackers(["tensorboard", "TensorBoard"]) == ["tensorboard"]
    with pytest.raises(UserError, match="unknown report_to 'mlflow'"):
        trackers(["mlflow"])
    with pytest.raises(UserError, match="none and a tracker"):
        trackers(["none", "wandb"])
    cfg = TrainConfig(data="d", out="o", report_to=["none"])
    cfg.validate()
    assert cfg.report_to == []


def test_sinks_closed_on_error(tmp_path):
    closed = []

    class Sink:
        def log(self, row):
            raise RuntimeError("boom")

        def close(self, failed=False):
            closed.append(failed)

    logger = MetricsLogger()
    with pytest.raises(RuntimeError), logger:
        logger.open(tmp_path, {})
        logger.sinks.append(Sink())
        logger.log({"type": "train", "step": 1, "loss": 1.0})
    assert closed == [True] and logger.sinks == []
    assert rows(tmp_path) == [{"type": "train", "step": 1, "loss": 1.0}]  # the JSONL sink came first
