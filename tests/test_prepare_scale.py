"""`slm prepare` at corpus scale: units over worker processes and torchrun ranks give the bytes of one process,
an interrupted prepare resumes, memory stays flat when the corpus grows 10x, and the tokenizer's sample is bounded
and seeded."""
import filecmp
import json
import tracemalloc
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from conftest import dist_env, free_port, make_corpus

import selective_lm.data as D
import selective_lm.shards as S
from selective_lm.config import PrepareConfig
from selective_lm.data import TokenDataset, prepare, split_of
from selective_lm.tokenizer import load_tokenizer, tokenizer_fingerprint

SMALL_UNITS = 12_000  # bytes: the corpus below becomes ~30 units, JSONL files cut at line starts, Parquet row groups


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two JSONL files (with provenance spans), a Parquet file of small row groups and a text file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("scale")
    make_corpus(root / "a.jsonl", n_docs=200, seed=1)
    make_corpus(root / "b.jsonl", n_docs=150, seed=2)
    rows = [json.loads(x)["text"] for x in (root / "b.jsonl").read_text().splitlines()][:60]
    pq.write_table(pa.table({"text": rows}), root / "c.parquet", row_group_size=10)
    (root / "d.txt").write_text("a plain text document\n" * 40)
    return [str(root / n) for n in ("a.jsonl", "b.jsonl", "c.parquet", "d.txt")]


def _cfg(inputs, out, **kw):
    return PrepareConfig(inputs=inputs, out=str(out), **{"vocab_size": 300, "seq_len": 16, "val_fraction": 0.1,
                                                         "progress": False, **kw})


def same_tree(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: one process, one unit per file (the default unit is far larger than these files)."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    prepare(_cfg(corpus, out))
    return out


def _rank(rank, world, port, corpus, out):
    dist_env(rank, world, port)
    S.UNIT_BYTES = SMALL_UNITS
    from selective_lm.cli import main

    assert main(["prepare", "--inputs", *corpus, "--out", str(out), "--vocab-size", "300", "--seq-len", "16",
                 "--val-fraction", "0.1", "--no-progress", "num_workers=2"]) == 0


def test_workers_and_ranks_write_the_bytes_of_one_process(corpus, one_process, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "UNIT_BYTES", SMALL_UNITS)
    job = S.plan(corpus)
    assert len(job["units"]) > 10 and any(lo for u in job["units"] for _, lo, _ in u)  # files cut into pieces
    m = json.loads((one_process / "manifest.json").read_text())
    assert m["provenance_labels"] and m["splits"]["validation"]["windows"] > 0
    for workers in (1, 2):
        prepare(_cfg(corpus, tmp_path / f"w{workers}", num_workers=workers))
        same_tree(one_process, tmp_path / f"w{workers}")
    mp.spawn(_rank, args=(2, free_port(), corpus, tmp_path / "ranks"), nprocs=2, join=True)
    same_tree(one_process, tmp_path / "ranks")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ranks.lock", ".w1.lock", ".w2.lock", "ranks", "w1", "w2"]


def test_an_interrupted_prepare_resumes(corpus, one_process, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "UNIT_BYTES", SMALL_UNITS)
    real, calls, stop = D._run_task, [], [4]

    def run(task):
        calls.append(task[:2])
        if len(calls) == stop[0]:
            raise KeyboardInterrupt  # a kill after three tasks
        return real(task)

    monkeypatch.setattr(D, "_run_task", run)
    with pytest.raises(KeyboardInterrupt):
        prepare(_cfg(corpus, tmp_path / "ds"))
    assert not (tmp_path / "ds").exists() and (tmp_path / ".ds.prepare" / "job.json").is_file()
    tasks = len(S.plan(corpus)["units"]) + len(corpus)  # a task per unit and per input file
    calls.clear()
    stop[0] = None
    prepare(_cfg(corpus, tmp_path / "ds"))
    assert len(calls) == tasks - 3  # only the tasks not done before
    same_tree(one_process, tmp_path / "ds")
    assert not (tmp_path / ".ds.prepare").exists()
    # the same command on changed input starts over
    calls.clear()
    stop[0] = 4
    with pytest.raises(KeyboardInterrupt):
        prepare(_cfg(corpus, tmp_path / "ds2"))
    text = Path(corpus[3]).read_text()
    Path(corpus[3]).write_text(text + "one more line\n")
    calls.clear()
    stop[0] = None
    try:
        prepare(_cfg(corpus, tmp_path / "ds2"))
        assert len(calls) == tasks
    finally:
        Path(corpus[3]).write_text(text)


def test_peak_memory_is_flat_when_the_corpus_grows_tenfold(tmp_path, monkeypatch):
    """Python-side peak (tracemalloc: lists, arrays, batches) of a prepare of N and of 10 N documents, with the
    buffers made small so that N already fills them: flat means nothing holds the corpus."""
    for name, value in (("_BATCH_CHARS", 1 << 13), ("_BATCH_DOCS", 32), ("_FLUSH_TOKENS", 1 << 12)):
        monkeypatch.setattr(D, name, value)
    monkeypatch.setattr(S, "UNIT_BYTES", 1 << 16)
    import selective_lm.sources as sources

    real_sha = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: real_sha(p, chunk=1 << 14))  # reads of 16 KiB, not 1 MiB
    make_corpus(tmp_path / "small.jsonl", n_docs=150, seed=3)
    lines = (tmp_path / "small.jsonl").read_text()
    (tmp_path / "big.jsonl").write_text(lines * 10)
    prepare(_cfg([str(tmp_path / "small.jsonl")], tmp_path / "tok"))
    peaks = {}
    for name in ("small", "big"):
        tracemalloc.start()
        m = prepare(_cfg([str(tmp_path / f"{name}.jsonl")], tmp_path / name, tokenizer=str(tmp_path / "tok" / "tokenizer")))
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks[name + "_tokens"] = m["splits"]["train"]["tokens"]
    assert peaks["big_tokens"] > 9 * peaks["small_tokens"]
    assert peaks["big"] < 1.5 * peaks["small"], peaks


