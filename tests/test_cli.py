import dataclasses

import pytest

from selective_lm.cli import main
from selective_lm.config import PrepareConfig, TrainConfig, field_docs


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(args, capsys, *needles):
    code, _, err = run(args, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """A dataset with another tokenizer (vocab 300) and the same seq_len."""
    from conftest import make_corpus

    from selective_lm.data import prepare

    root = tmp_path_factory.mktemp("other")
    make_corpus(root / "c.jsonl", n_docs=150, seed=1)
    prepare(PrepareConfig(inputs=[str(root / "c.jsonl")], out=str(root / "ds"), vocab_size=300, seq_len=32,
                          val_fraction=0.1, progress=False))
    return root / "ds"


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fin")
    code = main(["train", "--data", str(tiny_data), "--out", str(root / "run"), "--max-steps", "4",
                 "--batch-size", "4", "--no-progress", "--ckpt-every", "2"])
    assert code == 0
    code = main(["score", "--data", str(tiny_data), "--model", str(root / "run" / "final"),
                 "--out", str(root / "scores"), "--no-progress"])
    assert code == 0
    return root


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert all(field_docs(TrainConfig).get(f.name) for f in dataclasses.fields(TrainConfig))


def test_dry_run_prints_resolved_config(tiny_data, tmp_path, capsys):
    code, out, _ = run(["train", "--data", tiny_data, "--out", tmp_path / "x", "ratio=0.3", "lora.r=8",
                        "--objective", "slm", "--ref-scores", tmp_path, "--dry-run"], capsys)
    assert code == 0 and "ratio: 0.3" in out and "r: 8" in out


def test_missing_and_empty_inputs(tmp_path, capsys):
    assert_user_error(["prepare", "--inputs", tmp_path / "nope.txt", "--out", tmp_path / "ds"], capsys, "nope.txt")
    (tmp_path / "empty.jsonl").write_text("")
    assert_user_error(["prepare", "--inputs", tmp_path / "empty.jsonl", "--out", tmp_path / "ds2"], capsys)
    assert not (tmp_path / "ds2" / "manifest.json").exists()


@pytest.mark.parametrize("ratio", ["0", "1.5", "-0.2"])
def test_ratio_outside_range(tiny_data, tmp_path, capsys, ratio):
    assert_user_error(["train", "--data", tiny_data, "--out", tmp_path / "r", "--objective", "slm",
                       "--ref-scores", tmp_path, "--ratio", ratio], capsys, "ratio")


def test_unknown_strategy_and_key(tiny_data, tmp_path, capsys):
    assert_user_error(["train", "--data", tiny_data, "--out", tmp_path / "r", "--strategy", "best"], capsys, "strategy")
    assert_user_error(["train", "--data", tiny_data, "--out", tmp_path / "r", "ratoi=0.5"], capsys, "ratoi")


def test_scores_for_another_dataset(other_data, finished, tmp_path, capsys):
    assert_user_error(["train", "--data", other_data, "--out", tmp_path / "r", "--objective", "slm",
                       "--ref-scores", finished / "scores", "--max-steps", "2", "--no-progress"], capsys, "tokenizer")
    assert not (tmp_path / "r").exists()


def test_reference_with_other_vocabulary(other_data, finished, tmp_path, capsys):
    assert_user_error(["train", "--data", other_data, "--out", tmp_path / "r", "--objective", "slm",
                       "--ref-model", finished / "run" / "final", "--max-steps", "2", "--no-progress"], capsys,
                      "reference model")
    assert_user_error(["score", "--data", other_data, "--model", finished / "run" / "final", "--out",
                       tmp_path / "s", "--no-progress"], capsys, "tokenizer")


def test_finished_run_refused_unless_overwrite(tiny_data, finished, capsys):
    args = ["train", "--data", tiny_data, "--out", finished / "run", "--max-steps", "4", "--batch-size", "4",
            "--no-progress", "--ckpt-every", "2"]
    before = (finished / "run" / "final" / "model.safetensors").read_bytes()
    assert_user_error(args, capsys, "--overwrite")
    assert (finished / "run" / "final" / "model.safetensors").read_bytes() == before
    assert_user_error(["score", "--data", tiny_data, "--model", finished / "run" / "final",
                       "--out", finished / "scores", "--no-progress"], capsys, "--overwrite")


def test_resume_with_changed_config(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    base = ["train", "--data", tiny_data, "--out", out, "--batch-size", "4", "--no-progress", "--ckpt-every", "2"]
    cfg = TrainConfig(data=str(tiny_data), out=str(out), batch_size=4, max_steps=6, ckpt_every=2, progress=False)
    from selective_lm.config import save_config
    save_config(cfg, out / "config.yaml")  # an interrupted run's saved config
    assert_user_error(base + ["--max-steps", "6", "--lr", "0.01", "--resume"], capsys, "lr")
    assert_user_error(base + ["--max-steps", "6"], capsys, "--resume")


@pytest.mark.parametrize("args, needle", [
    (["selection_scope=batch"], "selection_scope"),
    (["--parallel", "zero3"], "parallel"),
    (["--parallel", "fsdp"], "torchrun"),  # not launched by torchrun
    (["--parallel", "fsdp", "lora.r=4"], "LoRA"),
])
def test_scale_out_options_refused_before_anything_is_written(tiny_data, tmp_path, capsys, args, needle):
    assert_user_error(["train", "--data", tiny_data, "--out", tmp_path / "r", "--max-steps", "2", "--no-progress"]
                      + args, capsys, needle)
    assert not (tmp_path / "r").exists()


def test_overrides_between_flags(tiny_data, tmp_path, capsys):
    """`slm train --data d ratio=0.5 --out x max_steps=1`: key=value anywhere, also after a list flag."""
    code, out, err = run(["train", "--data", tiny_data, "ratio=0.5", "--out", tmp_path / "x", "max_steps=1",
                          "--lr", "1e-3", "lr_schedule=wsd", "--dry-run"], capsys)
    assert code == 0 and "ratio: 0.5" in out and "max_steps: 1" in out and "lr_schedule: wsd" in out, err
    code, out, _ = run(["prepare", "--inputs", "a.jsonl", "b.jsonl", "seq_len=64", "--out", "ds", "vocab_size=512",
                        "--dry-run"], capsys)
    assert code == 0 and "seq_len: 64" in out and "vocab_size: 512" in out and "seq_len=64" not in out
    with pytest.raises(SystemExit) as e:  # argparse's own: an unknown flag
        run(["train", "--data", tiny_data, "--out", tmp_path / "x", "ratio=0.5", "--bogus", "1"], capsys)
    assert e.value.code == 2 and "unrecognized arguments: --bogus 1" in capsys.readouterr().err
    assert_user_error(["train", "--data", tiny_data, "lr=2", "--out", tmp_path / "x", "--lr", "1"], capsys, "given twice")
