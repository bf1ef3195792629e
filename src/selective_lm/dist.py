"""Distributed helpers. torchrun's environment alone decides whether a run is distributed.

All parallelism lives here, outside the model: :func:`parallelize` applies compile and DDP or FSDP2
(``fully_shard`` per decoder block, then the root); :func:`shard_frozen` shards an online reference
model the same way; :func:`full_state_dict` / :func:`load_full_state_dict` turn sharded weights and
optimizer state into ordinary, world-size-independent checkpoints and back. The training loop only
calls the collectives below and :func:`is_main` before writing files.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist

from .files import UserError


def launched() -> bool:
    """True under torchrun (or any launcher that sets the env:// variables)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def world_size() -> int:
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> None:
    """Initialise the process group when launched by torchrun (even with one process)."""
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        minutes = float(os.environ.get("SLM_DIST_TIMEOUT_MIN", "30"))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=minutes))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op when not distributed); stays on device."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0, in rank order (no-op alone)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl":
        out = torch.empty((t.shape[0] * dist.get_world_size(), *t.shape[1:]), dtype=t.dtype, device=t.device)
        dist.all_gather_into_tensor(out, t.contiguous())
        return out
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def agree(fn, *args, main_only: bool = False, **kwargs):
    """Run ``fn`` on every rank (or on rank 0 only, broadcasting its result); if it raises
    :class:`UserError` on any rank, raise it on all of them.

    Used for the checks before training starts, so a problem seen by one rank (e.g. reference scores
    that do not match its copy of the dataset) stops every rank with the same one-line message
    instead of leaving the others waiting in a collective.
    """
    multi = dist.is_initialized() and dist.get_world_size() > 1
    if not multi:
        return fn(*args, **kwargs)
    err, result, own = None, None, None
    if not (main_only and not is_main()):
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # any failure, so the other ranks never wait for this one in a collective
            own = e
            err = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (err, result if main_only and is_main() else None))
    bad = [(r, e) for r, (e, _) in enumerate(gathered) if e is not None]
    if bad:
        r, e = bad[0]
        if own is not None and not isinstance(own, UserError):
            raise own  # the rank that failed shows its traceback
        raise UserError(e if r == rank() or r == 0 else f"{e} (on rank {r})", agreed=True)
    return gathered[0][1] if main_only else result


def enter_on_main(stack: contextlib.ExitStack, *contexts) -> None:
    """Enter context managers (made by the given callables) on rank 0 only, e.g. an output's lock; if
    one refuses, every rank stops with its message."""
    def enter() -> None:
        if is_main():
            for make in contexts:
                stack.enter_context(make())

    agree(enter)


@contextlib.contextmanager
def grad_sync(model, enabled: bool):
    """Gradient reduction on (the accumulation step's last micro-batch) or off, under DDP or FSDP2."""
    if enabled or not (dist.is_initialized() and dist.get_world_size() > 1):
        yield
    elif hasattr(model, "no_sync"):  # DDP: one context for forward + backward
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def gathered_batches(starts: list[int], batch_size: int, n: int, compute):
    """Share batches among the ranks and give every rank all results, in order, one round at a time.

    Round j: rank r computes ``compute(starts[j·world + r])`` (a rank without a batch repeats the
    round's first one, so FSDP ranks run the same forwards), the [rows, ...] results are padded to
    ``batch_size`` rows and all-gathered. Yields (the round's starts, their results on the CPU,
    trimmed to ``min(batch_size, n - start)`` rows).
    """
    world, me = world_size(), rank()
    for j in range(0, len(starts), world):
        round_starts = starts[j:j + world]
        out = compute(round_starts[me] if me < len(round_starts) else round_starts[0]).float()
        if out.shape[0] < batch_size:
            out = torch.cat([out, out.new_zeros((batch_size - out.shape[0], *out.shape[1:]))])
        rows = all_gather_cat(out.unsqueeze(0)).cpu()  # [world, batch_size, ...]
        yield round_starts, [rows[k, :min(batch_size, n - s)] for k, s in enumerate(round_starts)]


