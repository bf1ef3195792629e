"""Every kill is resumable: `prepare`, `score`, `train` and `study` are SIGKILLed at fixed points (each
save, between the last checkpoint and final/, before run.json) and at seeded random points, and the
re-run must complete with the results of an uninterrupted run; nothing may look complete before it is."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import selective_lm
from selective_lm.cli import main

KILLER = Path(__file__).with_name("killer.py")
RNG = random.Random(20261125)  # the "random" kill points, reproducible


def killed(args, *spec):
    src = Path(selective_lm.__file__).parents[1]  # the killed process runs the code under test, not another install
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(KILLER.parent), str(src)])}
    r = subprocess.run([sys.executable, str(KILLER), *map(str, spec), "--", *map(str, args)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == -9, f"not killed (exit {r.returncode}): {r.stderr[-2000:]}"


def no_temporaries(*dirs):
    for d in dirs:
        if Path(d).is_dir():
            left = [p.name for p in Path(d).iterdir() if p.name.endswith((".tmp", ".old", ".partial"))]
            assert not left, left


def metrics(run):
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def train_args(data, scores, out, *extra):
    return [str(a) for a in ["train", "--data", data, "--out", out, "--objective", "slm", "--strategy", "stochastic", "--ratio", "0.5",
            "--ref-scores", scores, "--batch-size", "4", "--max-steps", "10", "--ckpt-every", "3", "--log-every", "2",
            "--eval-every", "5", "--eval-windows", "4", "--no-progress", *extra]]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    assert main(train_args(tiny_data, reference / "scores", root / "run")) == 0
    return root / "run"


TRAIN_KILLS = [
    ("selective_lm.model.commit_dir", 1, "before", []),  # the first checkpoint, half written
    ("selective_lm.model.commit_dir", 2, "after", []),  # right after the step-6 checkpoint
    ("selective_lm.model.commit_dir", 4, "before", []),  # the last (step-10) checkpoint, half written
    ("selective_lm.model.commit_dir", 5, "before", []),  # between the last checkpoint and final/
    ("selective_lm.checkpoint.write_json", 1, "after", []),  # step 3's index forgot its state, the file not gone
    ("selective_lm.train.write_json", 1, "before", []),  # final/ written, run.json not
    ("selective_lm.train.train_step", RNG.randint(1, 10), RNG.choice(["before", "after"]), []),
    ("selective_lm.train.train_step", RNG.randint(2, 9), "after", ["--ckpt-every", "0"]),  # no checkpoint at all
]


@pytest.mark.parametrize("target, n, when, extra", TRAIN_KILLS)
def test_killed_training_resumes_to_the_same_run(tiny_data, reference, uninterrupted, tmp_path, target, n, when,
                                                 extra):
    out = tmp_path / "run"
    args = train_args(tiny_data, reference / "scores", out, *extra)
    killed(args, target, n, when)
    assert not (out / "run.json").exists() or (out / "final" / "model.safetensors").is_file()
    assert main(args + ["--resume"]) == 0
    a, b = load_file(str(out / "final" / "model.safetensors")), load_file(str(uninterrupted / "final" /
                                                                                "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # bit for bit on CPU
    assert metrics(out) == metrics(uninterrupted)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    no_temporaries(out, out / "checkpoints", tmp_path)


@pytest.mark.parametrize("part", ["training_state.pt", "model.safetensors"])
def test_a_kill_that_truncates_the_newest_checkpoint_costs_one_interval(tiny_data, reference, uninterrupted, tmp_path,
                                                                        capsys, part):
    """A power cut after the step-9 checkpoint whose data never reached the disk: one of its files is cut short.
    The run resumes from step 6 (ckpt_keep_states=2: the one before keeps its state), not from step 0."""
    out = tmp_path / "run"
    args = train_args(tiny_data, reference / "scores", out)
    killed(args, "selective_lm.train.train_step", 10, "before")  # step 9 saved, older states dropped, step 10 due
    f = out / "checkpoints" / "step_000009" / part
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "step_000009 is damaged" in err and "resuming from the one before, step_000006" in err, err
    a, b = load_file(str(out / "final" / "model.safetensors")), load_file(str(uninterrupted / "final" /
                                                                                "model.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert metrics(out) == metrics(uninterrupted)
    no_temporaries(out, out / "checkpoints", tmp_path)


PREPARE_KILLS = [("selective_lm.data.commit_dir", 1, "before"), ("selective_lm.data.write_json", 1, "after"),
                 ("selective_lm.data.load_tokenizer", 1, RNG.choice(["before", "after"]))]


@pytest.mark.parametrize("target, n, when", PREPARE_KILLS)
def test_killed_prepare_reruns_to_the_same_dataset(tiny_data, tmp_path, target, n, when):
    from conftest import make_corpus

    make_corpus(tmp_path / "c.jsonl", n_docs=120)
    args = ["prepare", "--inputs", tmp_path / "c.jsonl", "--out", tmp_path / "ds", "--vocab-size", "300", "--seq-len",
            "32", "--no-progress"]
    killed(args, target, n, when)
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert main([str(a) for a in args]) == 0
    assert main([str(a) for a in args[:4]] + [str(tmp_path / "ds2")] + [str(a) for a in args[5:]]) == 0
    fp = [json.loads((tmp_path / d / "manifest.json").read_text())["fingerprint"] for d in ("ds", "ds2")]
    assert fp[0] == fp[1]
    no_temporaries(tmp_path)


def test_killed_prepare_resumes_its_units(tmp_path, monkeypatch):
    """SIGKILL as the fourth unit starts: the re-run tokenizes only the units without a summary, and the dataset is
    the one an uninterrupted prepare makes."""
    import selective_lm.data as data_mod
    import selective_lm.shards as shards
    from conftest import make_corpus

    make_corpus(tmp_path / "c.jsonl", n_docs=300)
    args = ["prepare", "--inputs", tmp_path / "c.jsonl", "--out", tmp_path / "ds", "--vocab-size", "300", "--seq-len",
            "32", "--no-progress"]
    killed(args, "selective_lm.data._run_task", 4, "before", "selective_lm.shards.UNIT_BYTES=20000")
    assert len(list((tmp_path / ".ds.prepare" / "units").glob("u*.json"))) == 3
    assert not (tmp_path / "ds").exists()
    monkeypatch.setattr(shards, "UNIT_BYTES", 20000)
    real, calls = data_mod._run_task, []
    monkeypatch.setattr(data_mod, "_run_task", lambda task: calls.append(task[:2]) or real(task))
    assert main([str(a) for a in args]) == 0
    units = len(shards.plan([str(tmp_path / "c.jsonl")])["units"])
    assert units > 5 and len(calls) == units + 1 - 3  # the units not done, and the input's sha256
    assert main([str(a) for a in args[:4]] + [str(tmp_path / "ds2")] + [str(a) for a in args[5:]]) == 0
    fp = [json.loads((tmp_path / d / "manifest.json").read_text())["fingerprint"] for d in ("ds", "ds2")]
    assert fp[0] == fp[1] and not (tmp_path / ".ds.prepare").exists()
    no_temporaries(tmp_path)


SCORE_KILLS = [("selective_lm.scoring.model_token_losses", RNG.randint(2, 6), "after"),
               ("selective_lm.scoring.write_json", 2, "before"),  # the file in place, the manifest not yet
               ("selective_lm.scoring.sha256_file", 1, "before")]


@pytest.mark.parametrize("target, n, when", SCORE_KILLS)
def test_killed_scoring_reruns_to_the_same_scores(tiny_data, reference, tmp_path, target, n, when):
    out = tmp_path / "scores"
    args = ["score", "--data", tiny_data, "--model", reference / "ref" / "final", "--out", out, "--batch-size", "16",
            "--no-progress"]
    killed(args, target, n, when, "selective_lm.scoring.FLUSH_EVERY_S=-1")  # progress recorded after every batch
    assert not (out / "manifest.json").exists()
    assert main([str(a) for a in args]) == 0
    assert np.array_equal(np.fromfile(out / "ref_losses.bin", dtype=np.float16),
                          np.fromfile(reference / "scores" / "ref_losses.bin", dtype=np.float16))
    no_temporaries(out)


def test_killed_overwrite_keeps_the_old_run_until_the_new_one_completes(tiny_data, reference, uninterrupted,
                                                                        tmp_path):
    out = tmp_path / "run"
    new = train_args(tiny_data, reference / "scores", out)
    assert main(train_args(tiny_data, reference / "scores", out, "--lr", "0.02")) == 0
    old_final = (out / "final" / "model.safetensors").read_bytes()
    # killed before the new run saved anything: a plain re-run brings the old run back (and refuses, it is finished)
    killed(new + ["--overwrite"], "selective_lm.train.train_step", 2, "before")
    assert (tmp_path / ".run.replaced" / "run.json").is_file()
    assert main(new) == 2
    assert (out / "final" / "model.safetensors").read_bytes() == old_final and not (tmp_path / ".run.replaced").exists()
    # killed after the new run's second checkpoint: --resume continues the new run, the old one goes at its end
    killed(new + ["--overwrite"], "selective_lm.model.commit_dir", 2, "after")
    assert (tmp_path / ".run.replaced" / "final" / "model.safetensors").read_bytes() == old_final
    assert main(new + ["--resume"]) == 0
    assert not (tmp_path / ".run.replaced").exists()
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (out, uninterrupted))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert metrics(out) == metrics(uninterrupted)
