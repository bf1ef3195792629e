"""Issue 23 end to end on a corpus with known planted structure (tests/planted.py): `slm score` warns of the overlap
block and of the markup class the reference never saw, and `slm analyze selection` shows what training selected per
provenance label and token class, from the masks the run saved."""
import json
from pathlib import Path

import numpy as np
import pytest
from planted import hq_docs, noisy_docs, write

from selective_lm.cli import main
from selective_lm.config import PrepareConfig, TrainConfig
from selective_lm.data import TokenDataset, prepare
from selective_lm.masks import Selection
from selective_lm.refdata import N
from selective_lm.scores import load_scores
from selective_lm.train import train

MARKUP = set("$\\<>{}")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    write(root / "hq.jsonl", hq_docs())
    write(root / "noisy.jsonl", noisy_docs())
    prepare(PrepareConfig(inputs=[str(root / "noisy.jsonl")], out=str(root / "noisy"), vocab_size=400, seq_len=64,
                          label_names=["clean", "junk"], progress=False))
    prepare(PrepareConfig(inputs=[str(root / "hq.jsonl")], out=str(root / "hq"), seq_len=64, progress=False,
                          tokenizer=str(root / "noisy" / "tokenizer")))
    kw = dict(model="tiny", batch_size=8, lr=3e-3, warmup_steps=2, log_every=10, eval_windows=8, progress=False)
    train(TrainConfig(data=str(root / "noisy"), out=str(root / "base"), max_steps=10, **kw), console=False)
    kw["model"] = str(root / "base" / "final")
    train(TrainConfig(data=str(root / "hq"), out=str(root / "ref"), max_steps=60, **kw), console=False)
    return root, kw


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out, out.err


def test_score_warns_of_the_overlap_block_and_the_markup_class(planted, capsys):
    root, _ = planted
    _, err = _run(["score", "--data", root / "noisy", "--model", root / "ref" / "final", "--out", root / "scores",
                   "--no-progress"], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("slm: warning:")]
    assert any(w.startswith("slm: warning: overlap: ") for w in warnings), err
    assert any(w.startswith("slm: warning: format mismatch: markup tokens") for w in warnings), err
    checks = json.loads((root / "scores" / "manifest.json").read_text())["checks"]
    assert checks["found_by"].endswith("slm_meta.json") and checks["base_model"] == str(root / "base" / "final")

    # the overlap share, brute force: n-grams of the reference's train stream as tuples
    noisy, hq = TokenDataset(root / "noisy"), TokenDataset(root / "hq")
    stream = np.asarray(hq.windows("train")).reshape(-1).tolist()
    grams = {tuple(stream[i:i + N]) for i in range(len(stream) - N + 1)}
    n = noisy.num_windows("train")
    pick = np.linspace(0, n - 1, min(256, n)).round().astype(int) if n > 256 else np.arange(n)
    win = np.asarray(noisy.windows("train")[pick])
    inside = np.zeros(win.shape, bool)
    for r, row in enumerate(win.tolist()):
        for i in range(len(row) - N + 1):
            if tuple(row[i:i + N]) in grams:
                inside[r, i:i + N] = True
    ov = checks["overlap"]
    assert ov["overlap_tokens"] == int(inside[:, 1:].sum()) > 0 and ov["tokens"] == win[:, 1:].size
    assert ov["share"] >= 0.01 and ov["measure"] == "excess" and ov["gap"] > 0  # the memorised block: high excess
    # the markup class: tokens spelling $ \ < > { } (not special), never in the reference's data
    tok = noisy.tokenizer()
    special = set(tok.all_special_ids)
    is_markup = np.vectorize(lambda i: i not in special and bool(MARKUP & set(tok.decode([int(i)])) ))
    mk = is_markup(win[:, 1:])
    ref = np.asarray(load_scores(root / "scores", noisy)[pick], np.float64)
    cls = checks["classes"]["markup"]
    assert cls["corpus_share"] == pytest.approx(mk.mean()) and cls["reference_share"] == 0 and cls["ratio"] is None
    assert cls["gap"] == pytest.approx(ref[mk].mean() - ref[~mk].mean()) and cls["gap"] >= 1.0


def test_analyze_selection_tables_from_the_saved_masks(planted, capsys):
    root, kw = planted
    if not (root / "scores" / "manifest.json").is_file():
        _run(["score", "--data", root / "noisy", "--model", root / "ref" / "final", "--out", root / "scores",
              "--no-progress", "--no-checks"], capsys)
    train(TrainConfig(data=str(root / "noisy"), out=str(root / "slm"), max_steps=20, objective="slm", ratio=0.5,
                      ref_scores=[str(root / "scores")], save_selection=True, **kw), console=False)
    run = root / "slm"
    _run(["analyze", "selection", "--runs", run, "--out", root / "sel.json", "--html", root / "sel.html"], capsys)
    res = json.loads((root / "sel.json").read_text())["runs"][str(run)]["selection"]

    # brute force from the saved masks: every step's windows, their labels and tokens
    ds, sel = TokenDataset(root / "noisy"), Selection(run)
    masks = sel.masks().reshape(-1, ds.seq_len)
    idx = np.asarray(sel.windows).reshape(-1)
    prov = np.asarray(ds.provenance("train")[idx, 1:])
    ids = np.asarray(ds.windows("train")[idx, 1:])
    assert res["tokens"] == ids.size and res["selected"] == int(masks.sum()) == round(0.5 * ids.size)
    for name, code in (("clean", 0), ("junk", 1)):
        row = res["labels"][name]
        assert row["tokens"] == int((prov == code).sum()) and row["selected"] == int(masks[prov == code].sum())
    # what was planted shows: the junk span and the markup the reference never saw are selected far less
    overall = res["selected_share"]
    assert res["labels"]["junk"]["selection_rate"] < overall / 2 < res["labels"]["clean"]["selection_rate"]
    assert res["classes"]["markup"]["selection_rate"] < overall / 2
    assert res["classes"]["markup"]["ref_loss"] > res["classes"]["letters"]["ref_loss"] + 1
    for entry in res["over_selected"] + res["under_selected"]:
        here = ids == entry["token_id"]
        assert entry["count"] == int(here.sum()) and entry["selected"] == int(masks[here].sum())
        assert entry["excess_selected"] == pytest.approx(entry["selected"] - entry["count"] * overall)
    assert len(res["over_selected"]) == len(res["under_selected"]) == 20
    assert any(e["class"] == "markup" for e in res["under_selected"])
    page = (root / "sel.html").read_text()
    assert page.count("trained at step") == 12 and "background: excess loss of" in page
    out, _ = _run(["analyze", "selection", "--runs", run, "--tables", "--top", "3"], capsys)
    assert "| provenance label |" in out and "| junk |" in out and "| markup |" in out and "most under-selected" in out


def test_analyze_selection_of_a_run_without_saved_masks_says_how(planted, capsys, tmp_path):
    root, kw = planted
    train(TrainConfig(data=str(root / "noisy"), out=str(tmp_path / "clm"), max_steps=2, **kw), console=False)
    out, _ = _run(["analyze", "selection", "--runs", tmp_path / "clm"], capsys)
    assert "save_selection=true" in json.loads(out)["runs"][str(tmp_path / "clm")]["selection"]
    code = main(["analyze", "selection", "--runs", str(tmp_path / "clm"), "--html", str(tmp_path / "x.html")])
    err = capsys.readouterr().err
    assert code == 2 and "save_selection=true" in err and len(err.strip().splitlines()) == 1
    assert not Path(tmp_path / "x.html").exists()
