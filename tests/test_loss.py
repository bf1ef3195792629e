import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from selective_lm import selective_loss, token_losses


def tiny_llama(vocab=64):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_token_losses_match_hf_loss():
    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 5:9] = -100
    out = model(input_ids=ids, labels=labels)
    # HF shifts inside; we align explicitly: logits[:, t] predicts labels[:, t + 1].
    tl = token_losses(out.logits[:, :-1], labels[:, 1:])
    valid = labels[:, 1:] != -100
    assert torch.allclose(tl[valid].mean(), out.loss, atol=1e-6)
    assert (tl[~valid] == 0).all()


def test_ratio_one_is_clm_exactly():
    g = torch.Generator().manual_seed(0)
    tl = torch.rand(4, 16, generator=g, requires_grad=True)
    ref = torch.rand(4, 16, generator=g)
    valid = torch.rand(4, 16, generator=g) > 0.25
    for strategy in ("topk", "random", "stochastic"):
        loss, sel = selective_loss(tl, ref, 1.0, strategy, valid=valid, generator=g)
        clm = (tl * valid).sum() / valid.sum()
        assert torch.equal(sel, valid)
        assert torch.equal(loss, clm)


def test_selective_loss_is_mean_of_selected_and_grad_only_there():
    g = torch.Generator().manual_seed(1)
    tl = torch.rand(2, 10, generator=g).requires_grad_()
    ref = torch.rand(2, 10, generator=g)
    loss, sel = selective_loss(tl, ref, 0.3, "topk")
    excess = (tl - ref).detach().flatten()
    top = torch.topk(excess, 6).indices
    assert set(torch.nonzero(sel.flatten()).flatten().tolist()) == set(top.tolist())
    assert torch.allclose(loss, tl.flatten()[top].mean())
    loss.backward()
    assert (tl.grad[~sel] == 0).all() and (tl.grad[sel] > 0).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        selective_loss(torch.zeros(2, 3), torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError):
        token_losses(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_chunked_scoring_path_equals_full_logits(monkeypatch):
    import selective_lm.model as model_mod
    from selective_lm.model import model_token_losses

    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 21), generator=torch.Generator().manual_seed(5))
    targets = ids[:, 1:].clone()
    targets[1, 3] = -100
    monkeypatch.setattr(model_mod, "HEAD_CHUNK", 7)  # chunks that do not divide B·T
    with torch.no_grad():
        chunked = model_token_losses(model, ids[:, :-1], targets)
    full = model_token_losses(model, ids[:, :-1], targets).detach()  # grad enabled: the plain path
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    assert chunked[1, 3] == 0
