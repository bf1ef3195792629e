"""lm-evaluation-harness: model arguments, the exported slm_fewshot task, and agreement with `slm eval --fewshot`."""
import importlib.util
import json

import pytest

from selective_lm.cli import main
from selective_lm.harness import model_args, process_result

QUESTIONS = [{"question": q, "answer": a, "family": "add"} for q, a in
             [("What is 2 + 3?", "5"), ("What is 7 + 1?", "8"), ("Add 4 and 4.", "8"), ("What is 10 + 5?", "15")]]
EXEMPLARS = [{"question": "What is 1 + 1?", "solution": "1 + 1 = 2.", "answer": "2"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lora_checkpoint_runs_as_peft_on_its_base(tmp_path):
    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    (run / "base" / "config.json").write_text("{}")
    (run / "final").mkdir()
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "../base"}))
    assert model_args(run / "final", run / "final") == {"pretrained": str((run / "base").resolve()),
                                                        "peft": str((run / "final").resolve()),
                                                        "tokenizer": str((run / "final").resolve()), "dtype": "float32"}
    assert model_args(run / "base", tmp_path / "tok", "bf16") == {"pretrained": str((run / "base").resolve()),
                                                                 "tokenizer": str((tmp_path / "tok").resolve()),
                                                                 "dtype": "bfloat16"}
    assert model_args(run / "base", run / "base", "auto", "cuda")["dtype"] == "bfloat16"
    assert model_args(run / "base", run / "base", "auto", "cpu")["dtype"] == "float32"


def test_slm_fewshot_scores_like_slm_eval():
    doc = {"answer": "8"}
    assert process_result(doc, [" 7 + 1 = 8.\nAnswer: 8."]) == {"exact_match": 1.0}
    assert process_result(doc, [" 7 + 1 = 8.\nAnswer:  8 "]) == {"exact_match": 1.0}
    assert process_result(doc, [" 7 + 1 = 9.\nAnswer: 9"]) == {"exact_match": 0.0}
    assert process_result(doc, [" 7 + 1 = 8."]) == {"exact_match": 0.0}  # no answer line
    assert process_result(doc, [" so\n\nAnswer: 8"]) == {"exact_match": 0.0}  # only the first paragraph counts


