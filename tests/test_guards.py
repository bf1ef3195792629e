"""Guards: non-finite steps, one writer per directory, seeded runs, --overwrite that loses nothing,
and a table of bad inputs that each end in one line and exit code 2 with nothing already written changed."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import selective_lm.objective as objective_mod
from selective_lm.cli import main
from selective_lm.config import LoraConfig, TrainConfig
from selective_lm.files import DirLock, UserError
from selective_lm.train import train


def one_line_error(args, capsys, *needles):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("slm: warning")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def interrupted(args, at_step: int) -> None:
    """Run the CLI and interrupt it (KeyboardInterrupt) as its optimizer step ``at_step`` begins."""
    import selective_lm.train as train_mod

    real = train_mod.train_step

    def stop(t, step, *a, **k):
        if step == at_step:
            raise KeyboardInterrupt
        return real(t, step, *a, **k)

    train_mod.train_step = stop
    try:
        assert main([str(a) for a in args]) == 130
    finally:
        train_mod.train_step = real


def snapshot(root: Path) -> dict:
    """Every file under root with its bytes (lock files aside): 'nothing already written changed'."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def strict_json(path):
    def bad(x):
        raise ValueError(f"non-finite {x} in {path}")
    return [json.loads(x, parse_constant=bad) for x in Path(path).read_text().splitlines()]


# --------------------------------------------------------------------------- non-finite steps
def test_diverging_run_stops_at_the_first_non_finite_step(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    err = one_line_error(["train", "--data", tiny_data, "--out", out, "--batch-size", "4", "--max-steps", "30",
                          "--lr", "1e4", "--warmup-steps", "0", "--ckpt-every", "1", "--log-every", "5",
                          "--no-progress"], capsys, "non-finite", "last good checkpoint")
    assert not (out / "run.json").exists() and not (out / "final").exists()
    ckpts = sorted((out / "checkpoints").iterdir())
    assert ckpts and str(ckpts[-1]) in err  # the message names it
    for d in ckpts:  # every checkpoint that was saved is finite
        assert all(torch.isfinite(t).all() for t in load_file(str(d / "model.safetensors")).values())
    if (out / "metrics.jsonl").exists():
        strict_json(out / "metrics.jsonl")


def test_a_diverging_lora_run_is_one_line_too(tiny_data, tmp_path, capsys):
    """PEFT reads transformers' deprecated is_gradient_checkpointing (a FutureWarning of two lines on every
    LoRA run): silenced there, and only there."""
    import warnings

    from selective_lm.model import peft_quiet

    with warnings.catch_warnings(record=True) as seen:  # what would be printed (pytest keeps warnings off stderr)
        warnings.simplefilter("always")  # every warning shows, however often it was seen before
        one_line_error(["train", "--data", tiny_data, "--out", tmp_path / "run", "--batch-size", "4", "--max-steps",
                        "6", "--lr", "1e4", "--warmup-steps", "0", "--ckpt-every", "1", "--log-every", "2",
                        "--no-progress", "lora.r=4"], capsys, "non-finite")
        with peft_quiet():
            warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert "another deprecation" in messages and not [m for m in messages if "is_gradient_checkpointing" in m]


def test_non_finite_steps_are_skipped_up_to_the_limit(tiny_data, tmp_path, monkeypatch):
    real = objective_mod.Objective.loss
    calls = {"n": 0}

    def poisoned(tl, mask, denom):
        calls["n"] += 1
        loss = real(tl, mask, denom)
        return loss * float("nan") if calls["n"] in (3, 7) else loss  # steps 3 and 7 (one micro-batch each)

    monkeypatch.setattr(objective_mod.Objective, "loss", staticmethod(poisoned))
    s = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), batch_size=4, max_steps=10, log_every=5,
                          eval_windows=4, max_nonfinite_steps=2, progress=False), console=False)
    assert s["status"] == "complete"
    rows = [r for r in strict_json(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert [r["nonfinite_steps"] for r in rows] == [1, 2]
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / "run" / "final" /
                                                               "model.safetensors")).values())
    calls["n"] = 0
    with pytest.raises(UserError, match="non-finite loss or gradient norm at step 3"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run2"), batch_size=4, max_steps=10, log_every=5,
                          eval_windows=4, max_nonfinite_steps=1, progress=False), console=False)