def test_the_tokenizer_sample_is_bounded_and_seeded(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "UNIT_BYTES", SMALL_UNITS)
    seen = []
    real = D.train_tokenizer

    def spy(texts, vocab_size, out_dir):
        texts = list(texts)
        seen.append(texts)
        return real(texts, vocab_size, out_dir)

    monkeypatch.setattr(D, "train_tokenizer", spy)
    fps = []
    for seed_, budget in ((0, 20_000), (0, 20_000), (5, 20_000), (0, 0)):
        m = prepare(_cfg(corpus, tmp_path / f"s{len(fps)}", tokenizer_sample=budget, seed=seed_, val_fraction=0.0))
        fps.append(m["tokenizer_fingerprint"])
    longest = max(len(t) for t in seen[3])
    units = len(S.plan(corpus)["units"])
    for texts in seen[:3]:  # the budget, give or take the last document of each unit's share
        assert 20_000 <= sum(map(len, texts)) <= 20_000 + 2 * units * longest
    assert seen[0] == seen[1] and fps[0] == fps[1] and seen[2] != seen[0]  # the seed picks the sample
    assert sum(map(len, seen[3])) > 5 * 20_000  # budget 0: every document
    # a corpus within the budget gives the tokenizer of every train document, as before the budget existed
    cfg = _cfg(corpus, tmp_path / "x", val_fraction=0.0)
    docs = [t for t, _, g in D.iter_documents(corpus, with_split=True) if split_of(t, g, cfg) == "train"]
    real(docs, 300, tmp_path / "all")
    assert fps[3] == tokenizer_fingerprint(tmp_path / "all")
    assert TokenDataset(tmp_path / "s0").tokenizer().vocab_size == load_tokenizer(tmp_path / "all").vocab_size