def test_missing_lm_eval_is_one_line(tiny_data, reference, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    code = main(["eval", "--model", str(reference / "ref" / "final"), "--lm-eval", "hellaswag", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "pip install 'selective-lm[eval]'" in err


STUB = {  # lm-eval 0.4's shape where slm meets it: a git hash asked of `git describe`, bars with disable=False
    "__init__.py": "from . import evaluator, tasks\nfrom .evaluator import simple_evaluate\n",
    "evaluator.py": """import subprocess
from tqdm import tqdm


def get_git_commit_hash():
    try:
        return subprocess.check_output(["git", "describe", "--always"]).strip().decode()
    except subprocess.CalledProcessError:
        return None


def simple_evaluate(model, model_args, tasks, task_manager, batch_size, device, log_samples, limit):
    for _ in tqdm(range(3), desc="Running generate_until requests", disable=False):
        pass
    return {"results": {t: {"exact_match,none": 0.5} for t in tasks}, "git_hash": get_git_commit_hash()}
""",
    "tasks.py": """class TaskManager:
    def __init__(self, include_path=None, include_defaults=True):
        self.all_tasks = ["stub_task"]
""",
}


def test_lm_eval_prints_only_its_results(reference, tmp_path, capfd, monkeypatch, request):
    """No bars (--no-progress, or not a terminal) and no "fatal: not a git repository": with a stand-in for
    lm-eval that prints both when left alone (the real one: test_lm_eval_runs_slm_fewshot_like_slm_eval)."""
    import sys

    for name, text in STUB.items():
        (tmp_path / "stub" / "lm_eval").mkdir(parents=True, exist_ok=True)
        (tmp_path / "stub" / "lm_eval" / name).write_text(text)
    def forget_lm_eval():  # whichever lm_eval was imported: the stand-in must not outlive this test
        for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
            monkeypatch.delitem(sys.modules, name)

    forget_lm_eval()
    request.addfinalizer(lambda: [sys.modules.pop(m) for m in list(sys.modules)
                                  if m == "lm_eval" or m.startswith("lm_eval.")])
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-repository"))  # git describe fails here, as outside a repository
    for progress in ("--no-progress", "--progress"):  # the captured stderr is no terminal: no bar either way
        assert main(["eval", "--model", str(reference / "ref" / "final"), "--lm-eval", "stub_task", progress]) == 0
        out, err = capfd.readouterr()
        assert "lm-eval stub_task: exact_match 0.5000" in out and err == "", err
    import lm_eval

    assert lm_eval.__file__.startswith(str(tmp_path))  # the stand-in ran, and it prints when left alone:
    lm_eval.simple_evaluate(None, None, ["stub_task"], None, 1, "cpu", False, None)
    err = capfd.readouterr().err
    assert "Running generate_until requests" in err and "fatal: not a git repository" in err, err


@pytest.mark.lm_eval
def test_lm_eval_runs_slm_fewshot_like_slm_eval(tiny_data, reference, tmp_path, capfd, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.chdir(tmp_path)  # outside a git repository, where git describe fails
    final = reference / "ref" / "final"
    q, ex = write_jsonl(tmp_path / "q.jsonl", QUESTIONS), write_jsonl(tmp_path / "ex.jsonl", EXEMPLARS)
    tasks = tmp_path / "tasks"
    assert main(["eval", "--model", str(final), "--fewshot", str(q), "--exemplars", str(ex), "--shots", "1",
                 "--max-new-tokens", "12", "--batch-size", "1", "--lm-eval", "slm_fewshot", "--lm-eval-tasks-dir",
                 str(tasks), "--out", str(tmp_path / "m.json"), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert "lm-eval slm_fewshot: exact_match" in out and err == "", err  # no bars, no git, no PEFT warning
    r = json.loads((tmp_path / "m.json").read_text())
    ours, theirs = r["fewshot"], r["lm_eval"]
    assert theirs["model_args"] == {"pretrained": str(final), "tokenizer": str(final), "dtype": "float32",
                                    "max_length": 128}
    assert theirs["results"]["slm_fewshot"]["exact_match,none"] == ours["accuracy"]
    assert theirs["n-samples"]["slm_fewshot"]["effective"] == ours["n"] == len(QUESTIONS)
    # the same prompts give the same greedy text, question by question (a tiny model rarely answers right,
    # so the texts, not only the accuracy, are compared)
    assert [e["output"] for e in theirs["examples"]] == [e["output"] for e in ours["examples"]]
    assert [e["correct"] for e in theirs["examples"]] == [e["correct"] for e in ours["examples"]]
    assert any(e["output"].strip() for e in ours["examples"])
    docs = [json.loads(x) for x in (tasks / "slm_fewshot.jsonl").read_text().splitlines()]
    assert docs[0]["prompt"] == "Problem: What is 1 + 1?\nSolution: 1 + 1 = 2.\nAnswer: 2\n\nProblem: What is 2 + 3?\nSolution:"
    assert "task: slm_fewshot" in (tasks / "slm_fewshot.yaml").read_text()


def test_an_unreachable_hub_is_one_line_naming_the_task(reference, tmp_path, capsys, monkeypatch, request):
    """Offline, lm-eval's datasets raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (...)"): one line
    that says the task's data cannot be fetched, not an OS error's disk hint."""
    import sys

    stub = dict(STUB)
    stub["evaluator.py"] = STUB["evaluator.py"].replace(
        '    for _ in tqdm(range(3), desc="Running generate_until requests", disable=False):\n        pass\n',
        '    try:\n        raise FileNotFoundError("Dataset Rowan/hellaswag is not cached in None")\n'
        '    except FileNotFoundError as e:\n'
        '        raise ConnectionError("Couldn\'t reach \'Rowan/hellaswag\' on the Hub (OfflineModeIsEnabled)") from e\n')
    stub["tasks.py"] = STUB["tasks.py"].replace('["stub_task"]', '["hellaswag"]')
    for name, text in stub.items():
        (tmp_path / "stub" / "lm_eval").mkdir(parents=True, exist_ok=True)
        (tmp_path / "stub" / "lm_eval" / name).write_text(text)
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    request.addfinalizer(lambda: [sys.modules.pop(m) for m in list(sys.modules)
                                  if m == "lm_eval" or m.startswith("lm_eval.")])
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    code = main(["eval", "--model", str(reference / "ref" / "final"), "--lm-eval", "hellaswag", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert "cannot fetch the data of task hellaswag (dataset Rowan/hellaswag)" in err and "::" not in err, err
    assert "space" not in err and "permissions" not in err, err
