"""Tests for selective_lm.analysis.cosine (PEFT merge equivalence and known cosines)."""
import copy
import math

import numpy as np
import pytest
import torch

from selective_lm.analysis.cosine import cosine_matrix, flatten_delta, full_delta, lora_delta


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4,
    )
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_delta_equals_merged_minus_base(use_rslora):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    base = _tiny_llama()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=False, use_rslora=use_rslora)
    peft_model = get_peft_model(copy.deepcopy(base), cfg)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    full = full_delta(base_state, merged.state_dict())

    saved = get_peft_model_state_dict(peft_model)  # keys without ".default"
    assert any(k.endswith("q_proj.lora_A.weight") for k in saved)
    delta = lora_delta(saved, alpha=8, r=4, use_rslora=use_rslora)
    assert sorted(delta) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    )
    for name, dw in delta.items():
        assert dw.dtype == torch.float64
        torch.testing.assert_close(dw, full[name + ".weight"], atol=1e-6, rtol=1e-5)
        assert dw.abs().max() > 1e-3  # non-trivial update
    for key, d in full.items():  # nothing else changed
        if key.removesuffix(".weight") not in delta:
            assert torch.count_nonzero(d) == 0, key

    live = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert any(".lora_A.default.weight" in k for k in live)
    delta2 = lora_delta(live, alpha=8, r=4, use_rslora=use_rslora)
    assert delta2.keys() == delta.keys()
    for name in delta:
        torch.testing.assert_close(delta2[name], delta[name])


def test_lora_delta_scaling_by_hand():
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # r=2, in=3
    b = torch.tensor([[1.0, 1.0], [0.0, 3.0]])  # out=2
    state = {"base_model.model.lin.lora_A.weight": a, "base_model.model.lin.lora_B.weight": b}
    expected = torch.tensor([[1.0, 1.0, 2.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(lora_delta(state, alpha=4, r=2)["lin"], expected * 2)
    torch.testing.assert_close(lora_delta(state, alpha=4, r=2, use_rslora=True)["lin"], expected * 4 / math.sqrt(2))
    emb = {"emb.lora_embedding_A": a, "emb.lora_embedding_B": b}
    torch.testing.assert_close(lora_delta(emb, alpha=2, r=2)["emb"], expected.T)


@pytest.mark.parametrize(
    "state,r",
    [
        ({"m.lora_A.weight": torch.ones(2, 3)}, 2),  # missing B
        ({"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(4, 2)}, 3),  # wrong r
        ({"m.weight": torch.ones(2, 2)}, 2),  # no LoRA keys
        ({"m.lora_A.x.weight": torch.ones(2, 3), "m.lora_B.y.weight": torch.ones(4, 2)}, 2),
    ],
)
def test_lora_delta_errors(state, r):
    with pytest.raises(ValueError):
        lora_delta(state, alpha=1.0, r=r)


def test_full_delta():
    base = {"w": torch.ones(2, 2), "b": torch.zeros(3), "ids": torch.arange(3), "only_base": torch.ones(1)}
    run = {"w": torch.full((2, 2), 3.0), "b": torch.ones(3), "ids": torch.arange(3) + 1}
    d = full_delta(base, run)
    assert sorted(d) == ["b", "w"]
    assert d["w"].dtype == torch.float64 and torch.all(d["w"] == 2.0)
    with pytest.raises(ValueError, match="shape"):
        full_delta({"w": torch.ones(2)}, {"w": torch.ones(3)})
    with pytest.raises(ValueError):
        full_delta({"a": torch.ones(2)}, {"b": torch.ones(2)})


def test_flatten_sorted():
    d = {"b": torch.tensor([3.0, 4.0]), "a": torch.tensor([[1.0], [2.0]])}
    flat = flatten_delta(d)
    assert flat.dtype == torch.float64
    assert flat.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert flatten_delta(d, keys=["b"]).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError):
        flatten_delta(d, keys=["c"])


def test_cosine_known_vectors():
    runs = {
        "x": {"p": torch.tensor([1.0, 0.0]), "q": torch.tensor([0.0])},
        "2x": {"p": torch.tensor([2.0, 0.0]), "q": torch.tensor([0.0])},
        "y": {"p": torch.tensor([0.0, 5.0]), "q": torch.tensor([0.0])},
        "-x": {"p": torch.tensor([-3.0, 0.0]), "q": torch.tensor([0.0])},
        "diag": {"p": torch.tensor([1.0, 1.0]), "q": torch.tensor([0.0])},
    }
    names, m = cosine_matrix(runs)
    assert names == ["x", "2x", "y", "-x", "diag"]
    assert m.shape == (5, 5)
    assert m[0, 1] == pytest.approx(1.0)
    assert m[0, 2] == pytest.approx(0.0)
    assert m[0, 3] == pytest.approx(-1.0)
    assert m[0, 4] == pytest.approx(1 / math.sqrt(2))
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    names2, m2 = cosine_matrix({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([-2.0, 1.0])})
    assert m2[0, 1] == pytest.approx(0.0)


def test_cosine_errors():
    with pytest.raises(ValueError, match="key mismatch"):
        cosine_matrix({"a": {"p": torch.ones(2)}, "b": {"q": torch.ones(2)}})
    with pytest.raises(ValueError, match="zero"):
        cosine_matrix({"a": {"p": torch.ones(2)}, "b": {"p": torch.zeros(2)}})
    with pytest.raises(ValueError):
        cosine_matrix({})
    with pytest.raises(ValueError):
        cosine_matrix({"a": torch.ones(2), "b": torch.ones(3)})