def test_json_files_never_hold_nan(tmp_path):
    from selective_lm.files import json_line, write_json

    write_json(tmp_path / "a.json", {"loss": float("nan"), "x": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"loss": None, "x": [None, 1.5]}
    assert json.loads(json_line({"loss": float("-inf")})) == {"loss": None}


def test_scoring_and_evaluation_refuse_non_finite_losses(tiny_data, reference, tmp_path, monkeypatch):
    import selective_lm.evaluate as evaluate_mod
    import selective_lm.scoring as scoring_mod
    from selective_lm.config import EvalConfig, ScoreConfig

    def nan(model, inputs, targets, entropy=False, **k):
        x = torch.full(targets.shape, float("nan"))
        return (x, x) if entropy else x

    monkeypatch.setattr(scoring_mod, "model_token_losses", nan)
    with pytest.raises(UserError, match="non-finite"):
        scoring_mod.score(ScoreConfig(data=str(tiny_data), model=str(reference / "ref" / "final"),
                                      out=str(tmp_path / "s"), progress=False))
    assert not (tmp_path / "s" / "manifest.json").exists()
    monkeypatch.setattr(evaluate_mod, "model_token_losses", nan)
    with pytest.raises(UserError, match="non-finite"):
        evaluate_mod.evaluate(EvalConfig(model=str(reference / "ref" / "final"), data=[str(tiny_data)],
                                         progress=False))


# --------------------------------------------------------------------------- one writer
@pytest.mark.parametrize("command", ["train", "score", "prepare", "study"])
def test_a_second_writer_is_refused_with_the_holders_pid(tiny_data, reference, tmp_path, capsys, command):
    out = tmp_path / "out"
    args = {"train": ["train", "--data", tiny_data, "--out", out, "--max-steps", "2", "--no-progress"],
            "score": ["score", "--data", tiny_data, "--model", reference / "ref" / "final", "--out", out,
                      "--no-progress"],
            "prepare": ["prepare", "--inputs", tiny_data.parent / "corpus.jsonl", "--out", out, "--no-progress"],
            "study": ["study", "--quick", "--out", out, "--no-progress"]}[command]
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from selective_lm.files import DirLock; "
                               f"l = DirLock({str(out)!r}, inside=False).__enter__(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(args, capsys, "in use by another slm process", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()
    with DirLock(out, inside=False):  # released when its holder died
        pass


def test_scores_changed_after_finishing_are_refused(tiny_data, reference, tmp_path):
    import shutil

    from selective_lm.data import TokenDataset
    from selective_lm.scores import load_scores

    shutil.copytree(reference / "scores", tmp_path / "s")
    f = tmp_path / "s" / "ref_losses.bin"
    data = bytearray(f.read_bytes())
    data[100:200] = bytes(100)  # same size, other rows (what two concurrent writers used to leave)
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_scores(tmp_path / "s", TokenDataset(tiny_data))


# --------------------------------------------------------------------------- seeded everything
@pytest.mark.parametrize("mode", ["clm", "lora", "online", "topk", "random", "stochastic"])
def test_identical_runs_give_identical_weights(tiny_data, reference, tmp_path, mode):
    kw = dict(data=str(tiny_data), batch_size=4, max_steps=4, log_every=2, eval_windows=4, progress=False, seed=5)
    if mode == "lora":
        kw["lora"] = LoraConfig(r=4, alpha=8)
    elif mode == "online":
        kw.update(objective="slm", strategy="stochastic", ref_model=str(reference / "ref" / "final"))
    elif mode != "clm":
        kw.update(objective="slm", strategy=mode, ref_scores=str(reference / "scores"))
    for name in ("a", "b"):
        train(TrainConfig(out=str(tmp_path / name), **kw), console=False)
    file = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    a, b = (load_file(str(tmp_path / n / "final" / file)) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- --overwrite loses nothing
def test_a_failing_overwrite_keeps_the_finished_run(tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    base = ["train", "--data", tiny_data, "--out", out, "--batch-size", "4", "--max-steps", "3", "--no-progress"]
    assert main([str(a) for a in base]) == 0
    before = snapshot(out)
    import selective_lm.train as train_mod

    def failing(t, step, *a, **k):
        if step == 1:
            raise UserError("the replacement failed mid-run")
        return real(t, step, *a, **k)

    real = train_mod.train_step
    monkeypatch.setattr(train_mod, "train_step", failing)
    one_line_error(base + ["--overwrite", "--lr", "0.01"], capsys, "replacement failed")
    assert snapshot(out) == before and not list(tmp_path.glob(".run.replaced"))
    monkeypatch.setattr(train_mod, "train_step", real)
    assert main([str(a) for a in base + ["--overwrite", "--lr", "0.01"]]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete" and snapshot(out) != before
    assert not list(tmp_path.glob(".run.replaced"))


def test_training_on_a_dataset_without_validation_split(tmp_path, capsys):
    from conftest import make_corpus

    make_corpus(tmp_path / "c.jsonl", n_docs=60)
    assert main(["prepare", "--inputs", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "ds"), "--vocab-size",
                 "300", "--seq-len", "32", "--val-fraction", "0", "--no-progress"]) == 0
    assert main(["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r"), "--max-steps", "2",
                 "--batch-size", "2", "--no-progress"]) == 0
    assert "no validation split" in capsys.readouterr().out


def test_binary_input_gets_a_warning_with_the_share_replaced(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "a.txt").write_bytes(b"plain words and numbers 1 2 3. " * 400 + rng.bytes(4000))
    assert main(["prepare", "--inputs", str(tmp_path / "a.txt"), "--out", str(tmp_path / "ds"), "--vocab-size",
                 "300", "--seq-len", "16", "--val-fraction", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "slm: warning:" in err and "were not valid UTF-8" in err


# --------------------------------------------------------------------------- bad input at the door
@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    assert main(["train", "--data", str(tiny_data), "--out", str(root / "run"), "--max-steps", "4", "--batch-size",
                 "4", "--ckpt-every", "2", "--no-progress"]) == 0
    return root


def _bad_inputs(tiny_data, finished, tmp_path):
    run = finished / "run"
    trunc = tmp_path / "truncated"
    import shutil

    shutil.copytree(run / "final", trunc)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    nocheck = tmp_path / "unsealed"  # a truncated checkpoint without index.json: the loader's own error
    shutil.copytree(trunc, nocheck)
    (nocheck / "index.json").unlink()
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "1 + 1?"}) + "\n")
    (tmp_path / "a-file").write_text("x")
    train = ["train", "--data", tiny_data, "--out", tmp_path / "new", "--no-progress", "--max-steps", "2"]
    return {
        "lr zero": (train + ["--lr", "0"], "lr must be > 0"),
        "lr negative": (train + ["lr=-1e-3"], "lr must be > 0"),
        "lr nan": (train + ["--lr", "nan"], "finite"),
        "beta1 one": (train + ["--beta1", "1.0"], "beta1"),
        "beta2 negative": (train + ["--beta2", "-0.1"], "beta2"),
        "batch zero": (train + ["--batch-size", "0"], "batch_size"),
        "grad accum zero": (train + ["--grad-accum", "0"], "grad_accum"),
        "min lr ratio": (train + ["min_lr_ratio=2"], "min_lr_ratio"),
        "weight decay": (train + ["--weight-decay", "-1"], "weight_decay"),
        "lora targets": (train + ["lora.r=4", "lora.targets=[nope_proj]"], "lora.targets"),
        "missing model": (train + ["--model", tmp_path / "nope"], "neither a preset"),
        "missing ref model": (train + ["--objective", "slm", "--ref-model", tmp_path / "nope"], "not a checkpoint"),
        "truncated model": (train + ["--model", trunc], "damaged"),
        "truncated unsealed": (train + ["--model", nocheck], "cannot load checkpoint"),
        "budget below a step": (["train", "--data", tiny_data, "--out", tmp_path / "new", "--no-progress",
                                 "--max-tokens", "100"], "less than one optimizer step"),
        "out under a file": (["train", "--data", tiny_data, "--out", tmp_path / "a-file" / "run", "--no-progress",
                              "--max-steps", "1"], "a-file"),
        "score missing model": (["score", "--data", tiny_data, "--model", tmp_path / "nope", "--out",
                                 tmp_path / "s"], "not a checkpoint"),
        "eval missing model": (["eval", "--model", tmp_path / "nope", "--data", tiny_data], "not a checkpoint"),
        "eval batch zero": (["eval", "--model", run / "final", "--data", tiny_data, "--batch-size", "0"],
                            "batch_size"),
        "fewshot without answer": (["eval", "--model", run / "final", "--fewshot", tmp_path / "q.jsonl"],
                                   "answer"),
        "resume finished": (["train", "--data", tiny_data, "--out", run, "--max-steps", "4", "--batch-size", "4",
                             "--ckpt-every", "2", "--no-progress", "--resume"], "finished run"),
        # outputs go into their own kind of directory only: never beside a run's (or anything else's) files
        "score into a run": (["score", "--data", tiny_data, "--model", run / "final", "--out", run, "--no-progress"],
                             "is not an `slm score` output"),
        "score over a dataset": (["score", "--data", tiny_data, "--model", run / "final", "--out", tiny_data,
                                  "--overwrite", "--no-progress"], "is not an `slm score` output"),
        "score into other files": (["score", "--data", tiny_data, "--model", run / "final", "--out", tmp_path,
                                    "--no-progress"], "is not an `slm score` output"),
        "hf-out over a run": (["score", "--data", tiny_data, "--model", run / "final", "--out", tmp_path / "s",
                               "--hf-out", run, "--overwrite", "--no-progress"], "is not a scored dataset"),
        "dump into a run": (["eval", "--model", run / "final", "--data", tiny_data, "--dump", run, "--no-progress"],
                            "is not a directory of loss dumps"),
        # an option given twice: one of the two would be dropped
        "flag and key=value": (train + ["--lr", "0.001", "lr=abc", "--dry-run"], "lr is given twice"),
        "key=value twice": (train + ["lr=0.001", "lr=abc", "--dry-run"], "lr is given twice"),
        "nested key twice": (train + ["lora.r=4", "lora={r: 8}", "--dry-run"], "lora is given twice"),
    }


CASES = ["lr zero", "lr negative", "lr nan", "beta1 one", "beta2 negative", "batch zero", "grad accum zero",
         "min lr ratio", "weight decay", "lora targets", "missing model", "missing ref model", "truncated model",
         "truncated unsealed", "budget below a step", "out under a file", "score missing model", "eval missing model",
         "eval batch zero", "fewshot without answer", "resume finished", "score into a run", "score over a dataset",
         "score into other files", "hf-out over a run", "dump into a run", "flag and key=value", "key=value twice",
         "nested key twice"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_changes_nothing(tiny_data, finished, tmp_path, capsys, case):
    args, needle = _bad_inputs(tiny_data, finished, tmp_path)[case]
    before_run, before_tmp = snapshot(finished), snapshot(tmp_path)
    one_line_error(args, capsys, needle)
    assert snapshot(finished) == before_run and snapshot(tmp_path) == before_tmp


def test_disk_full_while_allocating_scores_is_one_line(tiny_data, reference, tmp_path, capsys, monkeypatch):
    import errno
    import os

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    one_line_error(["score", "--data", tiny_data, "--model", reference / "ref" / "final", "--out", tmp_path / "s",
                    "--no-progress"], capsys, f"no space left on {tmp_path / 's'}")
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_resume_after_the_dataset_was_prepared_again(tmp_path, capsys):
    from conftest import make_corpus

    prep = ["prepare", "--inputs", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "ds"), "--vocab-size", "300",
            "--seq-len", "32", "--no-progress"]
    make_corpus(tmp_path / "c.jsonl", n_docs=80, seed=1)
    assert main(prep) == 0
    args = ["train", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r"), "--max-steps", "4",
            "--batch-size", "2", "--ckpt-every", "2", "--no-progress"]
    interrupted(args, 3)
    make_corpus(tmp_path / "c.jsonl", n_docs=80, seed=2)
    assert main(prep + ["--overwrite"]) == 0
    capsys.readouterr()
    one_line_error(args + ["--resume"], capsys, "prepared again")


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("keep, back_to", [(2, 2), (1, 0)])
def test_damaged_latest_checkpoint_is_never_resumed_from(tiny_data, tmp_path, capsys, keep, back_to):
    args = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--batch-size", "4", "--max-steps",
            "6", "--ckpt-every", "2", "--no-progress", f"ckpt_keep_states={keep}"]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    interrupted(args, 5)
    w = tmp_path / "run" / "checkpoints" / "step_000004" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10:] = bytes(10)  # bit rot in the newest checkpoint: same size, other bytes
    w.write_bytes(bytes(data))
    capsys.readouterr()
    resumed = []
    import selective_lm.train as train_mod

    real = train_mod.train_step
    train_mod.train_step = lambda t, step, *a, **k: (resumed.append(step), real(t, step, *a, **k))[1]
    try:
        assert main(args + ["--resume"]) == 0
    finally:
        train_mod.train_step = real
    err = capsys.readouterr().err
    assert "step_000004 is damaged" in err and resumed[0] == back_to
    # two states kept: back one interval, to step 2; one kept: step 2 has its weights only, so from step 0
    assert ("resuming from the one before, step_000002" in err) == (back_to == 2)
    assert ("training starts again from step 0" in err) == (back_to == 0)
    a, b = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("run", "whole"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # the damaged one went, no temporary left


@pytest.mark.parametrize("keep", [1, 2])
def test_time_based_checkpoints_roll_and_vanish_at_the_end(tiny_data, tmp_path, monkeypatch, keep):
    import selective_lm.checkpoint as ckpt_mod

    seen = []
    real = ckpt_mod.retire_checkpoints
    monkeypatch.setattr("selective_lm.train.retire_checkpoints", lambda run, *a: (
        real(run, *a), seen.append(sorted(p.name for p in ckpt_mod.checkpoint_dirs(run))))[0])
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), batch_size=4, max_steps=7, log_every=2,
                      ckpt_minutes=1e-9, eval_windows=4, progress=False, ckpt_keep_states=keep),
          console=False)  # due at every log step
    # each replaced the one before the newest `keep`
    assert seen[:3] == ([["step_000002"], ["step_000004"], ["step_000006"]] if keep == 1 else
                        [["step_000002"], ["step_000002", "step_000004"], ["step_000004", "step_000006"]])
    assert [p.name for p in ckpt_mod.checkpoint_dirs(tmp_path / "run")] == ["step_000007"]


def test_relative_and_absolute_spellings_resume_the_same_run(tiny_data, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", os.path.relpath(tiny_data, tmp_path), "--out", "run", "--batch-size", "4",
            "--max-steps", "4", "--ckpt-every", "2", "--no-progress"]
    interrupted(args, 3)
    absolute = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run")] + args[5:] + ["--resume"]
    assert main(absolute) == 0


def test_disk_full_while_saving_a_checkpoint_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    import errno
    import os

    import selective_lm.model as model_mod

    class Full:  # a file on a full disk
        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    real, calls = model_mod.torch.save, {"n": 0}

    def full(obj, f, *a, **k):  # the second checkpoint's training state meets a full disk
        calls["n"] += 1
        if calls["n"] == 2:
            f.f = Full()
        return real(obj, f, *a, **k)

    monkeypatch.setattr(model_mod.torch, "save", full)
    out = tmp_path / "run"
    one_line_error(["train", "--data", tiny_data, "--out", out, "--batch-size", "4", "--max-steps", "4",
                    "--ckpt-every", "2", "--no-progress"], capsys,
                   f"no space left on {out / 'checkpoints' / 'step_000004' / 'training_state.pt'}", "--resume")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000002"]  # the good one, nothing half
    assert not (out / "run.json").exists()
