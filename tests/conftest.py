import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import random

import pytest


def make_corpus(path, n_docs=300, seed=0):
    """Small JSONL corpus: pseudo-English with numbers, plus noise spans on some documents."""
    r = random.Random(seed)
    words = "the of and to in is that it for on with as was at by an be this from or are we sum".split()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            text = " ".join(r.choice(words) for _ in range(r.randint(60, 160)))
            text += f". {r.randint(0, 99)} + {r.randint(0, 99)} = ?"
            spans = []
            if r.random() < 0.5:
                junk = " ".join("".join(r.choice("abcdef0123456789") for _ in range(8)) for _ in range(10))
                spans = [[len(text) + 1, len(text) + 1 + len(junk), 1]]
                text = text + " " + junk
            f.write(json.dumps({"text": text, "spans": spans}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared dataset (seq_len 32, BPE vocab 320) shared by the tests."""
    from selective_lm.config import PrepareConfig
    from selective_lm.data import prepare

    root = tmp_path_factory.mktemp("tiny")
    make_corpus(root / "corpus.jsonl")
    prepare(PrepareConfig(inputs=[str(root / "corpus.jsonl")], out=str(root / "ds"), vocab_size=320, seq_len=32,
                          val_fraction=0.1, progress=False))
    return root / "ds"


@pytest.fixture(scope="session")
def reference(tiny_data, tmp_path_factory):
    """A briefly trained reference model (root/ref/final) and its scores of tiny_data's train split (root/scores)."""
    from selective_lm.config import ScoreConfig, TrainConfig
    from selective_lm.scoring import score
    from selective_lm.train import train

    root = tmp_path_factory.mktemp("ref")
    train(TrainConfig(data=str(tiny_data), out=str(root / "ref"), model="tiny", batch_size=4, max_steps=30, lr=3e-3,
                      warmup_steps=2, log_every=10, eval_windows=8, progress=False), console=False)
    score(ScoreConfig(data=str(tiny_data), model=str(root / "ref" / "final"), out=str(root / "scores"), progress=False))
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for a worker."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


@pytest.fixture(scope="session")
def v2_study(tmp_path_factory):
    """One synthetic v2 study (3 seeds, 10 checkpoints) per session, for the study report tests."""
    from synthetic_study import build_study

    return build_study(tmp_path_factory.mktemp("v2"))


@pytest.fixture(scope="session")
def tiny_llama(tiny_data, tmp_path_factory):
    """A checkpoint of TinyLlama-1.1B's architecture made tiny: LlamaForCausalLM, grouped-query attention with 8
    query heads per key/value head (32:4 there), the MLP 2.75x the width, rope_theta 1e4, 2048 positions, untied
    head; 1 layer of width 64 and tiny_data's vocabulary (~60k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from selective_lm.data import TokenDataset
    from selective_lm.tokenizer import copy_tokenizer

    ds = TokenDataset(tiny_data)
    cfg = LlamaConfig(vocab_size=ds.vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=1,
                      num_attention_heads=8, num_key_value_heads=1, max_position_embeddings=2048, rope_theta=10000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=ds.eos_id, eos_token_id=ds.eos_id)
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tinyllama") / "model"
    LlamaForCausalLM(cfg).save_pretrained(out)
    copy_tokenizer(ds.tokenizer_dir, out)
    return out


def train_cut_at(cfg, step: int, monkeypatch) -> None:
    """``train(cfg)`` interrupted (KeyboardInterrupt) as its optimizer step ``step`` begins, as a kill would."""
    import selective_lm.train as train_mod

    real = train_mod.train_step

    def stop(t, at, *a, **k):
        if at == step:
            raise KeyboardInterrupt
        return real(t, at, *a, **k)

    monkeypatch.setattr(train_mod, "train_step", stop)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, console=False)
    monkeypatch.setattr(train_mod, "train_step", real)
