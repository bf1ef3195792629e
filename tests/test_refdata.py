"""The overlap and format checks of `slm score` (selective_lm.refdata) on arrays, against brute force."""
import numpy as np
import pytest

from selective_lm.refdata import (
    FORMAT_NATS,
    FORMAT_RATIO,
    OVERLAP_WARN,
    _held_out,
    corpus_checks,
    overlap_mask,
    reference_ngrams,
    run_checks,
)
from selective_lm.tokenclass import CLASSES, token_class
from selective_lm.train import held_out


def _brute(windows, ref_stream, n):
    grams = {tuple(ref_stream[i:i + n]) for i in range(len(ref_stream) - n + 1)}
    out = np.zeros(windows.shape, bool)
    for r, row in enumerate(windows.tolist()):
        for i in range(len(row) - n + 1):
            if tuple(row[i:i + n]) in grams:
                out[r, i:i + n] = True
    return out


@pytest.mark.parametrize("n", [1, 3, 13])
def test_overlap_mask_equals_brute_force(n):
    rng = np.random.default_rng(n)
    ref = rng.integers(0, 50, size=(6, 40))
    win = rng.integers(0, 50, size=(9, 33))
    for r in range(0, 9, 2):  # plant copies of reference passages (some across its window boundaries)
        s, L = rng.integers(0, 200), rng.integers(n, 2 * n + 3)
        at = rng.integers(0, 33 - min(L, 33) + 1)
        piece = ref.reshape(-1)[s:s + L][:33 - at]
        win[r, at:at + len(piece)] = piece
    got = overlap_mask(win, reference_ngrams(ref, n), n)
    want = _brute(win, ref.reshape(-1).tolist(), n)
    assert np.array_equal(got, want) and want.any() and not want.all()


def test_held_out_windows_are_the_self_reference_runs():
    for frac, seed in ((0.2, 0), (0.5, 3)):
        assert np.array_equal(_held_out(57, frac, seed), held_out(57, frac, seed))


def _table():
    """ids 0-9 letters, 10-11 markup, 12 digits."""
    t = np.full(13, CLASSES.index("letters"), np.uint8)
    t[10:12], t[12] = CLASSES.index("markup"), CLASSES.index("digits")
    return t


def test_format_mismatch_is_named_at_its_thresholds():
    rng = np.random.default_rng(0)
    win = rng.integers(0, 10, size=(20, 51))
    win[:, 1::10] = 10  # 5 markup targets per window: 10% of the corpus
    counted = np.ones((20, 50), bool)
    ref_loss = np.full((20, 50), 2.0)
    markup = win[:, 1:] == 10
    ref_loss[markup] = 2.0 + FORMAT_NATS  # exactly at the loss threshold
    corpus_share = markup.mean()
    ref_counts = np.zeros(len(CLASSES))
    ref_counts[CLASSES.index("letters")] = 1000
    ref_counts[CLASSES.index("markup")] = 1000 * corpus_share / FORMAT_RATIO / (1 - corpus_share / FORMAT_RATIO)
    res = corpus_checks(win, counted, ref_loss, None, np.zeros(0, np.uint64), ref_counts, _table())
    m = res["classes"]["markup"]
    assert m["corpus_share"] == pytest.approx(corpus_share) and m["ratio"] == pytest.approx(FORMAT_RATIO)
    assert m["gap"] == pytest.approx(FORMAT_NATS)
    assert [w.split(":")[0] for w in res["warnings"]] == ["format mismatch"] and "markup tokens are 10.0%" in \
        res["warnings"][0]
    ref_loss[markup] = 2.0 + FORMAT_NATS - 0.01  # just below: no warning
    assert corpus_checks(win, counted, ref_loss, None, np.zeros(0, np.uint64), ref_counts, _table())["warnings"] == []
    assert res["overlap"]["share"] == 0 and res["overlap"]["measure"] == "ref_loss"


def test_overlap_figures_and_context_targets_left_out():
    rng = np.random.default_rng(1)
    ref_stream = rng.integers(0, 10, size=(1, 200))
    win = rng.integers(0, 10, size=(10, 41))
    win[0, 1:21] = ref_stream[0, 50:70]  # 20 targets inside 13-grams of the reference's data
    counted = np.ones((10, 40), bool)
    counted[1] = False  # a window of context only: not counted anywhere
    ref_loss, base_loss = np.full((10, 40), 3.0), np.full((10, 40), 3.5)
    inside = _brute(win, ref_stream.reshape(-1).tolist(), 13)[:, 1:] & counted
    ref_loss[inside] = 1.0
    res = corpus_checks(win, counted, ref_loss, base_loss, reference_ngrams(ref_stream), np.ones(len(CLASSES)),
                        _table())
    ov = res["overlap"]
    assert ov["tokens"] == 360 and ov["overlap_tokens"] == int(inside.sum()) >= 20
    assert ov["share"] == pytest.approx(inside.sum() / 360) and ov["share"] >= OVERLAP_WARN
    assert ov["mean_overlap"] == pytest.approx(2.5) and ov["mean_rest"] == pytest.approx(0.5)
    assert ov["gap"] == pytest.approx(2.0) and res["warnings"][0].startswith("overlap: ")
    assert "+2.00 nats" in res["warnings"][0]


def test_checks_are_skipped_with_the_reason(tiny_data, tmp_path):
    from selective_lm.data import TokenDataset
    from selective_lm.model import build_model, save_checkpoint_dir

    ds = TokenDataset(tiny_data)
    model = build_model("tiny", ds.vocab_size, ds.seq_len, 0, ds.eos_id)
    save_checkpoint_dir(model, tmp_path / "m", ds.tokenizer_dir)  # a checkpoint that names no training data
    res = run_checks(ds, "train", np.zeros((ds.num_windows("train"), ds.seq_len)), tmp_path / "m", None, None, 8, "cpu")
    assert "ref_data=DIR" in res["skipped"]


def test_token_classes():
    cases = {" the": "letters", "\\frac": "markup", "$": "markup", " <br": "markup", "{": "markup", " 12": "digits",
             "3.14": "digits", " (": "punctuation", "=": "punctuation", "x2": "mixed", "\n\n": "whitespace",
             "_init": "code", " ==": "code", "[": "code"}
    assert {s: token_class(s) for s in cases} == cases
    assert token_class("<|endoftext|>", special=True) == "special"


def test_bad_ref_data_or_base_model_is_refused_before_scoring(tiny_data, reference, tmp_path, capsys):
    from selective_lm.cli import main

    base = ["score", "--data", str(tiny_data), "--model", str(reference / "ref" / "final"), "--no-progress"]
    for extra, needle in ((["--ref-data", str(tmp_path)], "not a dataset directory"),
                          (["--base-model", str(tmp_path)], "base model")):
        out = tmp_path / f"s{len(needle)}"
        assert main([*base, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and not out.exists(), err
