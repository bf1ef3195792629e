"""Tests of `slm prepare` (selective_lm.data / selective_lm.sources) and TokenDataset."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from selective_lm import data as D
from selective_lm.config import PrepareConfig
from selective_lm.data import (
    EOS_TOKEN,
    TokenDataset,
    dataset_fingerprint,
    iter_documents,
    load_tokenizer,
    prepare,
    token_dtype,
    tokenizer_fingerprint,
    train_tokenizer,
    train_tokenizer_from_inputs,
)
from selective_lm.files import UserError

WORDS = ("the quick brown fox jumps over a lazy dog while naïve café owners in Zürich sip "
         "tea, 日本語 text and emoji 🎉 appear; numbers 12345 and 3.14 too!").split()


def make_docs(n: int, seed: int = 0, words: tuple[int, int] = (40, 120)) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(*words)):
            parts.append(rng.choice(WORDS))
            parts.append(rng.choice([" ", " ", " ", "\n", "  ", "\n\n"]))
        docs.append("".join(parts).strip())
    return docs


def write_txt_dir(root: Path, docs: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (root / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg(inputs, out, **kw) -> PrepareConfig:
    kw.setdefault("seq_len", 16)
    kw.setdefault("vocab_size", 300)
    kw.setdefault("progress", False)
    return PrepareConfig(inputs=[str(i) for i in inputs], out=str(out), **kw)


def expected_ids(tok, docs: list[str]) -> list[int]:
    ids: list[int] = []
    for d in docs:
        ids += tok.backend_tokenizer.encode(d, add_special_tokens=False).ids + [tok.eos_token_id]
    return ids


@pytest.fixture(scope="module")
def shared_tok(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    train_tokenizer(make_docs(30, seed=99), 320, root / "tok")
    return root / "tok"


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_fingerprint(tmp_path, shared_tok):
    tok = load_tokenizer(shared_tok)
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id is not None
    for s in ["plain ascii text.", "héllo wörld 日本語 🎉\n\n  tabs\tand   spaces  ", "\u00a0x\u2028y\x00z",
              "never seen: Ωμέγα ∑ ∫ 𝔘𝔫𝔦"]:
        ids = tok.backend_tokenizer.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == s
    # save_pretrained of a loaded tokenizer keeps the fingerprint (datasets copy it)
    tok.save_pretrained(str(tmp_path / "copy"))
    assert tokenizer_fingerprint(tmp_path / "copy") == tokenizer_fingerprint(shared_tok)
    with pytest.raises(UserError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "nope")


def test_given_tokenizer_is_copied_verbatim(tmp_path, shared_tok):
    src = tmp_path / "model"
    src.mkdir()
    load_tokenizer(shared_tok).backend_tokenizer.save(str(src / "tokenizer.json"))  # raw tokenizers file
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS_TOKEN}))
    (src / "model.safetensors").write_bytes(b"weights")
    corpus = write_txt_dir(tmp_path / "c", make_docs(6))
    m = prepare(cfg([corpus], tmp_path / "ds", tokenizer=str(src), val_fraction=0.0))
    assert m["tokenizer_fingerprint"] == tokenizer_fingerprint(src)
    assert sorted(p.name for p in (tmp_path / "ds" / "tokenizer").iterdir()) == ["tokenizer.json",
                                                                               "tokenizer_config.json"]
    assert TokenDataset(tmp_path / "ds").eos_id == load_tokenizer(src).eos_token_id


def test_train_tokenizer_from_inputs(tmp_path):
    src = write_txt_dir(tmp_path / "c", make_docs(10))
    tok = train_tokenizer_from_inputs([str(src)], 300, tmp_path / "t")
    assert len(tok) <= 300 and (tmp_path / "t" / "tokenizer.json").is_file()
    assert load_tokenizer(tmp_path / "t").eos_token_id == tok.eos_token_id


# --------------------------------------------------------------------------- packing
def test_txt_round_trip_and_manifest(tmp_path):
    docs = make_docs(12)
    src = write_txt_dir(tmp_path / "corpus", docs)
    m = prepare(cfg([src], tmp_path / "ds", val_fraction=0.0))
    ds = TokenDataset(tmp_path / "ds")
    tok = ds.tokenizer()
    W = 17
    assert ds.splits() == ["train"] and ds.seq_len == 16 and m["window_len"] == W
    w = ds.windows("train")
    assert w.shape == (m["splits"]["train"]["windows"], W) and w.dtype == np.uint16
    assert not w.flags.writeable
    ref = expected_ids(tok, docs)
    flat = np.asarray(w).reshape(-1)
    n = len(ref) // W * W
    assert np.array_equal(flat, np.array(ref[:n]))
    assert m["dropped_tail_tokens"] == {"train": len(ref) - n}
    text = tok.decode(ref, clean_up_tokenization_spaces=False)
    assert text == "".join(d + EOS_TOKEN for d in docs)
    assert tok.decode(flat.tolist(), clean_up_tokenization_spaces=False) == text[:len(tok.decode(flat.tolist()))]
    # manifest
    assert m == json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["kind"] == "selective-lm-dataset" and m["format_version"] == D.FORMAT_VERSION
    assert m["vocab_size"] == len(tok) and m["eos_id"] == tok.convert_tokens_to_ids(EOS_TOKEN)
    assert m["documents"] == 12 and m["splits"]["train"]["documents"] == 12
    assert m["splits"]["train"]["tokens"] == n and m["replaced_bytes"] == 0
    assert m["provenance_labels"] is None and ds.provenance("train") is None
    assert not (tmp_path / "ds" / "train.prov.bin").exists()
    assert [Path(s["path"]).name for s in m["sources"]] == [f"doc{i:03d}.txt" for i in range(12)]
    assert m["sources"][0]["bytes"] == len(docs[0].encode())
    assert m["fingerprint"] == dataset_fingerprint(m) == ds.fingerprint
    assert m["tokenizer_fingerprint"] == tokenizer_fingerprint(ds.tokenizer_dir)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["manifest.json", "tokenizer", "train.bin"]


def test_split_by_hash_and_fingerprint(tmp_path, shared_tok):
    docs = make_docs(40)
    docs[5] = docs[30] = docs[17]  # identical documents must share a split
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    m1 = prepare(cfg([src], tmp_path / "a", tokenizer=str(shared_tok), val_fraction=0.3))
    m2 = prepare(cfg([src], tmp_path / "b", tokenizer=str(shared_tok), val_fraction=0.3))
    m3 = prepare(cfg([src], tmp_path / "c", tokenizer=str(shared_tok), val_fraction=0.3, seq_len=20))
    s = m1["splits"]
    assert s["train"]["documents"] + s["validation"]["documents"] == 40 and s["validation"]["documents"] > 0
    assert m1["fingerprint"] == m2["fingerprint"] != m3["fingerprint"]
    assert m1["tokenizer_fingerprint"] == tokenizer_fingerprint(shared_tok)
    val = [d for d in docs if D.is_validation(d, 0, 0.3)]
    assert len(val) == s["validation"]["documents"]
    tok = load_tokenizer(shared_tok)
    ref = expected_ids(tok, val)
    flat = TokenDataset(tmp_path / "a").windows("validation").reshape(-1)
    assert np.array_equal(flat, np.array(ref[:len(flat)]))
    assert D.is_validation(docs[5], 0, 0.3) == D.is_validation(docs[30], 0, 0.3)
    assert sum(D.is_validation(d, 1, 0.3) != D.is_validation(d, 0, 0.3) for d in docs) > 0  # seed matters


def test_split_field_and_test_fraction(tmp_path, shared_tok):
    """A document's `split` field decides its split (train/validation/test); the rest go by the hash,
    validation first, then test_fraction; the trained tokenizer never sees held-out text."""
    docs = make_docs(60, seed=3)
    rows = [{"text": d, **({"split": ("train", "validation", "test")[i % 3]} if i < 30 else {})}
            for i, d in enumerate(docs)]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    m = prepare(cfg([src], tmp_path / "a", tokenizer=str(shared_tok), val_fraction=0.2, test_fraction=0.2, seq_len=16))
    c = PrepareConfig(inputs=[src], out="x", val_fraction=0.2, test_fraction=0.2)
    want = {n: [d for i, d in enumerate(docs) if D.split_of(d, rows[i].get("split"), c) == n]
            for n in ("train", "validation", "test")}
    assert all(D.split_of(docs[i], None, c) in ("train", "validation", "test") for i in range(30, 60))
    tok = load_tokenizer(shared_tok)
    for name, ds in want.items():
        assert m["splits"][name]["documents"] == len(ds) > 10
        flat = TokenDataset(tmp_path / "a").windows(name).reshape(-1)
        assert np.array_equal(flat, np.array(expected_ids(tok, ds)[:len(flat)]))
    assert m["documents_split_by_field"] == 30 and m["test_fraction"] == 0.2
    # only split fields, no hash fractions: the splits the documents name
    m2 = prepare(cfg([src], tmp_path / "b", tokenizer=str(shared_tok), val_fraction=0.0, seq_len=16))
    assert set(m2["splits"]) == {"train", "validation", "test"}
    assert m2["splits"]["train"]["documents"] == 40
    # a bad split value is one clear error
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello world", "split": "dev"}])
    with pytest.raises(UserError, match="split 'dev' is not one of train, validation, test"):
        prepare(cfg([bad], tmp_path / "c", tokenizer=str(shared_tok)))
    with pytest.raises(UserError, match="test_fraction"):
        PrepareConfig(inputs=[src], out="y", val_fraction=0.5, test_fraction=0.5).validate()


def test_tokenizer_from_inputs_skips_held_out_documents(tmp_path):
    held = "zyxwzyxw qqqjjj " * 50
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in make_docs(20)] + [{"text": held, "split": "test"}])
    train_tokenizer_from_inputs([src], 300, tmp_path / "tok")
    vocab = load_tokenizer(tmp_path / "tok").get_vocab()
    assert not any("zyxw" in t or "qqq" in t for t in vocab)


def test_dtype_choice_and_uint32_reader(tmp_path, shared_tok):
    assert token_dtype(300) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32 and token_dtype(150_000) == np.uint32
    src = write_txt_dir(tmp_path / "c", make_docs(6))
    prepare(cfg([src], tmp_path / "ds", tokenizer=str(shared_tok), val_fraction=0.0))
    d = tmp_path / "ds"
    w16 = np.fromfile(d / "train.bin", dtype=np.uint16)
    (w16.astype(np.uint32) + 70_000).tofile(d / "train.bin")
    m = json.loads((d / "manifest.json").read_text())
    m.update(dtype="uint32", vocab_size=80_000)
    (d / "manifest.json").write_text(json.dumps(m))
    ds = TokenDataset(d)
    assert ds.windows("train").dtype == np.uint32
    x, y = ds.batch("train", [0])
    assert x.dtype == torch.int64 and int(x.min()) >= 70_000


def test_long_documents_are_encoded_in_exact_pieces(tmp_path, shared_tok, monkeypatch):
    monkeypatch.setattr(D, "_CHUNK_CHARS", 40)
    doc = "\n".join(make_docs(30, seed=3, words=(3, 12))) + "\n \nx.\n\ny\n'sz\n"
    assert len(D.split_long(doc, 40)) > 10 and "".join(D.split_long(doc, 40)) == doc
    src = write_txt_dir(tmp_path / "c", [doc])
    prepare(cfg([src], tmp_path / "ds", tokenizer=str(shared_tok), val_fraction=0.0, seq_len=8))
    ref = expected_ids(load_tokenizer(shared_tok), [doc])
    flat = TokenDataset(tmp_path / "ds").windows("train").reshape(-1)
    assert np.array_equal(flat, np.array(ref[:len(flat)])) and len(ref) - len(flat) < 9


# --------------------------------------------------------------------------- provenance
@pytest.mark.parametrize("small_buffers", [False, True])
def test_provenance_labels_follow_spans(tmp_path, shared_tok, monkeypatch, small_buffers):
    if small_buffers:  # flush windows to disk before the first spans document turns provenance on
        monkeypatch.setattr(D, "_FLUSH_TOKENS", 5)
        monkeypatch.setattr(D, "_BATCH_DOCS", 1)
    target = "Ωnoisyword"
    d1 = "the quick brown fox " + target + " jumps over the lazy dog"
    s1 = d1.index(target)
    d2 = "a lazy dog ends with off topic"
    s2 = d2.index("off topic")
    rows = [{"text": "plain doc without spans, " * 3}, {"text": d1, "spans": [[s1, s1 + len(target), 1]]},
            {"text": d2, "spans": [[s2, len(d2), "offtopic"]]}, {"text": "tail doc " * 5}]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    m = prepare(cfg([src], tmp_path / "ds", tokenizer=str(shared_tok), val_fraction=0.0, seq_len=4))
    ds = TokenDataset(tmp_path / "ds")
    assert m["provenance_labels"] == D.PROVENANCE_LABELS
    tok = ds.tokenizer()
    ids = np.asarray(ds.windows("train")).reshape(-1)
    prov = np.asarray(ds.provenance("train")).reshape(-1)
    assert prov.shape == ids.shape and ds.provenance("train").dtype == np.uint8
    docs = [r["text"] for r in rows]
    ref = expected_ids(tok, docs)
    assert np.array_equal(ids, ref[:len(ids)])
    bounds = np.cumsum([0] + [len(tok.backend_tokenizer.encode(d, add_special_tokens=False).ids) + 1
                              for d in docs])
    assert bounds[3] <= len(ids)
    p0, p1, p2 = (prov[bounds[i]:bounds[i + 1]] for i in range(3))
    assert not p0.any()
    noisy = tok.decode(ids[bounds[1]:bounds[2]][p1 == 1].tolist())
    assert noisy.strip() == target and set(p1.tolist()) == {0, 1} and p1[-1] == 0  # EOS: last char is content
    off = tok.decode(ids[bounds[2]:bounds[3]][p2 == 2].tolist(), skip_special_tokens=True)
    assert off.strip() == "off topic" and p2[-1] == 2  # EOS takes the label of the last character


def test_token_labels_skip_leading_space():
    assert D._label_names({1, 9}) == {**D.PROVENANCE_LABELS, "9": "label9"}
    assert list(D.PROVENANCE_LABELS.values())[:3] == ["content", "noise", "offtopic"]
    text = "ab cd"
    labels = D.token_labels(text, [(3, 5, 1)], [(0, 2), (2, 5)])  # tokens "ab", " cd"
    assert labels.tolist() == [0, 1]
    assert D.token_labels(text, [(2, 3, 2)], [(2, 3)]).tolist() == [2]  # all-space token: its start char


# --------------------------------------------------------------------------- input formats
def test_all_input_formats_give_the_same_windows(tmp_path, shared_tok):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_docs(8)
    write_txt_dir(tmp_path / "txt", docs)
    write_jsonl(tmp_path / "j" / "c.jsonl", [{"text": d, "id": i} for i, d in enumerate(docs)])
    (tmp_path / "j" / "a.json").write_text(json.dumps([{"text": d} for d in docs]))
    pq.write_table(pa.table({"text": docs, "n": list(range(8))}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "hf"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "test": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "hfd"))
    variants = {
        "dir": [tmp_path / "txt"], "glob": [str(tmp_path / "txt" / "doc*.txt")],
        "files": [tmp_path / "txt" / f"doc{i:03d}.txt" for i in range(8)],
        "jsonl": [tmp_path / "j" / "c.jsonl"], "json-array": [tmp_path / "j" / "a.json"],
        "parquet": [tmp_path / "c.parquet"], "hf": [tmp_path / "hf"], "hf-dict": [tmp_path / "hfd"],
    }
    results = {}
    for name, inputs in variants.items():
        m = prepare(cfg(inputs, tmp_path / "out" / name, tokenizer=str(shared_tok), val_fraction=0.0))
        assert m["documents"] == 8, name
        results[name] = (tmp_path / "out" / name / "train.bin").read_bytes()
    assert len(set(results.values())) == 1
    # a directory holding several kinds reads them all, in sorted order; HF dirs are not walked into
    m = prepare(cfg([tmp_path / "j", tmp_path / "hf"], tmp_path / "out" / "mixed", tokenizer=str(shared_tok),
                    val_fraction=0.0))
    assert m["documents"] == 24 and len(m["sources"]) == 3
    assert [Path(s["path"]).name for s in m["sources"]] == ["a.json", "c.jsonl", "hf"]
    # the input listed twice (dir + file inside) is read once
    docs_seen = list(iter_documents([str(tmp_path / "txt"), str(tmp_path / "txt" / "doc000.txt")]))
    assert [t for t, _ in docs_seen] == docs


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, shared_tok):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_bytes(b"good text \xff\xfe then more " * 4)
    (tmp_path / "c" / "b.jsonl").write_bytes(b'{"text": "caf\xe9 au lait, ' + b"x" * 40 + b'"}\n'
                                             b'{"text": "lone \\udc80 surrogate escape and more words"}\n')
    stats: dict = {}
    docs = [t for t, _ in iter_documents([str(tmp_path / "c")], stats=stats)]
    assert stats["replaced_bytes"] == 8 + 1 + 1 and stats["documents"] == 3
    assert docs[0].startswith("good text \ufffd\ufffd then") and "caf\ufffd au" in docs[1] and "\ufffd" in docs[2]
    m = prepare(cfg([tmp_path / "c"], tmp_path / "ds", tokenizer=str(shared_tok), val_fraction=0.0, seq_len=4))
    assert m["replaced_bytes"] == 10
    ds = TokenDataset(tmp_path / "ds")
    assert "\ufffd" in ds.tokenizer().decode(np.asarray(ds.windows("train")).reshape(-1).tolist())


# --------------------------------------------------------------------------- errors
def _bad(tmp_path: Path, shared_tok: Path, case: str):
    good = write_txt_dir(tmp_path / "good", make_docs(6))
    out = tmp_path / "out"
    if case == "missing":
        return cfg([tmp_path / "nope.txt"], out), "input path does not exist"
    if case == "glob":
        return cfg([str(tmp_path / "*.nothing")], out), "glob matched nothing"
    if case == "empty":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "a.txt").write_text("")
        return cfg([tmp_path / "e"], out), "no documents"
    if case == "no-files":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "a.csv").write_text("x")
        return cfg([tmp_path / "e"], out), "holds no"
    if case == "ext":
        (tmp_path / "a.csv").write_text("x")
        return cfg([tmp_path / "a.csv"], out), "unsupported input file type"
    if case == "json":
        (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
        return cfg([tmp_path / "b.jsonl"], out), r"b\.jsonl:2: not valid JSON"
    if case == "field":
        write_jsonl(tmp_path / "b.jsonl", [{"text": "ok"}, {"body": "no text"}])
        return cfg([tmp_path / "b.jsonl"], out), r"b\.jsonl:2: no 'text' field .*text_field"
    if case == "spans":
        write_jsonl(tmp_path / "b.jsonl", [{"text": "short", "spans": [[0, 99, 1]]}])
        return cfg([tmp_path / "b.jsonl"], out), r"b\.jsonl:1: bad span"
    if case == "parquet-column":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
        return cfg([tmp_path / "p.parquet"], out), "no 'text' column .*body"
    if case == "hf-split":
        import datasets
        datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "h"))
        return cfg([tmp_path / "h"], out), "no 'train' split .*test"
    if case == "tokenizer-missing":
        return cfg([good], out, tokenizer=str(tmp_path / "tk")), "tokenizer directory not found"
    if case == "tokenizer-no-eos":
        tok = load_tokenizer(shared_tok)
        cfgd = json.loads((shared_tok / "tokenizer_config.json").read_text())
        tok.save_pretrained(str(tmp_path / "tk"))
        cfgd.pop("eos_token", None)
        cfgd.pop("pad_token", None)
        (tmp_path / "tk" / "tokenizer_config.json").write_text(json.dumps(cfgd))
        return cfg([good], out, tokenizer=str(tmp_path / "tk")), "no eos_token"
    if case == "too-short":
        return cfg([good], out, seq_len=100_000, val_fraction=0.0), "zero complete windows.*lower seq_len"
    if case == "no-val-docs":
        return cfg([good / "doc000.txt"], out, val_fraction=0.01), "validation split got no documents.*val_fraction=0"
    if case == "out-not-dataset":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return cfg([good], out), "not empty and is not a dataset"
    if case == "out-is-file":
        out.write_text("x")
        return cfg([good], out), "is a file"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "glob", "empty", "no-files", "ext", "json", "field", "spans",
                                  "parquet-column", "hf-split", "tokenizer-missing", "tokenizer-no-eos",
                                  "too-short", "no-val-docs", "out-not-dataset", "out-is-file"])
def test_bad_input_raises_user_error(tmp_path, shared_tok, case):
    c, pattern = _bad(tmp_path, shared_tok, case)
    with pytest.raises(UserError, match=pattern) as info:
        prepare(c)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name != ".out.lock"]  # no temporaries


def test_overwrite_and_interrupted_prepare(tmp_path, shared_tok, monkeypatch):
    src = write_txt_dir(tmp_path / "c", make_docs(10))
    out = tmp_path / "ds"
    m1 = prepare(cfg([src], out, tokenizer=str(shared_tok), val_fraction=0.0))
    with pytest.raises(UserError, match="already holds a dataset: pass --overwrite"):
        prepare(cfg([src], out, tokenizer=str(shared_tok), val_fraction=0.0))
    m2 = prepare(cfg([src], out, tokenizer=str(shared_tok), val_fraction=0.0, seq_len=8, overwrite=True))
    assert TokenDataset(out).fingerprint == m2["fingerprint"] != m1["fingerprint"]

    def boom(*a, **k):
        raise RuntimeError("killed mid-prepare")

    # a failure after the windows were written leaves the previous dataset untouched ...
    monkeypatch.setattr(D, "dataset_fingerprint", boom)
    with pytest.raises(RuntimeError):
        prepare(cfg([src], out, tokenizer=str(shared_tok), val_fraction=0.0, seq_len=4, overwrite=True))
    assert TokenDataset(out).fingerprint == m2["fingerprint"]
    # ... and a fresh output directory never appears without its manifest
    monkeypatch.setattr(D._SplitWriter, "flush", boom)
    with pytest.raises(RuntimeError):
        prepare(cfg([src], tmp_path / "fresh", tokenizer=str(shared_tok), val_fraction=0.0))
    assert not (tmp_path / "fresh").exists()
    # what is left is the work of the two runs (their units, for a re-run to resume), nothing that looks complete
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [".ds.prepare",
                                                                                          ".fresh.prepare", "c", "ds"]
    monkeypatch.undo()
    m3 = prepare(cfg([src], tmp_path / "fresh", tokenizer=str(shared_tok), val_fraction=0.0))
    assert m3["fingerprint"] == prepare(cfg([src], tmp_path / "again", tokenizer=str(shared_tok),
                                            val_fraction=0.0))["fingerprint"]
    assert not (tmp_path / ".fresh.prepare").exists()


# --------------------------------------------------------------------------- reader
def test_token_dataset_batch_and_errors(tmp_path, shared_tok):
    src = write_txt_dir(tmp_path / "c", make_docs(30))
    prepare(cfg([src], tmp_path / "ds", tokenizer=str(shared_tok), val_fraction=0.2))
    ds = TokenDataset(tmp_path / "ds")
    assert set(ds.splits()) == {"train", "validation"} and ds.num_windows("validation") > 0
    w = ds.windows("train")
    for idx in ([2, 0, 1], np.array([1, 1]), torch.tensor([0, 3]), slice(1, 4)):
        x, y = ds.batch("train", idx)
        rows = np.asarray(w[idx if not isinstance(idx, torch.Tensor) else idx.numpy()])
        assert x.shape == y.shape == (len(rows), ds.seq_len) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert np.array_equal(x.numpy(), rows[:, :-1]) and np.array_equal(y.numpy(), rows[:, 1:])
    with pytest.raises(UserError, match="unknown split 'test'.*train, validation"):
        ds.num_windows("test")
    with pytest.raises(ValueError):
        w[0, 0] = 1  # read-only
    for bad in (tmp_path / "c", tmp_path / "missing"):
        with pytest.raises(UserError, match=r"not a dataset directory: .*\(make one with `slm prepare`\)"):
            TokenDataset(bad)
    shutil.copy(tmp_path / "ds" / "train.bin", tmp_path / "t.bin")
    with open(tmp_path / "ds" / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="truncated"):
        TokenDataset(tmp_path / "ds").windows("train")


def test_train_tokenizer_from_empty_inputs_saves_nothing(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text("")
    with pytest.raises(UserError, match="no documents"):
        train_tokenizer_from_inputs([str(tmp_path / "e")], 300, tmp_path / "t")
    assert not (tmp_path / "t").exists()
