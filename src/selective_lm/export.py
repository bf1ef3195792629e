"""`slm export`: a run's final weights as a plain Hugging Face directory, LoRA merged into its base on request.

The output holds ``config.json``, the weights (safetensors), the generation config when there is one and the
tokenizer the run trained with; ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``
load it without selective-lm or PEFT. ``slm_export.json`` records where it came from. A full checkpoint's files
are copied as they are; a LoRA adapter is loaded onto its base, merged (``merge_and_unload``) and saved.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import ExportConfig
from .files import DirLock, UserError, atomic_dir, check_output_dir, commit_dir, write_json
from .model import WEIGHT_FILES, adapter_base, damaged_files, is_adapter, is_checkpoint, load_model, model_fingerprint
from .tokenizer import copy_tokenizer

MARKER = "slm_export.json"
_MODEL_FILES = ("config.json", "generation_config.json", *WEIGHT_FILES)


def source_checkpoint(run: str | Path) -> Path:
    """The checkpoint a run directory's export comes from: ``final/``, or the directory itself when it is one."""
    p = Path(run)
    if is_checkpoint(p / "final"):
        return p / "final"
    if is_checkpoint(p):
        return p
    raise UserError(f"{p} is neither a finished run (no final/ checkpoint) nor a checkpoint directory: pass --run RUN "
                    "(after `slm train` finished) or RUN/checkpoints/step_N")


def export(cfg: ExportConfig) -> dict:
    """Write ``cfg.out``; returns what slm_export.json records."""
    src = source_checkpoint(cfg.run)
    adapter = is_adapter(src)
    if adapter and not cfg.merge:
        raise UserError(f"{src} is a LoRA adapter: pass --merge to export its base with the adapter merged in (a plain "
                        f"model); the adapter itself, for PEFT, is {src}")
    if bad := damaged_files(src):
        raise UserError(f"checkpoint {src} is damaged ({', '.join(bad[:3])} differ from its index.json): export "
                        "another checkpoint")
    out = Path(cfg.out)
    with DirLock(out, "export directory", inside=False):
        check_output_dir(out, cfg.overwrite, lambda o: (o / MARKER).is_file(), "an `slm export` output", "an export")
        tmp = atomic_dir(out)
        try:
            if adapter:
                model = load_model(src)  # the base with the adapter merged (merge_and_unload)
                model.save_pretrained(tmp, safe_serialization=True)
            else:
                files = [f for f in _MODEL_FILES if (src / f).is_file()]
                files += sorted(f.name for f in src.glob("model-*.safetensors"))  # sharded weights
                for name in files:
                    shutil.copyfile(src / name, tmp / name)
            copy_tokenizer(src, tmp)
            record = {"source": str(src.resolve()), "merged_lora": adapter,
                      "base": str(adapter_base(src)) if adapter else None, "model_fingerprint": model_fingerprint(src)}
            write_json(tmp / MARKER, record)
            commit_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return record
