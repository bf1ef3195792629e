"""Exact at any world size, on CPU with gloo: N ranks × batch B give the run of 1 rank × batch N·B.

One `torch.multiprocessing` spawn of two ranks runs every distributed job (trainings of each strategy
and scope under DDP and FSDP2, a resume, sharded scoring and evaluation, the cross-rank error
checks); the single-process references run in the test process. Each rank records the masks the
objective selected, so the tests compare selections exactly and weights within fp32 tolerance.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import dist_env, free_port
from safetensors.torch import load_file

import selective_lm.objective as objective_mod
import selective_lm.train as train_mod
from selective_lm.config import EvalConfig, ScoreConfig, TrainConfig
from selective_lm.evaluate import evaluate, load_token_losses
from selective_lm.files import UserError
from selective_lm.scoring import score
from selective_lm.train import train

WORLD = 2
STRATEGIES = ("topk", "random", "stochastic")


def _cfg(dataset, out, batch_size, **kw):
    base = dict(data=str(dataset), out=str(out), model="tiny", batch_size=batch_size, grad_accum=2, max_steps=3,
                lr=3e-3, warmup_steps=1, log_every=1, eval_windows=6, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _jobs(data, ref, root):
    """name -> (config for each of 2 ranks, config for 1 process with twice the batch)."""
    slm = dict(objective="slm", ratio=0.5, ref_scores=str(ref / "scores"))
    jobs = {f"ddp-{s}": dict(strategy=s, **slm) for s in STRATEGIES}
    jobs["ddp-topk"]["save_selection"] = True  # the saved masks, too, do not depend on the world size
    jobs["ddp-clm"] = {}
    jobs["ddp-step-topk"] = dict(strategy="topk", selection_scope="step", **slm)
    jobs["ddp-online-stochastic"] = dict(objective="slm", ratio=0.5, strategy="stochastic",
                                         ref_model=str(ref / "ref" / "final"))
    # token weights over the global tensor, and a ratio that changes per step after a CLM warm-up
    jobs["ddp-soft"] = dict(weighting="soft", weight_temperature=0.5, **slm)
    jobs["ddp-step-dft"] = dict(objective="slm", weighting="dft", selection_scope="step")
    # per-window selection with per-window draws; ESLM's reference-free score ranked over the whole step
    jobs["ddp-sequence-stochastic"] = dict(strategy="stochastic", selection_scope="sequence", **slm)
    jobs["ddp-step-eslm-entropy"] = dict(objective="slm", ratio=0.5, score="model-entropy", selection_scope="step")
    # a mixture (here of one dataset's windows weighted twice: two orders, two score lookups in one index space)
    jobs["ddp-mixture"] = dict(strategy="topk", data=f"{data}:2,{data}:1", ref_scores=[str(ref / "scores")] * 2,
                               objective="slm", ratio=0.5, eval_data=[f"target={data}"])
    jobs["ddp-schedule"] = dict(strategy="topk", ratio_schedule="linear", ratio_end=0.3, clm_warmup=0.34,
                                **{**slm, "ratio": 0.6})
    # log_every 3 with ckpt_every 2: the step-2 checkpoint holds running metric sums of both ranks
    jobs["fsdp-topk"] = dict(strategy="topk", parallel="fsdp", max_steps=4, ckpt_every=2, log_every=3,
                             save_selection=True, **slm)
    jobs["fsdp-step-stochastic"] = dict(strategy="stochastic", selection_scope="step", parallel="fsdp",
                                        ref_model=str(ref / "ref" / "final"), objective="slm", ratio=0.5)
    # the single-process reference of an FSDP job is the same run under DDP (i.e. unwrapped)
    return {name: (_cfg(data, root / "multi" / name, 2, **kw),
                   _cfg(data, root / "single" / name, 4, **{**kw, "parallel": "ddp"})) for name, kw in jobs.items()}


class _Recorder:
    """Wraps Objective.select to keep every mask it returns (per call, per micro-batch)."""

    def __init__(self):
        self.calls, self.real = [], objective_mod.Objective.select

    def __enter__(self):
        rec = self

        def select(self, excess, valid, generator):
            masks = rec.real(self, excess, valid, generator)
            rec.calls.append([m.clone() for m in masks])
            return masks

        objective_mod.Objective.select = select
        return self

    def __exit__(self, *exc):
        objective_mod.Objective.select = self.real


def _worker(rank, world, port, data, ref, root):
    dist_env(rank, world, port)
    torch.set_num_threads(1)
    from selective_lm import dist
    from selective_lm.files import UserError

    out = {}
    try:
        for name, (cfg, _) in _jobs(data, ref, root).items():
            with _Recorder() as rec:
                train(cfg, console=False)
            out[name] = rec.calls
        # the same run interrupted as step 3 begins (after the step-2 checkpoint, the only one then holding a
        # training state), kept as fsdp-topk-cut, then resumed
        run = root / "multi" / "fsdp-topk"
        if rank == 0:
            os.replace(run, root / "multi" / "fsdp-topk-uncut")
        dist.barrier()
        cfg = _jobs(data, ref, root)["fsdp-topk"][0]
        real_step = train_mod.train_step

        def stop(t, step, *a, **k):
            if step == 2:
                raise KeyboardInterrupt
            return real_step(t, step, *a, **k)

        train_mod.train_step = stop
        try:
            train(cfg, console=False)
        except KeyboardInterrupt:
            pass
        finally:
            train_mod.train_step = real_step
        if rank == 0:
            shutil.copytree(run, root / "multi" / "fsdp-topk-cut")
        dist.barrier()
        cfg.resume = True
        train(cfg, console=False)
        score(ScoreConfig(data=str(data), model=str(ref / "ref" / "final"), out=str(root / "multi" / "scores"),
                          batch_size=8, device="cpu", progress=False))
        evaluate(EvalConfig(model=str(ref / "ref" / "final"), data=[str(data)], batch_size=4, device="cpu",
                            dump=str(root / "multi" / "dump"), out=str(root / "multi" / "eval.json"), progress=False))
        # a check that fails on rank 1 only stops both ranks with rank 1's message
        def check():
            if rank == 1:
                raise UserError("scores do not match")

        errors = []
        try:
            dist.agree(check)
        except UserError as e:
            errors.append(str(e))
        errors.append(dist.agree(lambda: 7 if rank == 0 else 8, main_only=True))  # rank 0's result, everywhere
        try:
            dist.parallelize(torch.nn.Linear(4, 4), torch.device("cpu"), "fsdp")
        except UserError as e:
            errors.append(str(e))
        out["errors"] = errors
        torch.save(out, root / f"record.rank{rank}.pt")
    finally:
        dist.cleanup()


@pytest.fixture(scope="module")
def runs(tiny_data, reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(WORLD, free_port(), tiny_data, reference, root), nprocs=WORLD, join=True)
    single = {}
    for name, (_, cfg) in _jobs(tiny_data, reference, root).items():
        with _Recorder() as rec:
            train(cfg, console=False)
        single[name] = rec.calls
    multi = [torch.load(root / f"record.rank{r}.pt") for r in range(WORLD)]
    return root, single, multi


def _weights(run):
    return load_file(str(Path(run) / "final" / "model.safetensors"))


def _assert_close_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        # fp32 noise, amplified by Adam where a gradient is ~0: stays under 5% of one step (lr 3e-3)
        torch.testing.assert_close(wa[k], wb[k], atol=1.5e-4, rtol=1e-4, msg=k)


@pytest.mark.parametrize("name", ["ddp-topk", "ddp-random", "ddp-stochastic", "ddp-clm", "ddp-step-topk",
                                  "ddp-online-stochastic", "ddp-soft", "ddp-step-dft", "ddp-sequence-stochastic",
                                  "ddp-step-eslm-entropy", "ddp-schedule", "ddp-mixture", "fsdp-topk",
                                  "fsdp-step-stochastic"])
def test_two_ranks_equal_one_process_with_twice_the_batch(runs, name):
    root, single, multi = runs
    one, ranks = single[name], [m[name] for m in multi]
    assert len(one) == len(ranks[0]) == len(ranks[1]) > 0
    for c, call in enumerate(one):
        for micro, mask in enumerate(call):  # the single process's micro-batch = rank 0's windows, then rank 1's
            joint = torch.cat([ranks[r][c][micro] for r in range(WORLD)])
            if mask.dtype == torch.bool:
                assert torch.equal(joint, mask), (name, c, micro)
            else:  # weights: from excess losses that differ by fp32 noise after the first step
                torch.testing.assert_close(joint, mask, atol=1e-5, rtol=1e-4, msg=f"{name} {c} {micro}")
    _assert_close_weights(root / "multi" / name, root / "single" / name)
    rows = [json.loads(x) for x in (root / "multi" / name / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (root / "single" / name / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(rows, ref_rows):
        assert r["tokens"] == s["tokens"]
        if r["type"] == "train":
            weighted = "soft" in name or "dft" in name  # Σ w summed per rank, then over ranks: fp32 order
            assert r["selected_fraction"] == pytest.approx(s["selected_fraction"], abs=1e-6 if weighted else 1e-9)
            assert r.get("ratio") == s.get("ratio")


@pytest.mark.parametrize("name", ["ddp-topk", "fsdp-topk"])
def test_saved_selection_does_not_depend_on_the_world_size(runs, name):
    """save_selection: 2 ranks write what 1 process writes (fsdp-topk: after a cut and a resume), and that is
    what the objective selected."""
    from selective_lm.masks import Selection

    root, single, _ = runs
    multi, one = Selection(root / "multi" / name), Selection(root / "single" / name)
    assert multi.written == multi.steps == one.written > 0
    assert np.array_equal(multi.masks(), one.masks()) and np.array_equal(multi.windows, one.windows)
    selected = torch.stack([m for call in single[name] for m in call]).numpy()  # [steps × accum, 4, 32]
    assert np.array_equal(one.masks(), selected.reshape(one.steps, one.per_step, one.seq_len))


def test_fsdp_checkpoint_is_a_plain_hf_directory_and_resume_is_exact(runs):
    root, _, _ = runs
    from transformers import AutoModelForCausalLM

    from selective_lm.checkpoint import checkpoint_dirs, has_state

    assert [has_state(d) for d in checkpoint_dirs(root / "multi" / "fsdp-topk-cut")] == [True]  # resumed from step 2
    AutoModelForCausalLM.from_pretrained(root / "multi" / "fsdp-topk" / "final")
    wa, wb = _weights(root / "multi" / "fsdp-topk"), _weights(root / "multi" / "fsdp-topk-uncut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    read = lambda d: [json.loads(x) for x in (root / "multi" / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert drop(read("fsdp-topk")) == drop(read("fsdp-topk-uncut"))  # the step-3 row sums steps 1-3 of both ranks


def test_sharded_scoring_and_eval_equal_one_process(runs, tiny_data, reference):
    root, _, _ = runs
    one = np.fromfile(reference / "scores" / "ref_losses.bin", dtype=np.float16)
    two = np.fromfile(root / "multi" / "scores" / "ref_losses.bin", dtype=np.float16)
    assert np.array_equal(one, two)
    m1 = json.loads((reference / "scores" / "manifest.json").read_text())
    m2 = json.loads((root / "multi" / "scores" / "manifest.json").read_text())
    assert {k: v for k, v in m1.items() if k != "seconds"} == {k: v for k, v in m2.items() if k != "seconds"}
    single = evaluate(EvalConfig(model=str(reference / "ref" / "final"), data=[str(tiny_data)], batch_size=4,
                                 device="cpu", dump=str(root / "single-dump"), progress=False))
    multi = json.loads((root / "multi" / "eval.json").read_text())
    (s,), (m,) = single["datasets"].values(), multi["datasets"].values()
    assert s["loss"] == m["loss"] and s["tokens"] == m["tokens"]
    assert np.array_equal(np.asarray(load_token_losses(s["dump"])), np.asarray(load_token_losses(m["dump"])))


def test_errors_on_one_rank_stop_every_rank(runs):
    _, _, multi = runs
    for r in range(WORLD):
        agree_all, agree_main, fsdp = multi[r]["errors"]
        assert agree_all.startswith("scores do not match")  # rank 1 failed; rank 0 raises it too
        assert agree_main == 7
        assert "no decoder blocks" in fsdp


def _failing_worker(rank, world, port, argv, root):
    """Rank 1 dies at its second optimizer step; rank 0 must end with one line and exit code 2."""
    dist_env(rank, world, port)
    torch.set_num_threads(1)
    import selective_lm.train as train_mod
    from selective_lm.cli import main

    if rank == 1:
        real = train_mod.train_step

        def dying(t, step, *a, **k):
            if step == 1:
                os._exit(1)  # a crash: no Python cleanup, the connection just closes
            return real(t, step, *a, **k)

        train_mod.train_step = dying
    err = open(root / f"stderr.{rank}", "w")
    sys.stderr = err
    code = main(argv)
    err.close()
    (root / f"code.{rank}").write_text(str(code))


def test_a_rank_dying_mid_run_ends_the_others_with_one_line(tiny_data, tmp_path):
    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--max-steps", "4", "--batch-size",
            "2", "--device", "cpu", "--no-progress", "--log-every", "1"]
    ctx = mp.start_processes(_failing_worker, args=(WORLD, free_port(), argv, tmp_path), nprocs=WORLD, join=False,
                             start_method="spawn")
    for p in ctx.processes:
        p.join(timeout=120)
    assert not any(p.is_alive() for p in ctx.processes), "a rank was left hanging"
    assert (tmp_path / "code.0").read_text() == "2"
    lines = [x for x in (tmp_path / "stderr.0").read_text().splitlines() if x.strip()]
    assert len(lines) == 1 and "lost another rank" in lines[0], lines


def test_torchrun_launch_of_python_m_selective_lm(tiny_data, tmp_path):
    """The documented launch, as a user types it (2 processes, gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "selective_lm", "train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
           "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--no-progress", "selection_scope=step"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("finished 2 steps") == 1  # rank 0 reports, once
    assert json.loads((tmp_path / "run" / "run.json").read_text())["tokens"] == 2 * 2 * 2 * 32
    bad = subprocess.run(cmd[:-1] + ["selection_scope=batch"], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode != 0 and bad.stderr.count("slm: error: unknown selection_scope 'batch'") == 1


def test_resume_under_another_world_size_with_the_same_global_batch(runs, tmp_path):
    """A 2-rank FSDP run cut after its step-2 checkpoint and resumed by one DDP process with batch 2B."""
    root, _, _ = runs
    cut = tmp_path / "moved-run"  # a moved run directory resumes too
    shutil.copytree(root / "multi" / "fsdp-topk-cut", cut)
    from selective_lm.config import from_dict, load_yaml

    saved = from_dict(TrainConfig, load_yaml(cut / "config.yaml"))
    saved.out, saved.resume, saved.parallel = str(cut), True, "ddp"
    saved.batch_size = 1  # 1 × 2 × 1 rank: not the 2 × 2 × 2 windows per step it ran with
    with pytest.raises(UserError, match="windows per step"):
        train(saved, console=False)
    saved.batch_size = 4  # 4 × 2 × 1 rank = 2 × 2 × 2 ranks
    train(saved, console=False)
    _assert_close_weights(cut, root / "multi" / "fsdp-topk-uncut")
