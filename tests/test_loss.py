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
    import selective_lm.loss as loss_mod
    from selective_lm.model import model_token_losses

    model = tiny_llama()
    ids = torch.randint(0, 64, (3, 21), generator=torch.Generator().manual_seed(5))
    targets = ids[:, 1:].clone()
    targets[1, 3] = -100
    monkeypatch.setattr(loss_mod, "_chunk_positions", lambda *a: 7)  # chunks that do not divide B·T
    with torch.no_grad():
        chunked = model_token_losses(model, ids[:, :-1], targets)
    full = model_token_losses(model, ids[:, :-1], targets, chunked=False).detach()
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    assert chunked[1, 3] == 0


def _arch(name, vocab=97):
    """Tiny random-init causal LMs of three architectures whose logits are lm_head(hidden)."""
    import transformers

    cls = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[name]
    cfg = getattr(transformers, f"{cls}Config")(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(1)
    return getattr(transformers, f"{cls}ForCausalLM")(cfg)


@pytest.mark.parametrize("arch, sparse", [("llama", True), ("llama", False), ("qwen2", True), ("mistral", True)])
def test_chunked_training_loss_equals_plain_path(arch, sparse, monkeypatch):
    """Values and gradients of every parameter under SLM's masked sum, chunks that do not divide B·T."""
    import selective_lm.loss as loss_mod
    from selective_lm.model import model_token_losses, supports_chunked_head

    model = _arch(arch)
    assert supports_chunked_head(model)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (3, 19), generator=g)
    targets = torch.randint(0, 97, (3, 19), generator=g)
    targets[2, :4] = -100
    weights = (torch.rand(3, 19, generator=g) < 0.4).float() / 7.0  # selected tokens / denominator
    monkeypatch.setattr(loss_mod, "_chunk_positions", lambda *a: 5)
    grads = {}
    for chunked in (True, False):
        model.zero_grad()
        tl = model_token_losses(model, ids, targets, chunked=chunked, sparse_backward=sparse)
        (tl * weights).sum().backward()
        grads[chunked] = (tl.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads[True][0], grads[False][0], atol=1e-6, rtol=1e-6)
    for n in grads[False][1]:
        torch.testing.assert_close(grads[True][1][n], grads[False][1][n], atol=1e-6, rtol=1e-5, msg=n)


def test_head_backward_touches_only_selected_positions(monkeypatch):
    """The output head's backward recomputes logits for the positions with a non-zero gradient only."""
    import torch.nn.functional as F

    from selective_lm.loss import head_token_losses

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 50, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 300, (2, 50), generator=g)
    mask = torch.zeros(2, 50)
    mask[0, :7] = 1.0
    mask[1, 30:33] = 1.0
    losses = head_token_losses(hidden, weight, targets, chunk=4, sparse_backward=True)
    rows, real = [], F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, *a: (rows.append(x.shape[0]) if w.shape[0] == 300 else None,
                                                      real(x, w, *a))[1])
    (losses * mask).sum().backward()
    assert sum(rows) == 10  # 10 selected positions, not 100
    plain = token_losses((hidden.detach() @ weight.detach().T).requires_grad_(), targets)
    torch.testing.assert_close(losses.detach(), plain.detach(), atol=1e-5, rtol=1e-5)
    assert hidden.grad[0, 7:].abs().sum() == 0 and hidden.grad[0, :7].abs().sum() > 0


def test_chunked_loss_matches_the_plain_path_under_bf16_autocast():
    from selective_lm.model import model_token_losses

    model = _arch("llama")
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model_token_losses(model, ids[:, :-1], ids[:, 1:])
        plain = model_token_losses(model, ids[:, :-1], ids[:, 1:], chunked=False)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, plain, atol=2e-2, rtol=2e-2)  # bf16 matmuls, fp32 softmax in both
    grads = []
    for loss in (low, plain):
        model.zero_grad()
        loss.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999
