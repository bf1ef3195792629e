"""`slm filter`: document boundaries, document scores, the keep rule, the outputs and bad input."""
import json

import numpy as np
import pytest

from selective_lm.cli import main
from selective_lm.config import FilterConfig, PrepareConfig, TrainConfig
from selective_lm.data import TokenDataset, prepare, split_of
from selective_lm.files import read_json
from selective_lm.filter import document_bounds, filter_documents, key_counts, top_threshold
from selective_lm.scores import load_scores


def rows_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def brute_force(ds: TokenDataset, rows: list[dict], split="train"):
    """Each document of the split tokenised on its own and laid end to end: (rows, starts, ends) in that stream."""
    m, backend = ds.manifest, ds.tokenizer().backend_tokenizer
    route = PrepareConfig(seed=m["seed"], val_fraction=m["val_fraction"], test_fraction=m["test_fraction"])
    mine = [r for r in rows if split_of(r["text"], r.get("split"), route) == split]
    lengths = [(ds.bos_id is not None) + len(backend.encode(r["text"], add_special_tokens=False).ids) + 1 for r in mine]
    ends = np.cumsum(lengths)
    return mine, ends - lengths, ends


def brute_scores(ds, ref, starts, ends, min_tokens):
    """Mean of the memmap over each document's targets: positions in the windows, not a window's first one."""
    w, n = ds.window_len, ref.shape[0] * ds.window_len
    out = []
    for s, e in zip(starts, ends):
        vals = [float(ref[p // w, p % w - 1]) for p in range(s, min(e, n)) if p % w]
        out.append(np.mean(vals) if len(vals) >= min_tokens else None)
    return out


def cfg_for(root, out, **kw):
    kw.setdefault("keep_fraction", None if "threshold" in kw else 0.5)
    return FilterConfig(data=str(root / "ds"), ref_scores=str(root / "scores"), inputs=[str(root / "c.jsonl")],
                        out=str(out), progress=False, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """80 documents prepared (seq_len 32), a reference trained briefly and its scores of the train split, and a
    training model that is not the reference (root/run/final)."""
    from conftest import make_corpus

    from selective_lm.config import ScoreConfig
    from selective_lm.scoring import score
    from selective_lm.train import train

    root = tmp_path_factory.mktemp("filter")
    make_corpus(root / "c.jsonl", n_docs=80, seed=3)
    prepare(PrepareConfig(inputs=[str(root / "c.jsonl")], out=str(root / "ds"), vocab_size=300, seq_len=32,
                          val_fraction=0.1, progress=False))
    for name, steps, seed in (("ref", 8, 0), ("run", 2, 1)):
        train(TrainConfig(data=str(root / "ds"), out=str(root / name), max_steps=steps, batch_size=4, lr=3e-3,
                          seed=seed, warmup_steps=1, eval_windows=4, progress=False), console=False)
    score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(root / "scores"),
                      progress=False))
    score(ScoreConfig(data=str(root / "ds"), model=str(root / "ref" / "final"), out=str(root / "scores-noent"),
                      entropy=False, progress=False))
    return root


def test_documents_map_back_exactly_and_scores_are_per_document_means(small, tmp_path):
    m = filter_documents(cfg_for(small, tmp_path / "f", verify_documents=-1, unscored="keep"))
    ds = TokenDataset(small / "ds")
    ref = load_scores(small / "scores", ds)
    rows = rows_of(small / "c.jsonl")
    mine, starts, ends = brute_force(ds, rows)
    flat = np.asarray(ds.windows("train")).reshape(-1)
    encode = ds.tokenizer().backend_tokenizer.encode
    stream = np.concatenate([encode(r["text"], add_special_tokens=False).ids + [ds.eos_id] for r in mine])
    assert np.array_equal(stream[:len(flat)], flat) and ends[-1] == len(stream)  # the dataset's own layout
    expect = brute_scores(ds, ref, starts, ends, min_tokens=8)
    kept = rows_of(tmp_path / "f" / "kept.jsonl")
    by_text = {r["text"]: i for i, r in enumerate(mine)}
    assert len(by_text) == len(mine)
    for row in kept:  # every kept row is its input row, every field, plus its score
        i = by_text[row["text"]]
        assert {k: v for k, v in row.items() if k != "slm_doc_score"} == mine[i]
        if expect[i] is None:
            assert row["slm_doc_score"] is None
        else:
            assert row["slm_doc_score"] == pytest.approx(expect[i], rel=1e-9, abs=1e-12)
    scored = [s for s in expect if s is not None]
    n_keep = int(np.floor(len(scored) * 0.5 + 0.5))
    kept_scores = sorted(r["slm_doc_score"] for r in kept if r["slm_doc_score"] is not None)
    assert len(kept_scores) == n_keep and kept_scores == pytest.approx(sorted(scored)[:n_keep])  # the lowest ones
    unscored = sum(s is None for s in expect)
    assert len(kept) == n_keep + unscored  # unscored=keep
    kept_texts = {k["text"] for k in kept}
    assert [r["text"] for r in kept] == [r["text"] for r in mine if r["text"] in kept_texts]  # input order
    d = m["documents"]
    assert (d["total"], d["scored"], d["kept"]) == (len(mine), len(scored), len(kept))
    assert m["boundaries"]["verified_documents"] == len(mine) - d["in_dropped_tail"]
    assert m["threshold"] == pytest.approx(sorted(scored)[n_keep - 1])
    assert m["kept_fraction"]["documents"] == pytest.approx(len(kept) / len(mine))
    assert m["tokens"]["total"] == ref.size and 0 < m["tokens"]["kept"] < ref.size
    assert m["dataset_fingerprint"] == ds.fingerprint
    assert m["scores"]["sha256"] == read_json(small / "scores" / "manifest.json")["sha256"]
    assert [s["sha256"] for s in m["inputs"]] == [s["sha256"] for s in ds.manifest["sources"]]
    assert m["quantiles"]["all"]["0.0"] == pytest.approx(min(scored)) and m["model"] is None
    assert not [p.name for p in (tmp_path / "f").iterdir() if p.name not in ("kept.jsonl", "manifest.json")]


def test_a_document_that_spells_the_eos_token(tmp_path):
    texts = [f"doc {i} says " + ("<|endoftext|> inside, " if i % 7 == 3 else "") + "words " * (5 + i % 11)
             for i in range(60)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepare(PrepareConfig(inputs=[str(tmp_path / "c.jsonl")], out=str(tmp_path / "ds"), vocab_size=300, seq_len=16,
                          val_fraction=0.0, progress=False))
    ds = TokenDataset(tmp_path / "ds")
    flat = np.asarray(ds.windows("train")).reshape(-1)
    assert np.count_nonzero(flat == ds.eos_id) > ds.manifest["splits"]["train"]["documents"]  # literal EOS ids too
    cfg = FilterConfig(data=str(tmp_path / "ds"), ref_scores="s", inputs=[str(tmp_path / "c.jsonl")], out="o",
                       keep_fraction=0.5, verify_documents=-1)
    starts, ends, _ = document_bounds(cfg, ds, flat)
    _, s2, e2 = brute_force(ds, [{"text": t} for t in texts])
    assert np.array_equal(starts, np.minimum(s2, len(flat))) and np.array_equal(ends, np.minimum(e2, len(flat)))


def test_selected_share_with_a_model_as_parquet_by_tokens(small, tmp_path):
    import pyarrow.parquet as pq

    m = filter_documents(cfg_for(small, tmp_path / "p", model=str(small / "run" / "final"), doc_score="selected_share",
                                 ratio=0.6, keep_fraction=0.3, keep_by="tokens", format="parquet"))
    table = pq.read_table(tmp_path / "p" / "kept.parquet").to_pylist()
    rows = {r["text"]: r for r in rows_of(small / "c.jsonl")}
    assert len(table) == m["documents"]["kept"] > 0
    for row in table:
        assert {k: v for k, v in row.items() if k != "slm_doc_score"} == rows[row["text"]]
        assert 0.0 <= row["slm_doc_score"] <= 1.0
    assert 0.6 <= m["selected_token_fraction"] < 0.61 and m["model"]["fingerprint"]
    assert m["tokens"]["kept"] >= 0.3 * m["tokens"]["scored"]
    assert m["rule"] == {"keep_fraction": 0.3, "keep_by": "tokens"}
    assert min(r["slm_doc_score"] for r in table) == pytest.approx(m["threshold"])


def test_rows_come_in_the_order_of_the_documents(tmp_path):
    """JSON arrays, Parquet (every column) and text files, with empty documents skipped as prepare skips them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selective_lm.filter import iter_rows
    from selective_lm.sources import iter_documents

    (tmp_path / "a.json").write_text(json.dumps([{"text": "one", "n": 1}, {"text": ""}, {"text": "two", "n": 2}]))
    pq.write_table(pa.table({"text": ["p", "", "q"], "score": [0.5, 0.1, 0.2]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("plain text")
    inputs = [str(tmp_path / n) for n in ("a.json", "b.parquet", "c.txt")]
    rows = list(iter_rows(inputs, "text"))
    assert [r["text"] for r in rows] == [t for t, _ in iter_documents(inputs)] == ["one", "two", "p", "q", "plain text"]
    assert rows[1] == {"text": "two", "n": 2} and rows[3] == {"text": "q", "score": 0.2}


def test_top_threshold_counts_float16_exactly():
    x = np.random.default_rng(0).normal(size=10_001).astype(np.float16)
    t, selected = top_threshold(key_counts(x), 0.3)
    k = int(np.floor(x.size * 0.3 + 0.5))
    assert t == np.sort(x.astype(np.float64))[::-1][k - 1] and selected == np.count_nonzero(x >= t) >= k


def test_cli_end_to_end_threshold_and_rerun(small, tmp_path, capsys):
    args = ["filter", "--data", small / "ds", "--ref-scores", small / "scores", "--inputs", small / "c.jsonl",
            "--out", tmp_path / "e", "--model", small / "run" / "final", "--doc-score", "mean_excess",
            "--threshold", "0", "--no-progress"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    m = read_json(tmp_path / "e" / "manifest.json")
    assert f"kept {m['documents']['kept']} of {m['documents']['total']}" in out and m["threshold"] == 0
    assert all(r["slm_doc_score"] >= 0 for r in rows_of(tmp_path / "e" / "kept.jsonl"))
    err = assert_user_error(args, capsys)  # a re-run without --overwrite
    assert "--overwrite" in err
    assert main([str(a) for a in args] + ["--overwrite", "--doc-score", "ref_loss", "--threshold", "100"]) == 0
    assert read_json(tmp_path / "e" / "manifest.json")["documents"]["kept"] == m["documents"]["scored"]


def test_a_killed_run_leaves_nothing_that_looks_complete(small, tmp_path, monkeypatch):
    import selective_lm.filter as f

    def dying(*a, **k):
        yield from []
        raise KeyboardInterrupt

    monkeypatch.setattr(f, "iter_rows", dying)
    with pytest.raises(KeyboardInterrupt):
        filter_documents(cfg_for(small, tmp_path / "k"))
    assert list(tmp_path.iterdir()) == [tmp_path / ".k.lock"]


def test_ref_entropy_scores_are_per_document_mean_entropies(small, tmp_path):
    """`slm score` writes the reference's entropies; ref_entropy ranks documents by their mean (lower kept)."""
    m = filter_documents(cfg_for(small, tmp_path / "ent", doc_score="ref_entropy", unscored="keep"))
    assert m["doc_score"] == "ref_entropy" and m["documents"]["kept"] >= 1
    kept = [json.loads(x)["slm_doc_score"] for x in open(tmp_path / "ent" / "kept.jsonl")]
    scored = [k for k in kept if k is not None]
    assert scored and all(k > 0 for k in scored)  # an entropy is positive


def assert_user_error(args, capsys, *needles):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(small, tiny_data, tmp_path, capsys):
    base = ["filter", "--data", small / "ds", "--ref-scores", small / "scores", "--inputs", small / "c.jsonl",
            "--out", tmp_path / "o", "--no-progress"]
    assert_user_error(base + ["--keep-fraction", "0.5", "--doc-score", "best"], capsys, "doc_score")
    assert_user_error(base + ["--keep-fraction", "0"], capsys, "keep_fraction")
    assert_user_error(base + ["--keep-fraction", "1.5"], capsys, "keep_fraction")
    assert_user_error(base, capsys, "--keep-fraction")
    assert_user_error(base + ["--keep-fraction", "0.5", "--doc-score", "mean_excess"], capsys, "--model")
    noent = [small / "scores-noent" if a == small / "scores" else a for a in base]
    assert_user_error(noent + ["--keep-fraction", "0.5", "--doc-score", "ref_entropy"], capsys, "entropies")
    swapped = [tiny_data if a == small / "ds" else a for a in base]
    assert_user_error(swapped + ["--keep-fraction", "0.5"], capsys, "tokenizer")  # scores made on another dataset
    wrong = [tiny_data.parent / "corpus.jsonl" if a == small / "c.jsonl" else a for a in base]
    assert_user_error(wrong + ["--keep-fraction", "0.5"], capsys, "sha256")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert_user_error(base + ["--keep-fraction", "0.5", "--overwrite"], capsys, "not empty")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"
