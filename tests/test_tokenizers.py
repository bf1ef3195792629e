"""Checkpoints load their own tokenizer through AutoTokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_data import make_docs

from selective_lm.data import load_tokenizer, train_tokenizer

TEXTS = ["x = 12345 + 678 - 9.0;  two  spaces\n\ttab", "café naïve Zürich 日本語 🎉 2024-01-31 3.14159",
         "   leading spaces, 1000000 and 0x1F\n\n\ntrailing   "]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """Our byte-level BPE, trained on text with numbers (Qwen2Tokenizer would split digits one by one)."""
    root = tmp_path_factory.mktemp("bpe")
    train_tokenizer(make_docs(40, seed=5) + ["12345 678 2024 1000000 3.14159"] * 20, 400, root / "tok")
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
