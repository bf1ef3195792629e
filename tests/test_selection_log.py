"""save_selection: the masks written during training are the masks the loss used, step by step, window by window;
a resumed run writes what an uninterrupted one writes."""
import numpy as np
import pytest
import torch

import selective_lm.objective as objective_mod
import selective_lm.step as step_mod
import selective_lm.train as train_mod
from selective_lm.config import TrainConfig
from selective_lm.files import UserError
from selective_lm.masks import Selection
from selective_lm.train import train


def cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="tiny", batch_size=2, grad_accum=2, max_steps=5, lr=3e-3,
                warmup_steps=1, log_every=3, eval_windows=4, progress=False, save_selection=True)
    base.update(kw)
    return TrainConfig(**base)


class _Used:
    """Every mask the loss was computed with (Objective.loss) and every micro-batch's windows (Trainer.batch)."""

    def __init__(self, monkeypatch):
        self.masks, self.windows = [], []
        real_loss, real_batch = objective_mod.Objective.loss, step_mod.Trainer.batch

        def loss(token_losses, mask, denom):
            self.masks.append(mask.detach().clone())
            return real_loss(token_losses, mask, denom)

        def batch(trainer, idx):
            self.windows.append(np.array(idx))
            return real_batch(trainer, idx)

        monkeypatch.setattr(objective_mod.Objective, "loss", staticmethod(loss))
        monkeypatch.setattr(step_mod.Trainer, "batch", batch)


@pytest.mark.parametrize("kw", [dict(strategy="topk"), dict(strategy="stochastic", selection_scope="step"),
                                dict(strategy="topk", clm_warmup=0.4)], ids=["topk", "stochastic-step", "warmup"])
def test_saved_masks_are_the_masks_the_loss_used(tiny_data, reference, tmp_path, monkeypatch, kw):
    used = _Used(monkeypatch)
    train(cfg(tiny_data, tmp_path / "run", objective="slm", ratio=0.4, ref_scores=str(reference / "scores"), **kw),
          console=False)
    sel = Selection(tmp_path / "run")
    assert sel.written == sel.steps == 5 and sel.per_step == 4 and sel.seq_len == 32
    masks = sel.masks()
    expected = torch.stack(used.masks).view(5, 2, 2, 32).reshape(5, 4, 32).numpy()  # step, micro, window
    assert np.array_equal(masks, expected)
    assert np.array_equal(np.asarray(sel.windows), np.stack(used.windows).reshape(5, 4))
    if "clm_warmup" not in kw:  # round(0.4 × the valid targets) of each selection set: a micro-step or the step
        per_step = round(0.4 * 128) if kw.get("selection_scope") == "step" else 2 * round(0.4 * 64)
        assert (masks.reshape(5, -1).sum(1) == per_step).all()


def test_resume_writes_what_an_uninterrupted_run_writes(tiny_data, reference, tmp_path, monkeypatch):
    kw = dict(objective="slm", strategy="stochastic", ratio=0.5, ref_scores=str(reference / "scores"), max_steps=8,
              ckpt_every=4)
    train(cfg(tiny_data, tmp_path / "full", **kw), console=False)
    real_save = train_mod.save_checkpoint_dir

    def killing_save(model, out, *a, **k):
        real_save(model, out, *a, **k)
        if str(out).endswith("step_000004"):
            raise KeyboardInterrupt  # steps 0-3 were written (at the log step 3 and the checkpoint step 4)

    monkeypatch.setattr(train_mod, "save_checkpoint_dir", killing_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_data, tmp_path / "cut", **kw), console=False)
    monkeypatch.setattr(train_mod, "save_checkpoint_dir", real_save)
    assert Selection(tmp_path / "cut").written == 4
    train(cfg(tiny_data, tmp_path / "cut", resume=True, **kw), console=False)
    a, b = Selection(tmp_path / "full"), Selection(tmp_path / "cut")
    assert b.written == 8 and np.array_equal(a.masks(), b.masks()) and np.array_equal(a.windows, b.windows)


def test_clm_saves_every_counted_target_and_soft_is_refused(tiny_data, tmp_path):
    train(cfg(tiny_data, tmp_path / "clm", max_steps=2), console=False)
    assert Selection(tmp_path / "clm").masks().all()
    with pytest.raises(UserError, match="weighting=hard"):
        cfg(tiny_data, tmp_path / "soft", objective="slm", weighting="soft", ref_scores="x").validate()
    with pytest.raises(UserError, match="save_selection=true"):
        Selection(tmp_path / "nothing")
