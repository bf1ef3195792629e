"""SLM in the HF Trainer (selective_lm.hf) against `slm train`'s own step, and scores as a dataset column."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

from selective_lm.columns import SLMCollator, export_scored, load_scored, save_scored, score_dataset
from selective_lm.config import TrainConfig
from selective_lm.data import TokenDataset
from selective_lm.hf import SLMArguments, SLMLoss, SLMTrainer
from selective_lm.model import build_model, load_model
from selective_lm.objective import Objective
from selective_lm.step import NoReference, RefLosses, StepMetrics, train_step
from selective_lm.step import Trainer as StepTrainer

B = 4  # windows per optimizer step
LR = 0.5


@pytest.fixture(scope="module")
def scored(reference, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "scored"
    export_scored(tiny_data, reference / "scores", out)
    return out


def _model(ds):
    return build_model("tiny", ds.vocab_size, ds.seq_len, seed=3, eos_id=ds.eos_id)


def _args(tmp_path, accum, batch, steps=1, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accum, max_steps=steps, learning_rate=LR,
                             lr_scheduler_type="constant", max_grad_norm=0.0, train_sampling_strategy="sequential",
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0, seed=0, **kw)


def _sgd(model, fused=False):
    return torch.optim.SGD(model.parameters(), lr=LR, fused=fused)  # fused: train_step's non-finite skip


def _hf_run(tmp_path, data, trainer_cls=SLMTrainer, accum=2, steps=1, **kw):
    ds = TokenDataset(kw.pop("tiny_data"))
    model = _model(ds)
    tr = trainer_cls(model=model, args=_args(tmp_path, accum, B // accum, steps), train_dataset=data,
                     data_collator=SLMCollator(), optimizers=(_sgd(model), None), **kw)
    tr.train()
    return model, tr


def _slm_train_step(tiny_data, reference, scope, accum, ratio=0.6, strategy="topk", online=False, steps=1, **extra):
    """`slm train`'s own train_step on windows 0..B-1 in order, SGD: the reference the HF side must match."""
    ds = TokenDataset(tiny_data)
    free = extra.get("score") in ("loss", "model-entropy")  # ESLM: no reference
    cfg = TrainConfig(data=str(tiny_data), out="unused", objective="slm", ratio=ratio, strategy=strategy,
                      selection_scope=scope, grad_accum=accum, batch_size=B // accum, grad_clip=0.0,
                      ref_scores=None if online or free else str(reference / "scores"),
                      ref_model=str(reference / "ref" / "final") if online else None, **extra)
    model = _model(ds)
    opt = _sgd(model, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    dev = torch.device("cpu")
    ref = NoReference(cfg.score if free else None) if cfg.weighting == "dft" or free else RefLosses(cfg, ds, dev)
    t = StepTrainer(cfg, ds, model, model, opt, sched, Objective.from_config(cfg, steps), ref, StepMetrics(dev), dev)
    for step in range(steps):
        first = step * B
        micro = [t.batch(np.arange(first + m * (B // accum), first + (m + 1) * (B // accum))) for m in range(accum)]
        train_step(t, step, micro)
    return model


def _assert_same(a, b, atol=1e-5):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol, rtol=1e-4), n


@pytest.mark.parametrize("scope,strategy", [("microstep", "topk"), ("step", "topk"), ("step", "stochastic"),
                                            ("sequence", "stochastic")])
def test_trainer_equals_slm_train_step(tmp_path, tiny_data, reference, scored, scope, strategy):
    """Same windows, same init, SGD: the HF Trainer's SLM update equals `slm train`'s (accumulation 2)."""
    data = load_scored(scored)
    ours = _slm_train_step(tiny_data, reference, scope, accum=2, strategy=strategy, steps=2)
    hf, tr = _hf_run(tmp_path, data, steps=2, tiny_data=tiny_data,
                     slm_args=SLMArguments(ratio=0.6, strategy=strategy, selection_scope=scope))
    _assert_same(hf, ours)
    logged = [r for r in tr.state.log_history if "selected_fraction" in r]
    assert logged and all(abs(r["selected_fraction"] - 0.6) < 0.02 for r in logged)  # 0.594 per window of 32


VARIANTS = [dict(weighting="soft"), dict(weighting="dft"), dict(score="model-entropy"),
            dict(score="excess+entropy", entropy_weight=0.5),
            dict(score="reference"), dict(clm_warmup=0.5), dict(ratio_schedule="linear", ratio_end=0.3)]


@pytest.mark.parametrize("extra", VARIANTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_trainer_variants_equal_slm_train_step(tmp_path, tiny_data, reference, scored, extra):
    """Scores, soft/dft weights, the CLM warm-up and the ratio schedule: the HF update equals `slm train`'s
    (offline scores with the exported entropy column, accumulation 2, two steps)."""
    data = load_scored(scored)
    assert "ref_entropy" in data.column_names
    ours = _slm_train_step(tiny_data, reference, "microstep", accum=2, steps=2, **extra)
    hf, tr = _hf_run(tmp_path, data, steps=2, tiny_data=tiny_data, slm_args=SLMArguments(ratio=0.6, **extra))
    _assert_same(hf, ours)


def test_trainer_online_entropy_equals_slm_train_step(tmp_path, tiny_data, reference, scored):
    """score=excess+entropy with ref_model= (entropy computed online) against `slm train`'s step with ref_model."""
    data = load_scored(scored).remove_columns(["ref_loss", "ref_entropy"])
    ours = _slm_train_step(tiny_data, reference, "microstep", accum=2, online=True, score="excess+entropy")
    hf, _ = _hf_run(tmp_path, data, tiny_data=tiny_data, ref_model=load_model(reference / "ref" / "final"),
                    slm_args=SLMArguments(ratio=0.6, score="excess+entropy"))
    _assert_same(hf, ours)


def test_variant_arguments_refused(tmp_path, tiny_data, reference, scored):
    for kw, needle in ((dict(score="bogus"), "unknown score"), (dict(weighting="sharp"), "unknown weighting"),
                       (dict(ratio_schedule="linear"), "ratio_end"), (dict(clm_warmup=1.0), "clm_warmup"),
                       (dict(weighting="soft", strategy="random"), "topk")):
        with pytest.raises(ValueError, match=needle):
            SLMArguments(**kw)
    data = load_scored(scored).remove_columns(["ref_entropy"])
    ds = TokenDataset(tiny_data)
    with pytest.raises(ValueError, match="ref_entropy"):
        SLMTrainer(model=_model(ds), args=_args(tmp_path, 1, B), train_dataset=data, data_collator=SLMCollator(),
                   slm_args=SLMArguments(score="excess+entropy"))
    with pytest.raises(ValueError, match="use SLMTrainer"):
        SLMLoss(load_model(reference / "ref" / "final"), _model(ds), SLMArguments(weighting="soft"))


def test_trainer_online_reference_equals_slm_train_step(tmp_path, tiny_data, reference, scored):
    """ref_model= (online reference losses) against `slm train`'s step with ref_model."""
    data = load_scored(scored)
    ours = _slm_train_step(tiny_data, reference, "microstep", accum=2, online=True)
    ref = load_model(reference / "ref" / "final")
    hf, _ = _hf_run(tmp_path, data.remove_columns(["ref_loss"]), tiny_data=tiny_data, ref_model=ref)
    _assert_same(hf, ours)


def test_accumulation_invariant_with_step_scope(tmp_path, tiny_data, scored):
    data = load_scored(scored)
    args = SLMArguments(ratio=0.3, selection_scope="step")
    a, _ = _hf_run(tmp_path / "a", data, accum=2, steps=2, tiny_data=tiny_data, slm_args=args)
    b, _ = _hf_run(tmp_path / "b", data, accum=1, steps=2, tiny_data=tiny_data, slm_args=args)
    _assert_same(a, b)


def test_ratio_one_equals_the_trainers_own_loss(tmp_path, tiny_data, scored):
    """ratio 1.0 is CLM: the Trainer's own (model-computed, num_items_in_batch-normalised) update."""
    from transformers import Trainer

    data = load_scored(scored)
    own, tr_own = _hf_run(tmp_path / "own", data.remove_columns(["ref_loss"]), trainer_cls=Trainer, steps=2,
                          tiny_data=tiny_data)
    slm, tr_slm = _hf_run(tmp_path / "slm", data, steps=2, tiny_data=tiny_data, slm_args=SLMArguments(ratio=1.0))
    _assert_same(own, slm)
    loss = [[r["loss"] for r in t.state.log_history if "loss" in r] for t in (tr_own, tr_slm)]
    assert np.allclose(loss[0], loss[1], rtol=1e-5)
    assert tr_slm.evaluate(data.select(range(8)))["eval_loss"] == pytest.approx(
        tr_own.evaluate(data.remove_columns(["ref_loss"]).select(range(8)))["eval_loss"], rel=1e-5)


def test_slm_loss_func_equals_mixin_without_accumulation(tmp_path, tiny_data, reference, scored):
    from transformers import Trainer

    data = load_scored(scored).remove_columns(["ref_loss"])
    ds = TokenDataset(tiny_data)
    ref = load_model(reference / "ref" / "final")
    model = _model(ds)
    loss = SLMLoss(ref, model, SLMArguments(ratio=0.6))
    Trainer(model=model, args=_args(tmp_path, 1, B, 2), train_dataset=data, data_collator=SLMCollator(),
            optimizers=(_sgd(model), None), compute_loss_func=loss).train()
    mixin, _ = _hf_run(tmp_path / "m", data, accum=1, steps=2, tiny_data=tiny_data, ref_model=ref)
    _assert_same(model, mixin)


def test_missing_scores_column_is_one_clear_error(tmp_path, tiny_data, scored):
    data = load_scored(scored).remove_columns(["ref_loss"])
    with pytest.raises(ValueError, match="no 'ref_loss' column.*slm score --hf-out"):
        _hf_run(tmp_path, data, tiny_data=tiny_data)
    with pytest.raises(ValueError, match="ratio must be in"):
        SLMArguments(ratio=1.5)


def test_exported_column_matches_the_memmap_and_score_dataset(tmp_path, tiny_data, reference, scored):
    from selective_lm.scores import load_scores

    ds = TokenDataset(tiny_data)
    data = load_scored(scored)
    mem = np.asarray(load_scores(reference / "scores", ds), dtype=np.float32)
    col = np.asarray(data["ref_loss"], dtype=np.float32)
    assert np.isnan(col[:, 0]).all() and np.array_equal(col[:, 1:], mem)
    assert np.array_equal(np.asarray(data["input_ids"]), np.asarray(ds.windows("train")))
    # any dataset of token ids, rows of different lengths: the same losses as the memmap (float16 there)
    ragged = data.remove_columns(["ref_loss"]).select(range(6)).map(
        lambda r, i: {"input_ids": r["input_ids"][:ds.seq_len + 1 - i]}, with_indices=True)
    again = score_dataset(ragged, str(reference / "ref" / "final"), batch_size=4)
    for i, row in enumerate(again["ref_loss"]):
        n = ds.seq_len + 1 - i
        assert len(row) == n and np.isnan(row[0])
        assert np.allclose(row[1:], mem[i, :n - 1], atol=2e-2)  # padding in the batch changes nothing
    meta = save_scored(again, tmp_path / "again")
    assert load_scored(tmp_path / "again").slm_meta == meta
    assert meta["model_fingerprint"] == json.loads((reference / "scores" / "manifest.json").read_text())[
        "model_fingerprint"]


def test_load_scored_refuses_changed_token_ids(tmp_path, scored):
    import shutil

    from selective_lm.files import UserError

    bad = tmp_path / "bad"
    shutil.copytree(scored, bad)
    meta = json.loads((bad / "slm_scores.json").read_text())
    meta["input_ids_sha256"] = "0" * 64
    (bad / "slm_scores.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="changed after they were scored"):
        load_scored(bad)


def test_cli_scores_a_hf_dataset_and_exports_one(tmp_path, tiny_data, reference, scored):
    import datasets

    src = tmp_path / "ids"
    load_scored(scored).remove_columns(["ref_loss"]).select(range(5)).save_to_disk(str(src))
    run = [sys.executable, "-m", "selective_lm", "score", "--model", str(reference / "ref" / "final"),
           "--no-progress"]
    p = subprocess.run(run + ["--data", str(src), "--out", str(tmp_path / "col")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert np.allclose(np.asarray(load_scored(tmp_path / "col")["ref_loss"])[:, 1:],
                       np.asarray(load_scored(scored)["ref_loss"])[:5, 1:], atol=2e-2)
    p = subprocess.run(run + ["--data", str(tiny_data), "--out", str(tmp_path / "mem"), "--hf-out",
                              str(tmp_path / "exp")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert len(load_scored(tmp_path / "exp")) == len(load_scored(scored))
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "text"))
    p = subprocess.run(run + ["--data", str(tmp_path / "text"), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no 'input_ids' column" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("scope", ["microstep", "step"])
def test_two_processes_equal_one_with_the_global_batch(tmp_path, tiny_data, scored, scope):
    """torchrun, 2 CPU processes (gloo) × batch 1 × accumulation 2 against 1 process × batch 2 × accumulation 2."""
    import os

    from conftest import free_port

    worker = str(Path(__file__).with_name("hf_worker.py"))
    out = str(tmp_path / "w2.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           worker, str(tiny_data), str(scored), out, "1", "2", scope]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    two = torch.load(out)
    one, _ = _hf_run(tmp_path, load_scored(scored), accum=2, steps=2, tiny_data=tiny_data,
                     slm_args=SLMArguments(ratio=0.3, selection_scope=scope))
    for k, v in one.state_dict().items():
        assert torch.allclose(v, two[k], atol=1e-5, rtol=1e-4), k


def test_peft_lora_model_in_the_trainer(tmp_path, tiny_data, scored):
    """A PEFT (LoRA) model: ratio 1.0 equals the Trainer's own update, and SLM moves only the adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    data = load_scored(scored)
    ds = TokenDataset(tiny_data)

    def run(cls, ratio, **kw):
        torch.manual_seed(0)
        model = get_peft_model(_model(ds), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      init_lora_weights="gaussian"))
        tr = cls(model=model, args=_args(tmp_path / f"{cls.__name__}{ratio}", 2, B // 2, 1), data_collator=SLMCollator(),
                 optimizers=(_sgd(model), None), **kw)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tr.train()
        return model, before

    own, _ = run(Trainer, 1.0, train_dataset=data.remove_columns(["ref_loss"]))
    slm, _ = run(SLMTrainer, 1.0, train_dataset=data, slm_args=SLMArguments(ratio=1.0))
    _assert_same(own, slm)
    sel, before = run(SLMTrainer, 0.6, train_dataset=data, slm_args=SLMArguments(ratio=0.6))
    changed = {n for n, p in sel.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


@pytest.mark.parametrize("scope", ["microstep", "step"])
def test_ragged_rows_and_nan_scores(tmp_path, tiny_data, scored, scope):
    """Rows of different lengths (micro-batches padded differently) train; a NaN score is no score (never selected)."""
    data = load_scored(scored).select(range(16))

    def cut(r, i):
        n = 33 - (i % 5) * 3
        ref = list(r["ref_loss"][:n])
        ref[5] = float("nan") if i % 2 else ref[5]
        return {"input_ids": r["input_ids"][:n], "ref_loss": ref, "ref_entropy": r["ref_entropy"][:n]}

    ragged = data.map(cut, with_indices=True)
    model, tr = _hf_run(tmp_path, ragged, steps=2, tiny_data=tiny_data,
                        slm_args=SLMArguments(ratio=0.5, selection_scope=scope))
    logged = [r for r in tr.state.log_history if "selected_fraction" in r]
    assert logged and all(abs(r["selected_fraction"] - 0.5) < 0.03 for r in logged)
    bad = SLMCollator()
    with pytest.raises(ValueError, match="one score per token"):
        bad([{"input_ids": [1, 2, 3], "ref_loss": [0.0, 1.0]}])
    with pytest.raises(ValueError, match="'ref_entropy' values"):  # every score column is checked
        bad([{"input_ids": [1, 2, 3], "ref_loss": [0.0, 1.0, 2.0], "ref_entropy": [0.5]}])


def test_trainer_and_slm_train_log_the_same_metric_names(tmp_path, tiny_data, reference, scored):
    """Trackers see `train/loss` (every token), `train/loss_selected` (the objective) and `eval/NAME/loss` from
    SLMTrainer as from `slm train`."""
    from transformers.integrations.integration_utils import rewrite_logs

    from selective_lm.loss import token_losses
    from selective_lm.tracking import scalars
    from selective_lm.train import train

    data = load_scored(scored)
    ds = TokenDataset(tiny_data)
    model = _model(ds)
    tr = SLMTrainer(model=model, args=_args(tmp_path, 1, B, steps=1, eval_strategy="steps", eval_steps=1,
                                            per_device_eval_batch_size=4),
                    train_dataset=data, eval_dataset={"target": data.select(range(8))}, data_collator=SLMCollator(),
                    optimizers=(_sgd(model), None), slm_args=SLMArguments(ratio=0.5))
    tr.train()
    tr.evaluate(data.select(range(8)))  # the unnamed evaluation: eval/loss
    hf = {k for logs in tr.state.log_history for k in rewrite_logs(logs)}
    first = torch.tensor(np.asarray(data.select(range(B))["input_ids"]))
    with torch.no_grad():
        every = token_losses(_model(ds)(first[:, :-1]).logits, first[:, 1:]).mean().item()
    log = next(x for x in tr.state.log_history if "loss_selected" in x)
    assert log["loss"] == pytest.approx(every, rel=1e-5) and log["loss_selected"] > log["loss"]
    rows = []
    train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), objective="slm", ratio=0.5,
                      ref_scores=[str(reference / "scores")], batch_size=4, max_steps=1, log_every=1, eval_windows=4,
                      eval_data=[f"target={tiny_data}"], progress=False), console=False, callbacks=[rows.append])
    ours = {k for r in rows for k in scalars(r)}
    same = {"train/loss", "train/loss_selected", "train/selected_fraction", "train/excess_mean", "train/lr",
            "eval/loss", "eval/ppl", "eval/target/loss", "eval/target/ppl"}
    assert same <= hf and same <= ours, (same - hf, same - ours)


def test_hf_out_of_finished_scores_writes_the_column_without_scoring(tmp_path, tiny_data, reference, scored, capsys,
                                                                     monkeypatch):
    import shutil

    import selective_lm.scoring as scoring
    from selective_lm.cli import main

    shutil.copytree(reference / "scores", tmp_path / "s")
    before = (tmp_path / "s" / "ref_losses.bin").stat().st_mtime_ns
    monkeypatch.setattr(scoring, "_score", lambda *a, **k: pytest.fail("scored again"))
    args = ["score", "--data", str(tiny_data), "--model", str(reference / "ref" / "final"), "--out", str(tmp_path / "s"),
            "--no-progress"]
    assert main(args + ["--hf-out", str(tmp_path / "col")]) == 0
    assert "without scoring again" in capsys.readouterr().out
    assert (tmp_path / "s" / "ref_losses.bin").stat().st_mtime_ns == before
    assert np.array_equal(np.asarray(load_scored(tmp_path / "col")["ref_loss"]), np.asarray(load_scored(scored)["ref_loss"]),
                          equal_nan=True)
    monkeypatch.undo()
    assert main(args) == 2 and "already holds finished scores" in capsys.readouterr().err  # nothing to add: as before
