"""Checkpoints load their own tokenizer through AutoTokenizer; BOS handling of `slm prepare`; eval's tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import cfg, expected_ids, make_docs, write_jsonl, write_txt_dir

from selective_lm import data as D
from selective_lm.cli import main
from selective_lm.data import TokenDataset, load_tokenizer, prepare, train_tokenizer
from selective_lm.tokenizer import adds_bos

TEXTS = ["x = 12345 + 678 - 9.0;  two  spaces\n\ttab", "café naïve Zürich 日本語 🎉 2024-01-31 3.14159",
         "   leading spaces, 1000000 and 0x1F\n\n\ntrailing   "]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """Our byte-level BPE, trained on text with numbers (Qwen2Tokenizer would split digits one by one)."""
    root = tmp_path_factory.mktemp("bpe")
    train_tokenizer(make_docs(40, seed=5) + ["12345 678 2024 1000000 3.14159"] * 20, 400, root / "tok")
    return root / "tok"


@pytest.fixture(scope="module")
def bos_tok(tmp_path_factory) -> Path:
    """A Llama-style fast tokenizer made here: <s> is its BOS, and its post-processor adds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(make_docs(30, seed=7), trainers.BpeTrainer(
        vocab_size=350, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    root = tmp_path_factory.mktemp("bostok")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(str(root / "tok"))
    return root / "tok"


def tiny_checkpoint(arch: str, tok_dir: Path, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from selective_lm.model import save_checkpoint_dir

    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    config = config_cls(vocab_size=len(load_tokenizer(tok_dir)), hidden_size=16, intermediate_size=32,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return save_checkpoint_dir(model_cls(config), out, tok_dir)


# --------------------------------------------------------------------------- AutoTokenizer
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_checkpoint_loads_its_own_tokenizer_through_autotokenizer(tmp_path, bpe, arch):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ckpt = tiny_checkpoint(arch, bpe, tmp_path / arch)
    raw = Tokenizer.from_file(str(bpe / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(ckpt))
    for text in TEXTS:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert auto.encode(text, add_special_tokens=False) == ids == auto.encode(text)
        assert auto.decode(ids) == text
    assert auto.eos_token_id == raw.token_to_id("<|endoftext|>")
    # the dataset's tokenizer directory, which checkpoints copy, is pinned the same way
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


# --------------------------------------------------------------------------- BOS
def test_bos_auto_follows_the_tokenizer(tmp_path, bos_tok, bpe, monkeypatch):
    tok = load_tokenizer(bos_tok)
    bos = tok.bos_token_id
    assert adds_bos(tok) and not adds_bos(load_tokenizer(bpe))
    docs = make_docs(6, seed=2)
    src = write_txt_dir(tmp_path / "c", docs)
    monkeypatch.setattr(D, "_CHUNK_CHARS", 40)  # long documents are cut in pieces: BOS only before the first
    assert D.can_chunk(tok) and len(D.split_long(docs[0], 40)) > 1
    m = prepare(cfg([src], tmp_path / "auto", tokenizer=str(bos_tok), val_fraction=0.0, seq_len=8))
    assert m["bos"] == "auto" and m["bos_id"] == bos and TokenDataset(tmp_path / "auto").bos_id == bos
    ref: list[int] = []
    for d in docs:
        ref += [bos] + tok.backend_tokenizer.encode(d, add_special_tokens=False).ids + [tok.eos_token_id]
    flat = np.asarray(TokenDataset(tmp_path / "auto").windows("train")).reshape(-1)
    assert len(ref) - len(flat) < 9 and np.array_equal(flat, np.array(ref[:len(flat)]))
    assert (flat == bos).sum() == len(docs)
    # bos=false: the tokens of before, and another fingerprint (old scores are not reused)
    m2 = prepare(cfg([src], tmp_path / "off", tokenizer=str(bos_tok), val_fraction=0.0, seq_len=8, bos="false"))
    flat2 = np.asarray(TokenDataset(tmp_path / "off").windows("train")).reshape(-1)
    assert m2["bos_id"] is None and np.array_equal(flat2, expected_ids(tok, docs)[:len(flat2)])
    assert m2["fingerprint"] != m["fingerprint"]
    # our trained BPE gets no BOS under auto
    m3 = prepare(cfg([src], tmp_path / "bpe", val_fraction=0.0))
    assert m3["bos"] == "auto" and m3["bos_id"] is None


def test_bos_with_provenance_spans(tmp_path, bos_tok):
    tok = load_tokenizer(bos_tok)
    docs = make_docs(4, seed=4)
    rows = [{"text": d, "spans": [[0, 5, 2], [len(d) - 3, len(d), 1]]} if i % 2 == 0 else {"text": d}
            for i, d in enumerate(docs)]
    write_jsonl(tmp_path / "c.jsonl", rows)
    prepare(cfg([tmp_path / "c.jsonl"], tmp_path / "ds", tokenizer=str(bos_tok), val_fraction=0.0, seq_len=8,
                bos="true"))
    ds = TokenDataset(tmp_path / "ds")
    flat = np.asarray(ds.windows("train")).reshape(-1)
    prov = np.asarray(ds.provenance("train")).reshape(-1)
    starts = np.flatnonzero(flat == tok.bos_token_id)
    assert len(starts) >= 3 and list(prov[starts[:3]]) == [2, 0, 2]  # BOS: the label of the first character
    eos = np.flatnonzero(flat == tok.eos_token_id)
    assert list(prov[eos[:3]]) == [1, 0, 1]


def test_bos_true_without_a_bos_token_exits_2(tmp_path, bpe, capsys):
    src = write_txt_dir(tmp_path / "c", make_docs(6))
    for extra, needle in ((["--tokenizer", str(bpe)], "has no BOS token: set bos_token in its tokenizer_config.json"),
                          ([], "needs a tokenizer with a BOS token"), (["bos=maybe"], "unknown bos 'maybe'")):
        code = main(["prepare", "--inputs", str(src), "--out", str(tmp_path / "ds"), "--no-progress",
                     *(["bos=true"] if "bos=maybe" not in extra else []), *extra])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- eval
def test_fewshot_prompts_start_with_bos_once(bos_tok):
    from selective_lm.fewshot import fewshot_accuracy

    tok = load_tokenizer(bos_tok)
    seen = []

    class Stub(torch.nn.Module):
        config = type("C", (), {"max_position_embeddings": 512})()

        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            seen.append((input_ids, attention_mask))
            answer = torch.tensor(tok.encode(" 2 + 2 = 4.\nAnswer: 4\n\n", add_special_tokens=False))
            return torch.cat([input_ids, answer.expand(len(input_ids), -1)], dim=1)

    qs = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "What is 12 + 30?", "answer": "42"}]
    ex = [{"question": "What is 1 + 1?", "solution": "1 + 1 = 2.", "answer": "2"}] * 2
    r = fewshot_accuracy(Stub(), tok, qs, ex, shots=2, max_new_tokens=8, bos_id=tok.bos_token_id)
    assert r["correct"] == 1
    (ids, mask), = seen
    for row, m in zip(ids.tolist(), mask.tolist()):
        prompt = row[m.index(1):]
        assert prompt[0] == tok.bos_token_id and prompt.count(tok.bos_token_id) == 1


def test_eval_uses_the_saved_tokenizer_not_the_model_types_class(tmp_path, bpe, monkeypatch):
    """An unpinned Qwen2 checkpoint (written before the pin) is still evaluated with its own tokenizer."""
    from selective_lm import evaluate as E
    from selective_lm.config import EvalConfig
    from selective_lm.model import write_index

    ckpt = tiny_checkpoint("qwen2", bpe, tmp_path / "q")
    tc = json.loads((ckpt / "tokenizer_config.json").read_text())
    tc.pop("tokenizer_class"), tc.pop("trust_remote_code", None)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tc))
    (ckpt / "index.json").unlink()
    write_index(ckpt)
    write_jsonl(tmp_path / "q.jsonl", [{"question": "What is 12345 + 1?", "answer": "12346"}])
    got = {}
    real = E.fewshot_accuracy
    monkeypatch.setattr(E, "fewshot_accuracy", lambda model, tok, *a, **k: (got.update(tok=tok, **k),
                                                                            real(model, tok, *a, **k))[1])
    E.evaluate(EvalConfig(model=str(ckpt), fewshot=str(tmp_path / "q.jsonl"), max_new_tokens=2, device="cpu",
                          progress=False))
    ref = load_tokenizer(bpe)
    for text in TEXTS:
        assert got["tok"].encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
    assert got["bos_id"] is None
