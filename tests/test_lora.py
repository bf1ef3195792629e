"""LoRA on any architecture (all-linear by default) and LoRA runs that keep working when moved."""
import json
import shutil

import pytest
import torch

from selective_lm.cli import main
from selective_lm.config import LoraConfig, TrainConfig
from selective_lm.files import UserError
from selective_lm.model import apply_lora, check_lora_targets, lora_summary, model_token_losses, supports_chunked_head
from selective_lm.train import train

V, H, I, L, P = 320, 32, 64, 2, 64  # vocab (tiny_data's), hidden, intermediate, layers, positions


def tiny_config(arch: str):
    import transformers as T

    common = {"vocab_size": V, "num_hidden_layers": L, "num_attention_heads": 4, "bos_token_id": 0, "eos_token_id": 0,
              "pad_token_id": 0}
    return {
        "llama": lambda: T.LlamaConfig(hidden_size=H, intermediate_size=I, num_key_value_heads=2,
                                       max_position_embeddings=P, tie_word_embeddings=False, **common),
        "gpt2": lambda: T.GPT2Config(n_embd=H, n_layer=L, n_head=4, n_positions=P, vocab_size=V, bos_token_id=0,
                                     eos_token_id=0),
        "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=H, intermediate_size=I, max_position_embeddings=P, **common),
        "phi3": lambda: T.Phi3Config(hidden_size=H, intermediate_size=I, num_key_value_heads=2,
                                     max_position_embeddings=P, **common),
        "opt": lambda: T.OPTConfig(hidden_size=H, ffn_dim=I, word_embed_proj_dim=H, max_position_embeddings=P,
                                   **common),
        "qwen2": lambda: T.Qwen2Config(hidden_size=H, intermediate_size=I, num_key_value_heads=2,
                                       max_position_embeddings=P, tie_word_embeddings=False, **common),
    }[arch]()


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).float().eval()  # eval: GPT-2 and OPT use dropout


def brute_force_lora_params(model, r: int) -> int:
    """r·(in + out) for every linear layer (nn.Linear or GPT-2's transposed Conv1D) except the output head."""
    from transformers.pytorch_utils import Conv1D

    head, n = model.get_output_embeddings(), 0
    for m in model.modules():
        if m is not head and isinstance(m, torch.nn.Linear):
            n += r * (m.in_features + m.out_features)
        elif m is not head and isinstance(m, Conv1D):
            n += r * sum(m.weight.shape)
    return n


ARCHS = ["llama", "gpt2", "gpt_neox", "phi3", "opt", "qwen2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_all_linear_lora_fits_every_architecture(arch):
    model = tiny_model(arch)
    expected, total = brute_force_lora_params(model, 4), sum(p.numel() for p in model.parameters())
    lora = LoraConfig(r=4, alpha=8)
    assert lora.targets == ["all-linear"]
    check_lora_targets(model, lora)
    peft_model = apply_lora(model, lora)
    s = lora_summary(peft_model)
    assert s["trainable_parameters"] == expected and s["parameters"] == total + expected
    assert s["trainable_percent"] == pytest.approx(100 * expected / (total + expected))
    assert s["lora_targets"] and "lm_head" not in s["lora_targets"]
    # B starts at zero: give it values so the adapters change the outputs and get gradients through A too
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    inputs = torch.randint(1, V, (2, 12))
    targets = torch.roll(inputs, -1, 1)
    losses, grads = {}, {}
    for chunked in (True, False):
        peft_model.zero_grad()
        out = model_token_losses(peft_model, inputs, targets, chunked=chunked)
        out.mean().backward()
        losses[chunked] = out.detach()
        grads[chunked] = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert supports_chunked_head(peft_model) == (arch in ("llama", "phi3", "qwen2"))
    torch.testing.assert_close(losses[True], losses[False], atol=1e-5, rtol=1e-5)
    assert len(grads[True]) == len([n for n, _ in peft_model.named_parameters() if "lora_" in n])
    for n, g in grads[True].items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, n
        torch.testing.assert_close(g, grads[False][n], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch, targets, adapted", [("phi3", ["qkv_proj"], ["qkv_proj"]),
                                                    ("gpt2", ["c_attn", "attn.c_proj"], ["c_attn", "c_proj"]),
                                                    ("llama", ["q_proj", "lm_head"], ["lm_head", "q_proj"])])
def test_named_targets(arch, targets, adapted):
    model = tiny_model(arch)
    lora = LoraConfig(r=2, targets=targets)
    check_lora_targets(model, lora)
    peft_model = apply_lora(model, lora)
    assert lora_summary(peft_model)["lora_targets"] == adapted
    inputs = torch.randint(1, V, (2, 8))
    # an adapted output head is no plain nn.Linear any more: the loss takes the plain path, same numbers
    torch.testing.assert_close(model_token_losses(peft_model, inputs, inputs),
                               model_token_losses(peft_model, inputs, inputs, chunked=False))


