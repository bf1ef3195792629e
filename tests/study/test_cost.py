"""SLM's full cost (selective_lm.study.cost): parameter counts, FLOPs per token and the speed-ups, by hand."""
from __future__ import annotations

import pytest
from synthetic_study import build_study

from selective_lm.study.collect import collect
from selective_lm.study.cost import AMORTISE, flops_per_token, model_shape


def test_model_shape_counts_a_real_checkpoint(tmp_path):
    from selective_lm.model import build_model

    model = build_model("tiny", vocab_size=300, seq_len=64, eos_id=0)
    model.save_pretrained(tmp_path)
    shape = model_shape(tmp_path)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    assert shape == {"parameters": total, "embedding": emb, "N": total - emb, "layers": 4, "width": 128}


def test_flops_per_token_formulas():
    shape = {"N": 1000, "layers": 2, "width": 8}
    attn = 4 * 2 * 8 * 16
    assert flops_per_token(shape, 16, train=False) == 2 * 1000 + attn
    assert flops_per_token(shape, 16) == 6 * 1000 + 3 * attn
    assert flops_per_token(shape, 16, trainable=10) == 4 * 1000 + 6 * 10 + 3 * attn


def test_speedups_in_tokens_and_flops_by_hand(tmp_path):
    res = collect(build_study(tmp_path, checkpoints=4, ratios=(0.6,), strategies=("topk", "random")))
    c = res["cost"]
    train, fwd = c["flops_per_token"]["train"], c["flops_per_token"]["forward"]
    shape = c["model"]
    assert shape["N"] == 4 * 4 + 4 + 8 * 4 and shape["embedding"] == 0  # "emb.weight" is not an input embedding name
    for name, row in c["runs"].items():
        r = res["runs"][name]
        tokens = r["final"]["tokens"]
        assert row["train_flops"] == pytest.approx(train * tokens)
        pl = c["pipelines"][str(r["seed"])]["1:10"]
        if r["group"] == "slm-topk-0.6":  # pays the reference and the scoring pass
            assert row["reference_flops"] == pytest.approx(train * pl["reference_tokens"])
            assert row["score_flops"] == pytest.approx(fwd * pl["scored_tokens"])
            e = res["data_efficiency"]["runs"][name]["final"]
            t = e["tokens_run"]
            assert row["speedup_tokens"] == pytest.approx(tokens / t)
            for k in AMORTISE:
                want = train * tokens / (train * t + (row["reference_flops"] + row["score_flops"]) / k)
                assert row["speedup_flops"][str(k)] == pytest.approx(want)
            assert row["speedup_flops"]["1"] < row["speedup_flops"]["10"] < row["speedup_tokens"]
        elif r["arm"] in ("clm", "hq") or r.get("strategy") == "random":  # no reference needed
            assert row["reference_flops"] == 0 and row["score_flops"] == 0
    assert c["groups"]["clm"]["measured"] is False and c["groups"]["slm-topk-0.6"]["measured"] is True