# --------------------------------------------------------------------------- parallelism
def decoder_blocks(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks of a HF causal LM (through PEFT wrappers), to shard one by one."""
    names = set(getattr(unwrap_hf(model), "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        for m in model.modules():
            if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and all(type(x) is type(m[0]) for x in m):
                blocks = list(m)
                break
    return blocks


def unwrap_hf(model):
    """The Hugging Face PreTrainedModel inside DDP, torch.compile and PEFT wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        else:
            return model


def check_parallel(parallel: str) -> None:
    """Refuse ``parallel=fsdp`` where it cannot run, before anything is written."""
    if parallel != "fsdp":
        return
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise UserError(f"parallel=fsdp needs FSDP2 (torch >= 2.6), this is torch {torch.__version__}: "
                        "upgrade torch or use parallel=ddp") from None
    if not dist.is_initialized():
        raise UserError("parallel=fsdp needs a distributed launch: run it with "
                        "`torchrun --nproc_per_node=N -m selective_lm train ...` or use parallel=ddp")


def _fully_shard(model, device: torch.device, precision: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    check_parallel("fsdp")
    blocks = decoder_blocks(model)
    if not blocks:
        raise UserError(f"parallel=fsdp found no decoder blocks to shard in {type(unwrap_hf(model)).__name__}: "
                        "use parallel=ddp for this model")
    # The chunked loss reads the root's output as hidden states, out of place; FSDP2 warns about any view.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    kw = {}
    if device.type == "cuda" and precision != "fp32":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, **kw)
    # the root keeps its parameters (embeddings, final norm, output head) gathered after forward: the
    # chunked loss reads the head weight outside the forward (see model.model_token_losses)
    fully_shard(model, reshard_after_forward=False, **kw)


def parallelize(model, device: torch.device, parallel: str = "ddp", compile: bool = False,
                precision: str = "auto", activation_checkpointing: bool = False):
    """Apply activation checkpointing, FSDP2 or DDP, and compile; returns the module to run forward through.

    Under ``ddp`` the model passed in stays the one to save, evaluate and count; under ``fsdp`` it is
    sharded in place (its parameters become DTensors) and is also the module to run.
    """
    if activation_checkpointing:
        hf, kwargs = unwrap_hf(model), {"use_reentrant": False}
        if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if parallel == "fsdp":
        _fully_shard(model, device, precision)
        return torch.compile(model) if compile else model
    if compile:
        model = torch.compile(model)
    if dist.is_initialized() and dist.get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def shard_frozen(model, device: torch.device, parallel: str, precision: str = "auto"):
    """An online reference model: no gradients; sharded like the trained model under fsdp."""
    for p in model.parameters():
        p.requires_grad_(False)
    if parallel == "fsdp":
        _fully_shard(model, device, precision)
    return model.eval()


def is_sharded(model) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state_dict(model, optimizer=None) -> tuple[dict, dict | None]:
    """(model, optimizer) state dicts with full, unsharded tensors on CPU, keyed by parameter name.

    A collective under FSDP: every rank calls it, rank 0 receives the tensors. The optimizer state is
    keyed by parameter name, so a checkpoint resumes under any world size and either parallelism.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    sharded = is_sharded(model)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    sd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return sd, osd


def load_full_state_dict(model, sd: dict | None, optimizer=None, osd: dict | None = None,
                         from_rank0: bool = False) -> None:
    """Load full (unsharded, name-keyed) state dicts into a possibly sharded model and its optimizer;
    with ``from_rank0`` only rank 0 passes tensors (the others pass empty dicts) and it broadcasts them."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=from_rank0)
    if sd is not None:
        set_model_state_dict(model, sd, options=opts)
    if optimizer is not None and osd is not None:
        set_optimizer_state_dict(model, optimizer, osd, options=opts)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def peer_failure(e: BaseException) -> bool:
    """True for the error a collective raises when another rank died or timed out."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(k in text for k in ("gloo", "nccl", "connection", "peer", "timed out"))


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)
