"""Context-only text (`slm prepare context_field=...`, or a span labelled "context"): provenance label 255, its targets
ignored in training, scoring, selection, evaluation and filtering."""
import json
import random

import numpy as np
import pytest
import torch

from selective_lm.config import EvalConfig, FilterConfig, PrepareConfig, ScoreConfig, TrainConfig
from selective_lm.data import CONTEXT_LABEL, TokenDataset, prepare
from selective_lm.evaluate import evaluate
from selective_lm.files import UserError
from selective_lm.filter import filter_documents
from selective_lm.masks import Selection
from selective_lm.model import load_model, model_token_losses
from selective_lm.scores import load_scores
from selective_lm.scoring import score
from selective_lm.train import train

WORDS = "alpha beta gamma delta sum of the and is twice half".split()


def rows(n=160, seed=0):
    r = random.Random(seed)
    out = []
    for i in range(n):
        prompt = "Problem: " + " ".join(r.choice(WORDS) for _ in range(r.randint(5, 12))) + "?\nSolution:"
        text = " " + " ".join(r.choice(WORDS) for _ in range(r.randint(10, 30))) + "."
        row = {"prompt": prompt, "text": text}
        if i % 3 == 0:  # a labelled span of the text, and one marked context inside it
            row["spans"] = [[1, 6, 1], [len(text) - 1, len(text), "context"]]
        out.append(row)
    return out


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx")
    src = root / "qa.jsonl"
    data = rows()
    src.write_text("".join(json.dumps(x) + "\n" for x in data), encoding="utf-8")
    manifest = prepare(PrepareConfig(inputs=[str(src)], out=str(root / "ds"), context_field="prompt", seq_len=32,
                                     vocab_size=300, val_fraction=0.1, label_names=["answer", "marked"],
                                     progress=False))
    train(TrainConfig(data=str(root / "ds"), out=str(root / "ref"), model="tiny", batch_size=4, max_steps=8, lr=3e-3,
                      warmup_steps=1, log_every=4, eval_windows=4, progress=False), console=False)
    return root, data, manifest


def test_prepare_labels_the_context_and_moves_the_spans(ctx):
    root, data, manifest = ctx
    assert manifest["provenance_labels"] == {"0": "answer", "1": "marked", "255": "context"}
    assert manifest["context_field"] == "prompt"
    ds = TokenDataset(root / "ds")
    prov, win = ds.provenance("train"), ds.windows("train")
    assert manifest["context_tokens"]["train"] == int((prov[:, 1:] == CONTEXT_LABEL).sum()) > 0
    tok = ds.tokenizer()
    text = tok.decode(np.asarray(win).reshape(-1).tolist())
    assert data[0]["prompt"] + data[0]["text"] in text or data[1]["prompt"] + data[1]["text"] in text
    # the context tokens spell the prompts; the labelled span moved after them
    flat_ids, flat_prov = np.asarray(win).reshape(-1), np.asarray(prov).reshape(-1)
    context_text = tok.decode(flat_ids[flat_prov == CONTEXT_LABEL].tolist())
    assert "Problem:" in context_text and "Solution:" in context_text and (flat_prov == 1).any()


def test_batch_ignores_exactly_the_context_targets(ctx):
    ds = TokenDataset(ctx[0] / "ds")
    idx = np.array([3, 0, 7])
    inputs, targets = ds.batch("train", idx)
    ctx_mask = np.asarray(ds.provenance("train")[idx, 1:]) == CONTEXT_LABEL
    raw = torch.from_numpy(np.asarray(ds.windows("train")[idx], dtype=np.int64))
    assert torch.equal(inputs, raw[:, :-1])
    assert torch.equal(targets == -100, torch.from_numpy(ctx_mask)) and ctx_mask.any()
    assert torch.equal(targets[~torch.from_numpy(ctx_mask)], raw[:, 1:][~torch.from_numpy(ctx_mask)])
    assert np.array_equal(ds.target_mask("train", idx), ~ctx_mask)
    assert np.array_equal(ds.batch("train", slice(0, 3))[1].numpy() == -100, ds.target_mask("train", slice(0, 3)) == 0)


def test_scoring_and_evaluation_leave_the_context_out(ctx, tmp_path):
    root = ctx[0]
    ds = TokenDataset(root / "ds")
    m = score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(tmp_path / "scores"),
                          progress=False))
    ref = np.asarray(load_scores(tmp_path / "scores", ds), np.float64)
    counted = ds.target_mask("train")
    assert (ref[~counted] == 0).all() and (ref[counted] > 0).all()
    assert m["mean_loss"] == pytest.approx(ref[counted].mean())
    res = evaluate(EvalConfig(model=str(root / "ref" / "final"), data=[str(root / "ds")], progress=False))
    summary = res["datasets"][str(root / "ds")]
    model = load_model(root / "ref" / "final").eval()
    inputs, targets = ds.batch("validation", np.arange(ds.num_windows("validation")))
    with torch.no_grad():
        losses = model_token_losses(model, inputs, targets).double()
    keep = targets != -100
    assert summary["tokens"] == int(keep.sum()) < targets.numel()
    assert summary["loss"] == pytest.approx(float(losses[keep].mean()), rel=1e-5)


def test_selection_never_takes_a_context_target(ctx, tmp_path):
    root = ctx[0]
    score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(tmp_path / "scores"),
                      progress=False, checks=False))
    train(TrainConfig(data=str(root / "ds"), out=str(tmp_path / "slm"), model="tiny", batch_size=4, max_steps=4,
                      objective="slm", ratio=0.5, ref_scores=[str(tmp_path / "scores")], save_selection=True,
                      warmup_steps=1, log_every=2, eval_windows=4, progress=False), console=False)
    ds, sel = TokenDataset(root / "ds"), Selection(tmp_path / "slm")
    masks = sel.masks()
    counted = np.stack([ds.target_mask("train", w) for w in np.asarray(sel.windows)])
    assert not (masks & ~counted).any()
    assert (masks.reshape(4, -1).sum(1) == [round(0.5 * c) for c in counted.reshape(4, -1).sum(1)]).all()


def test_filter_scores_documents_without_their_context(ctx, tmp_path):
    root = ctx[0]
    ds = TokenDataset(root / "ds")
    score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(tmp_path / "scores"),
                      progress=False, checks=False))
    m = filter_documents(FilterConfig(data=str(root / "ds"), ref_scores=str(tmp_path / "scores"),
                                      inputs=[str(root / "qa.jsonl")], out=str(tmp_path / "kept"), keep_fraction=1.0,
                                      unscored="keep", verify_documents=-1, progress=False))
    assert m["tokens"]["total"] == int(ds.target_mask("train").sum())
    kept = [json.loads(x) for x in (tmp_path / "kept" / "kept.jsonl").read_text().splitlines()]
    assert kept and all(set(r) >= {"prompt", "text"} for r in kept)


def test_bad_context_field_value_is_one_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"prompt": 3, "text": "x y z"}) + "\n")
    with pytest.raises(UserError, match="context field must be a string"):
        prepare(PrepareConfig(inputs=[str(src)], out=str(tmp_path / "ds"), context_field="prompt", progress=False))
