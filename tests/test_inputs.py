"""Compressed inputs (.gz, .zst, .bz2, .xz) and skipped files in `slm prepare` (selective_lm.sources)."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
from pathlib import Path

import numpy as np
import pytest
import zstandard
from test_data import cfg, expected_ids, make_docs

from selective_lm.cli import main
from selective_lm.data import TokenDataset, iter_documents, load_tokenizer, prepare, train_tokenizer
from selective_lm.files import UserError
from selective_lm.sources import open_input

COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": lambda b: zstandard.ZstdCompressor().compress(b)}


def zst_frames(data: bytes) -> bytes:
    """Two zstd frames back to back, as `zstd -T0` and pzstd write large files."""
    half = len(data) // 2
    return COMPRESS[".zst"](data[:half]) + COMPRESS[".zst"](data[half:])


def jsonl_bytes(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    train_tokenizer(make_docs(30, seed=99), 320, root / "tok")
    return root / "tok"


def test_compressed_files_give_the_tokens_of_the_plain_file(tmp_path, tok):
    docs = make_docs(6)
    plain = jsonl_bytes(docs)
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.jsonl").write_bytes(plain)
    (d / "b.jsonl.gz").write_bytes(COMPRESS[".gz"](plain))
    (d / "c.zst").write_bytes(b"")  # no format extension under the compression: skipped, not guessed
    (d / "d.jsonl.zst").write_bytes(zst_frames(plain))
    (d / "e.JSON.BZ2").write_bytes(COMPRESS[".bz2"](json.dumps([{"text": t} for t in docs]).encode()))
    (d / "f.txt.xz").write_bytes(COMPRESS[".xz"](docs[0].encode()))
    (d / "g.md.zst").write_bytes(COMPRESS[".zst"](docs[1].encode()))
    (d / "notes.csv").write_text("a,b\n")
    (d / "h.parquet.gz").write_bytes(b"x")
    code = main(["prepare", "--inputs", str(d), "--out", str(tmp_path / "ds"), "--tokenizer", str(tok),
                 "--seq-len", "16", "val_fraction=0", "--no-progress"])
    assert code == 0
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert [Path(s["path"]).name for s in m["sources"]] == ["a.jsonl", "b.jsonl.gz", "d.jsonl.zst", "e.JSON.BZ2",
                                                           "f.txt.xz", "g.md.zst"]
    assert [Path(f).name for f in m["skipped_files"]] == ["c.zst", "h.parquet.gz", "notes.csv"]
    assert m["documents"] == 4 * 6 + 2
    ref = expected_ids(load_tokenizer(tok), docs * 4 + docs[:2])
    flat = np.asarray(TokenDataset(tmp_path / "ds").windows("train")).reshape(-1)
    assert len(ref) - len(flat) < 17 and np.array_equal(flat, np.array(ref[:len(flat)]))


def test_prepare_summary_names_the_skipped_files(tmp_path, tok, capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt.gz").write_bytes(COMPRESS[".gz"](" ".join(make_docs(4)).encode()))
    for name in ("b.pdf", "c.csv", "d.tar.gz"):
        (d / name).write_bytes(b"x")
    assert main(["prepare", "--inputs", str(d), "--out", str(tmp_path / "ds"), "--tokenizer", str(tok),
                 "--seq-len", "8", "val_fraction=0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 files of other types (b.pdf, c.csv, d.tar.gz;" in out and "manifest.json" in out
    # a glob skips (and reports) what it matched of other types too
    stats: dict = {}
    assert len(list(iter_documents([str(d / "*")], stats=stats))) == 1
    assert [Path(f).name for f in stats["skipped"]] == ["b.pdf", "c.csv", "d.tar.gz"]


def test_directory_with_nothing_readable_is_refused(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for name in ("a.csv", "b.parquet.zst", "c.gz"):
        (d / name).write_bytes(b"x")
    with pytest.raises(UserError, match=r"holds no .*\.zst.*\(3 files of other types skipped: a\.csv, "
                                        r"b\.parquet\.zst, c\.gz\): point --inputs") as info:
        prepare(cfg([d], tmp_path / "ds"))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"unsupported input file type '\.parquet\.zst'"):
        prepare(cfg([d / "b.parquet.zst"], tmp_path / "ds"))


@pytest.mark.parametrize("ext", [".gz", ".zst", ".bz2", ".xz"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_compressed_file_is_one_line_exit_2(tmp_path, tok, capsys, ext, damage):
    data = COMPRESS[ext](jsonl_bytes(make_docs(40, seed=1)))
    bad = data[:len(data) // 2] if damage == "truncated" else b"this is not compressed data at all\n" * 4
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / f"x.jsonl{ext}").write_bytes(bad)
    code = main(["prepare", "--inputs", str(tmp_path / "c"), "--out", str(tmp_path / "ds"), "--tokenizer", str(tok),
                 "--seq-len", "8", "val_fraction=0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"x.jsonl{ext}: corrupt or truncated {ext} file" in err and "-t x.jsonl" in err
    assert not (tmp_path / "ds").exists()


def test_zstd_is_streamed_not_read_whole(tmp_path):
    rng = random.Random(0)
    rows = [json.dumps({"text": "".join(rng.choice("abcdefghij ") for _ in range(200))}) + "\n" for _ in range(20000)]
    path = tmp_path / "big.jsonl.zst"
    path.write_bytes(COMPRESS[".zst"]("".join(rows).encode()))
    with open_input(path) as f:
        assert f.readline().decode() == rows[0]
        assert f.raw._f.tell() < path.stat().st_size / 4  # only the first chunks were read
