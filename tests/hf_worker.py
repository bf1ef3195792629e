"""One process of the multi-device HF Trainer test: `python -m torch.distributed.run ... hf_worker.py DATA SCORED OUT
PER_DEVICE_BATCH ACCUM SCOPE` trains 2 SLM steps and rank 0 saves the weights to OUT."""
import os
import sys

import torch
from transformers import TrainingArguments

from selective_lm.columns import SLMCollator, load_scored
from selective_lm.data import TokenDataset
from selective_lm.hf import SLMArguments, SLMTrainer
from selective_lm.model import build_model


def main(data, scored, out, batch, accum, scope):
    ds = TokenDataset(data)
    model = build_model("tiny", ds.vocab_size, ds.seq_len, seed=3, eos_id=ds.eos_id)
    args = TrainingArguments(output_dir=out + ".hf", per_device_train_batch_size=int(batch),
                             gradient_accumulation_steps=int(accum), max_steps=2, learning_rate=0.5,
                             lr_scheduler_type="constant", max_grad_norm=0.0, train_sampling_strategy="sequential",
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             ddp_backend="gloo", seed=0)
    tr = SLMTrainer(model=model, args=args, train_dataset=load_scored(scored), data_collator=SLMCollator(),
                    optimizers=(torch.optim.SGD(model.parameters(), lr=0.5), None),
                    slm_args=SLMArguments(ratio=0.3, selection_scope=scope))
    tr.train()
    if tr.is_world_process_zero():
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    # skip interpreter teardown: freeing the Trainer's DDP reducer destroys the gloo group, whose destructor joins
    # a worker thread that waits for the GIL held by the joining thread (seen: a hang; and an abort, "terminate
    # called without an active exception"); the weights are saved, so nothing is lost
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