@pytest.mark.parametrize("arch, names", [("gpt2", "c_attn, c_fc, c_proj"),
                                         ("gpt_neox", "dense, dense_4h_to_h, dense_h_to_4h, query_key_value")])
def test_targets_that_match_nothing_name_the_models_modules(arch, names):
    with pytest.raises(UserError, match=f"q_proj, v_proj match no linear module of this model \\(it has {names}\\)"):
        check_lora_targets(tiny_model(arch), LoraConfig(r=4, targets=["q_proj", "v_proj"]))


@pytest.fixture(scope="module")
def gpt2_dir(tiny_data, tmp_path_factory):
    """A random-init GPT-2 checkpoint with tiny_data's vocabulary and tokenizer."""
    from selective_lm.data import TokenDataset

    d = tmp_path_factory.mktemp("gpt2") / "model"
    tiny_model("gpt2").save_pretrained(d)
    for f in TokenDataset(tiny_data).tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    return d


def test_lora_run_on_gpt2_trains_reports_and_refuses_bad_targets(tiny_data, gpt2_dir, tmp_path, capsys):
    args = ["train", "--data", str(tiny_data), "--model", str(gpt2_dir), "--batch-size", "4", "--max-steps", "3",
            "--eval-windows", "4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "bad"), "lora.r=4", "lora.targets=[q_proj]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "it has c_attn, c_fc, c_proj" in err and not (tmp_path / "bad").exists()
    assert main(args + ["--out", str(tmp_path / "run"), "lora.r=4"]) == 0
    expected = brute_force_lora_params(tiny_model("gpt2"), 4)
    out = capsys.readouterr().out
    assert f"LoRA r=4 on c_attn, c_fc, c_proj: {expected:,} trainable parameters of " in out
    s = json.loads((tmp_path / "run" / "run.json").read_text())
    assert s["lora_targets"] == ["c_attn", "c_fc", "c_proj"] and s["trainable_parameters"] == expected
    assert s["trainable_percent"] == pytest.approx(100 * expected / s["parameters"])
    # the base lies outside the run: the adapter names it absolutely
    cfg = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(gpt2_dir.resolve())


def _eval_loss(tiny_data, model, tmp_path, name):
    out = tmp_path / f"{name}.json"
    code = main(["eval", "--model", str(model), "--data", str(tiny_data), "--max-windows", "8", "--out", str(out),
                 "--no-progress"])
    return code, (json.loads(out.read_text())["datasets"][str(tiny_data)]["loss"] if code == 0 else None)


def test_moved_lora_run_still_evaluates(tiny_data, tmp_path, capsys):
    run = tmp_path / "a" / "run"
    train(TrainConfig(data=str(tiny_data), out=str(run), lora=LoraConfig(r=4, alpha=8), batch_size=4, max_steps=4,
                      ckpt_every=2, lr=1e-2, eval_windows=4, progress=False), console=False)
    for ckpt in (run / "final", run / "checkpoints" / "step_000002"):
        base = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == ("../base" if ckpt.name == "final" else "../../base")
    code, before = _eval_loss(tiny_data, run / "final", tmp_path, "before")
    assert code == 0
    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    code, after = _eval_loss(tiny_data, moved / "final", tmp_path, "after")
    assert code == 0 and after == before
    # without its base the adapter is refused in one line naming the missing path
    shutil.rmtree(moved / "base")
    capsys.readouterr()
    code, _ = _eval_loss(tiny_data, moved / "final", tmp_path, "gone")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and f"{moved / 'base'} is not a checkpoint directory" in err


def test_missing_absolute_base_is_one_line(tiny_data, gpt2_dir, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(gpt2_dir, base)
    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny_data), out=str(run), model=str(base), lora=LoraConfig(r=2), batch_size=4,
                      max_steps=1, eval_windows=4, progress=False), console=False)
    base.rename(tmp_path / "elsewhere")
    code, _ = _eval_loss(tiny_data, run / "final", tmp_path, "x")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and f"the base model of LoRA checkpoint {run / 'final'} is missing: " \
        f"{base} is not a checkpoint directory" in err


def test_lora_keys_mean_nothing_without_lora(tmp_path):
    # a run saved with other (e.g. older default) LoRA keys but r = 0 resumes under the current defaults
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), lora=LoraConfig(r=0, alpha=8, targets=["q_proj"]))
    cfg.validate()
    assert cfg.lora == LoraConfig()
    on = TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), lora=LoraConfig(r=4, targets=["q_proj"]))
    on.validate()
    assert on.lora.targets == ["q_proj"]
