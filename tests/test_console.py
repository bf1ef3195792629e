"""The CLI as a newcomer meets it: a small log off a terminal, instant --help, examples that parse,
`quick` the same however it is given, the study's ETA from measured speed, threads per process."""
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selective_lm.cli import EXAMPLES, _commands, main
from selective_lm.runtime import cpu_quota, default_threads, interactive, progress
from selective_lm.study.plan import PRIOR_RATES, Stage, eta, measured_rates

SRC = str(Path(__file__).resolve().parents[1] / "src")


def env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_train_log_off_a_terminal_is_small_and_has_the_useful_lines(tiny_data, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:  # stdout and stderr into one file, as under nohup
        r = subprocess.run([sys.executable, "-m", "selective_lm", "train", "--data", str(tiny_data), "--out",
                            str(tmp_path / "run"), "--batch-size", "4", "--max-steps", "40", "--log-every", "10"],
                           stdout=f, stderr=subprocess.STDOUT, env=env(), timeout=300, check=False)
    text = log.read_text()
    assert r.returncode == 0, text
    lines = text.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step ") and "loss" in line][:4] == \
        ["10/40", "20/40", "30/40", "40/40"], text
    assert "step 40: val loss" in text and "finished 40 steps" in text, text
    assert "\r" not in text and len(lines) <= 10 and len(text) < 2000, text  # no bar refreshes


def test_bars_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert interactive(Tty()) and not interactive(io.StringIO())
    assert progress(range(3)).disable  # pytest's stderr is no terminal
    assert list(progress(range(3), enabled=False)) == [0, 1, 2]


def test_help_imports_neither_torch_nor_transformers():
    code = ("import sys, contextlib, io\n"
            "from selective_lm.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['study', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120, check=False)
    assert r.returncode == 0, r.stderr


# every subcommand's --help example, with the arguments the command needs anyway
NEEDED = {"prepare": ["--inputs", "c.jsonl", "--out", "ds"], "score": ["--data", "ds", "--model", "m", "--out", "s"],
          "train": ["--data", "ds", "--out", "run"], "eval": ["--model", "m", "--data", "ds"], "study": [],
          "filter": ["--data", "ds", "--ref-scores", "s", "--inputs", "c.jsonl", "--out", "kept"],
          "corpora": ["--out", "c"], "export": ["--run", "run", "--out", "exported"]}


@pytest.mark.parametrize("command", sorted(NEEDED))
def test_help_example_is_the_commands_own(command, capsys):
    assert set(EXAMPLES) == set(_commands()) == set(NEEDED)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert EXAMPLES[command] in " ".join(capsys.readouterr().out.split())
    assert main([command, *NEEDED[command], *EXAMPLES[command].split(), "--dry-run"]) == 0, capsys.readouterr().err
    resolved = capsys.readouterr().out
    for item in EXAMPLES[command].split():  # each override shows in the resolved config
        key = item.split("=")[0].split(".")[-1]
        assert f"{key}:" in resolved, (item, resolved)


def test_quick_is_the_same_as_flag_override_or_yaml(tmp_path, capsys):
    def resolved(*args):
        assert main(["study", *map(str, args), "--dry-run"]) == 0
        return capsys.readouterr().out

    flag = resolved("--quick")
    assert "cpt_tokens: 24576" in flag and "quick: true" in flag
    assert resolved("quick=true") == flag
    (tmp_path / "q.yaml").write_text("quick: true\n")
    assert resolved("--config", tmp_path / "q.yaml") == flag
    assert "cpt_tokens: 5000" in resolved("quick=true", "cpt_tokens=5000")  # explicit values still win
    assert "cpt_tokens: 160000" in resolved("quick=false")


def test_eta_refined_from_measured_speed():
    def st(kind, tokens, done=False, cost=0.0):
        return Stage("s", "", cost, done, None, tokens=tokens, kind=kind)

    stages = [st("", 0, cost=10.0), st("train", 1200, done=True), st("train", 24_000), st("forward", 40_000)]
    prior = measured_rates({})
    assert prior == PRIOR_RATES
    assert eta(stages, prior) == pytest.approx(10 + 24_000 / 12_000 + 1)
    # 1,200 tokens trained in 0.6 s: 2,000 tok/s, so the 24,000 still to train take 12 s
    rates = measured_rates({"train": (1200.0, 0.6)})
    assert rates == {"train": 2000.0, "forward": 40_000.0}
    assert eta(stages, rates) == pytest.approx(10 + 12 + 1)
    assert measured_rates({"train": (0.0, 5.0)})["train"] == 12_000.0  # nothing measured yet


def test_default_threads(tmp_path):
    assert default_threads(16) == 16 and default_threads(16, 4) == 4 and default_threads(2, 8) == 1
    assert default_threads(64, 1, quota=2.5) == 2 and default_threads(4, 1, quota=0.5) == 1
    assert default_threads(8, 2, quota=None) == 4
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cpu_quota(tmp_path) == 3.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    assert cpu_quota(tmp_path / "nowhere") is None


def test_threads_set_unless_omp_num_threads(monkeypatch):
    import torch

    from selective_lm.runtime import set_default_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert set_default_threads() is None
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(len(os.sched_getaffinity(0))))
        assert set_default_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
