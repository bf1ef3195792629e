"""Evaluation: perplexity (sum of nats / number of tokens), per-token loss dumps, few-shot exact match
(and lm-evaluation-harness tasks, see :mod:`selective_lm.harness`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from . import dist
from .config import EvalConfig
from .data import TokenDataset
from .fewshot import check_rows, fewshot_accuracy, read_jsonl
from .files import UserError, atomic_memmap, check_output_dir, write_json
from .model import autocast_ctx, check_compatible, load_model, model_token_losses, resolve_device
from .tokenizer import adds_bos, load_tokenizer
from .runtime import progress as progress_bar


@torch.inference_mode()
def dataset_token_losses(model, ds: TokenDataset, split: str = "validation", max_windows: int = 0,
                         batch_size: int = 32, device: torch.device | str = "cpu", precision: str = "auto",
                         progress: bool = False) -> np.ndarray:
    """Per-token losses [windows, seq_len] (float32) of the first ``max_windows`` windows of a split (0 at the
    context-only targets, which :func:`loss_summary` leaves out given ``ds.target_mask``).

    Under torchrun the batches are dealt round-robin to the ranks (every rank runs the same number of
    forwards, as FSDP needs) and each round's rows are all-gathered to the host: every rank returns
    the array a single process computes, batch for batch, and no device holds more than one round.
    """
    device = torch.device(device)
    n = ds.num_windows(split)
    n = min(n, max_windows) if max_windows else n
    out = np.zeros((n, ds.seq_len), dtype=np.float32)
    was_training = model.training
    model.eval()

    def losses_of(start: int) -> torch.Tensor:
        inputs, targets = ds.batch(split, np.arange(start, min(start + batch_size, n)))
        return model_token_losses(model, inputs.to(device), targets.to(device))

    with autocast_ctx(device, precision):
        batches = dist.gathered_batches(list(range(0, n, batch_size)), batch_size, n, losses_of)
        for starts, rows in progress_bar(batches, desc=f"eval {Path(ds.path).name} {split}", enabled=progress,
                                         leave=False):
            for start, r in zip(starts, rows):
                out[start:start + len(r)] = r.numpy()
    model.train(was_training)
    result = out
    if not np.isfinite(result).all():
        raise UserError(f"the model gives non-finite losses on {ds.path} ({split}): it has diverged; "
                        "evaluate an earlier checkpoint", agreed=True)
    return result


def loss_summary(losses: np.ndarray, counted: np.ndarray | None = None) -> dict:
    """Mean loss and perplexity from per-token losses (sum of nats / tokens); ``counted`` (bool, the shape of
    ``losses``): the tokens that count, e.g. :meth:`TokenDataset.target_mask` (context-only targets do not)."""
    arr = np.asarray(losses, dtype=np.float64)
    if counted is not None:
        arr = arr[np.asarray(counted, dtype=bool)]
    total = float(arr.sum())
    tokens = int(arr.size)
    loss = total / max(1, tokens)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens}


def dump_token_losses(losses: np.ndarray, path: str | Path, meta: dict | None = None) -> Path:
    """Write per-token losses as a float16 memmap (aligned with the targets) plus a JSON sidecar."""
    path = Path(path)
    with atomic_memmap(path, np.float16, losses.shape) as mm:  # its space reserved first: no SIGBUS on a full disk
        mm[:] = losses
    write_json(path.with_suffix(".json"), {"dtype": "float16", "shape": list(losses.shape), **(meta or {})})
    return path


def only_dumps(directory: Path) -> bool:
    """Whether a directory holds loss dumps (``NAME.SPLIT.losses.bin`` and ``.json``) and nothing else but
    their temporaries."""
    return all(p.is_file() and ".losses." in p.name and (p.name.endswith((".losses.bin", ".losses.json"))
                                                          or p.name.startswith(".") and p.name.endswith(".tmp"))
               for p in directory.iterdir())


def load_token_losses(path: str | Path) -> np.ndarray:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(path, dtype=np.float16, mode="r", shape=tuple(meta["shape"]))


def load_losses(path) -> np.ndarray:
    """A per-token loss dump as a flat float64 array (UserError when missing)."""
    if not (p := Path(path)).is_file() or not p.with_suffix(".json").is_file():
        raise UserError(f"per-token loss dump not found: {p} (or its .json sidecar): re-run the study's eval stage")
    return np.asarray(load_token_losses(p), dtype=np.float64).reshape(-1)


def evaluate(cfg: EvalConfig) -> dict:
    """`slm eval`: perplexity per dataset, optional dumps and few-shot accuracy.

    Under torchrun every rank loads the model and evaluates a share of the windows and questions;
    sums of nats and token counts are reduced across ranks, and rank 0 writes the files.
    """
    device = dist.local_device(resolve_device(cfg.device))
    dist.init(device)

    def open_all():  # every input is checked before anything is computed or written
        if cfg.lm_eval:
            from .harness import require_lm_eval

            require_lm_eval()
            if dist.world_size() > 1:
                raise UserError("--lm-eval runs in one process: start slm eval without torchrun (lm-eval spreads "
                                "over GPUs itself with `accelerate launch -m lm_eval`)", agreed=True)
        if cfg.dump:  # loss dumps go beside other loss dumps only, never into a run, a dataset or scores
            check_output_dir(Path(cfg.dump), True, only_dumps, "a directory of loss dumps", "loss dumps", flag="--dump")
        datasets = [TokenDataset(d) for d in cfg.data]
        for ds in datasets:
            check_compatible(cfg.model, ds)
        questions, exemplars, tok = [], [], None
        tok_dir = cfg.model if (Path(cfg.model) / "tokenizer.json").is_file() else \
            (datasets[0].tokenizer_dir if datasets else None)
        if cfg.fewshot or cfg.lm_eval:
            if cfg.fewshot:
                questions = check_rows(read_jsonl(cfg.fewshot), cfg.fewshot, ("question", "answer"))
                questions = questions[:cfg.fewshot_limit] if cfg.fewshot_limit else questions
            if cfg.exemplars:
                exemplars = check_rows(read_jsonl(cfg.exemplars), cfg.exemplars, ("question", "solution", "answer"))
            if tok_dir is None:
                raise UserError(f"no tokenizer in {cfg.model}: pass --data DIR so its tokenizer is used")
            tok = load_tokenizer(tok_dir)  # its tokenizer.json as saved, not a class AutoTokenizer picks by model type
        return datasets, questions, exemplars, tok, tok_dir

    datasets, questions, exemplars, tok, tok_dir = dist.agree(open_all)
    model = load_model(cfg.model, device) if datasets or cfg.fewshot else None
    results: dict = {"model": str(Path(cfg.model).resolve()), "split": cfg.split, "datasets": {}}
    for ds in datasets:
        losses = dataset_token_losses(model, ds, cfg.split, cfg.max_windows, cfg.batch_size, device,
                                      cfg.precision, cfg.progress)
        summary = loss_summary(losses, ds.target_mask(cfg.split, slice(len(losses))))
        if cfg.dump and dist.is_main():
            name = Path(ds.path).name
            summary["dump"] = str(dump_token_losses(losses, Path(cfg.dump) / f"{name}.{cfg.split}.losses.bin",
                                                    {"dataset": str(ds.path), "split": cfg.split,
                                                     "dataset_fingerprint": ds.fingerprint}))
        results["datasets"][str(ds.path)] = summary
    if cfg.fewshot:
        # prompts start like the training documents: with the datasets' BOS, else the tokenizer's own
        bos_id = datasets[0].bos_id if datasets else (tok.bos_token_id if adds_bos(tok) else None)
        results["fewshot"] = fewshot_accuracy(model, tok, questions, exemplars, cfg.shots, cfg.max_new_tokens,
                                              cfg.batch_size, device, progress=cfg.progress, bos_id=bos_id)
    if cfg.lm_eval:
        from .harness import result_summary, run_lm_eval

        del model  # lm-eval loads its own copy
        bos = datasets[0].bos_id is not None if datasets else adds_bos(tok)
        results["lm_eval"] = result_summary(run_lm_eval(cfg, questions, exemplars, tok_dir, device, add_bos=bos))
    if cfg.out and dist.is_main():
        write_json(cfg.out, results)
    return results
