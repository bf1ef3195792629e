"""Data parallelism on CPU with gloo: two ranks give the weights of one process with the same global batch."""
import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from selective_lm.config import TrainConfig
from selective_lm.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(data, out, batch_size):
    return TrainConfig(data=data, out=out, model="tiny", batch_size=batch_size, grad_accum=2, max_steps=3,
                       lr=3e-3, warmup_steps=1, log_every=1, eval_windows=4, device="cpu", progress=False)


def _worker(rank, world, port, data, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selective_lm import dist
    try:
        train(_cfg(data, out, batch_size=2), console=False)
    finally:
        dist.cleanup()


def test_two_ranks_equal_one_process(tiny_data, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path / "ddp")), nprocs=2, join=True)
    train(_cfg(str(tiny_data), str(tmp_path / "single"), batch_size=4), console=False)
    a = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert (tmp_path / "ddp" / "run.json").is_file()
