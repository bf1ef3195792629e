"""The stages of `slm study`. Each returns whether it is already done and how to run it."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..checkpoint import checkpoint_dirs, checkpoint_step, is_finished
from ..config import LoraConfig, PrepareConfig, ScoreConfig
from ..files import atomic_dir, commit_dir, read_json, write_json
from .layout import Study
from .plan import Stage

DATASETS = {"prose": "prose.jsonl", "hq_math": "hq_math.jsonl", "web_math": "web_math.jsonl"}
# what each dataset's validation split is called in the stage lines
VAL_SETS = {"prose": "prose", "hq_math": "target (HQ math)", "web_math": "noisy (web math)"}


def _train(study: Study, tcfg) -> int:
    """Train one stage's run; returns its tokens (the study's ETA measures its speed with them)."""
    from ..train import train

    out = Path(tcfg.out)
    tcfg.resume = (out / "config.yaml").is_file() and not is_finished(out)
    summary = train(tcfg, console=False)
    data = Path(tcfg.data).name
    print(f"      {out.name}: {summary['steps']} steps, {summary['tokens']:,} tokens, "
          f"val loss on {VAL_SETS.get(data, data)} {summary['final_val_loss']:.4f} "
          f"(ppl {summary['final_val_ppl']:.2f})", flush=True)
    return summary["tokens"]


def _steps(tokens: int, study: Study) -> int:
    return max(1, math.ceil(tokens / (study.cfg.batch_size * study.cfg.seq_len)))


def build_stages(study: Study) -> list[Stage]:
    c = study.cfg
    p = study.p
    stages: list[Stage] = []
    from ..model import PRESETS

    # 1. corpora ---------------------------------------------------------------------------
    def corpora() -> None:
        from .corpora import build_default_corpora

        build_default_corpora(study.corpora, seed=c.corpora_seed, scale=c.corpora_scale, progress=c.progress)

    from .corpora import is_cached

    corpora_done = c.corpora is not None or is_cached(study.corpora, c.corpora_seed, float(c.corpora_scale))
    stages.append(Stage("corpora", f"embedded default corpora (scale {c.corpora_scale:g})", 25 * c.corpora_scale,
                        corpora_done, corpora))

    # 2. tokenizer -------------------------------------------------------------------------
    tok_dir = p("tokenizer")
    own_tok = c.tokenizer or (c.model if c.model not in PRESETS and (Path(c.model) / "tokenizer.json").is_file() else None)

    def tokenizer() -> None:
        tmp = atomic_dir(tok_dir)
        try:
            if own_tok:
                from ..tokenizer import copy_tokenizer

                copy_tokenizer(Path(own_tok), tmp)
            else:
                from ..data import train_tokenizer_from_inputs

                train_tokenizer_from_inputs([str(study.corpora / f) for f in DATASETS.values()], c.vocab_size, tmp)
            commit_dir(tmp, tok_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    stages.append(Stage("tokenizer", "copy the model's tokenizer" if own_tok else f"byte-level BPE, vocab {c.vocab_size}",
                        10, (tok_dir / "tokenizer.json").is_file(), tokenizer))

    # 3. prepare ---------------------------------------------------------------------------
    def prepare() -> None:
        from ..data import prepare as do_prepare

        for name, file in DATASETS.items():
            if not (p("data", name) / "manifest.json").is_file():
                do_prepare(PrepareConfig(inputs=[str(study.corpora / file)], out=str(p("data", name)),
                                         tokenizer=str(tok_dir), seq_len=c.seq_len, val_fraction=0.05,
                                         seed=c.corpora_seed, progress=c.progress, overwrite=True))

    stages.append(Stage("prepare", "tokenize prose, HQ math and web math into fixed windows", 15 * c.corpora_scale,
                        all((p("data", n) / "manifest.json").is_file() for n in DATASETS), prepare))

    # 4. base ------------------------------------------------------------------------------
    if c.model in PRESETS:
        base_cfg = study.train_cfg(data=str(p("data", "prose")), out=str(p("runs", "base")), model=c.model,
                                   max_tokens=c.base_tokens, lr=c.base_lr, seed=0, data_seed=0)
        stages.append(Stage("base", f"pretrain the {c.model} preset on prose, {c.base_tokens:,} tokens",
                            0.0, is_finished(base_cfg.out), lambda: _train(study, base_cfg),
                            tokens=c.base_tokens, kind="train"))

    # 5. reference -------------------------------------------------------------------------
    def reference() -> int:
        from ..data import TokenDataset

        n = TokenDataset(p("data", "hq_math")).num_windows("train")
        tokens = int(c.reference_epochs * n * c.seq_len)
        return _train(study, study.train_cfg(data=str(p("data", "hq_math")), out=str(p("runs", "reference")),
                                      model=str(study.base_ckpt), max_tokens=tokens, lr=c.reference_lr, seed=0, data_seed=0))

    ref_tokens = c.reference_epochs * 450_000 * c.corpora_scale
    stages.append(Stage("reference", f"continue the base on HQ math for {c.reference_epochs:g} epochs",
                        0.0, is_finished(p("runs", "reference")), reference, tokens=ref_tokens, kind="train"))

    # 6. score -----------------------------------------------------------------------------
    def score() -> int:
        from ..scoring import score as do_score

        m = do_score(ScoreConfig(data=str(p("data", "web_math")), model=str(p("runs", "reference", "final")),
                                 out=str(p("scores", "web_math")), split="train", device=c.device, progress=c.progress,
                                 overwrite=True))
        print(f"      mean reference loss {m['mean_loss']:.4f} over {m['windows']} windows", flush=True)
        return m["windows"] * m["seq_len"]

    stages.append(Stage("score", "reference losses of every web-math training token", 0.0,
                        (p("scores", "web_math") / "manifest.json").is_file(), score,
                        tokens=1_700_000 * c.corpora_scale, kind="forward"))

    # 7. arms ------------------------------------------------------------------------------
    steps = _steps(c.cpt_tokens, study)
    ckpt_every = max(1, math.ceil(steps / c.checkpoints))  # the last checkpoint is the final step
    lora = c.lora or LoraConfig(r=0)
    for arm in study.arms():
        kw = dict(data=str(p("data", "web_math")), out=arm["run_dir"], model=str(study.base_ckpt), max_tokens=c.cpt_tokens,
                  lr=c.cpt_lr, seed=arm["seed"], data_seed=arm["seed"], ckpt_every=ckpt_every, lora=lora)
        if arm["arm"] == "slm":
            kw.update(objective="slm", strategy=arm["strategy"], ratio=arm["ratio"], temperature=c.temperature,
                      ref_scores=str(p("scores", "web_math")))
        tcfg = study.train_cfg(**kw)
        label = "CLM (all tokens)" if arm["arm"] == "clm" else f"SLM {arm['strategy']} ratio {arm['ratio']:g}"
        stages.append(Stage(f"arm {arm['name']}", f"{label}, {c.cpt_tokens:,} tokens from the base, seed {arm['seed']}",
                            0.0, is_finished(tcfg.out), (lambda t=tcfg: _train(study, t)),
                            tokens=c.cpt_tokens, kind="train"))

    # 8. evaluate --------------------------------------------------------------------------
    per_arm = steps // ckpt_every + (steps % ckpt_every != 0)
    expected = 2 + per_arm * len(study.arms())
    done = sum(1 for _ in p("evals").glob("*/*/metrics.json")) if p("evals").is_dir() else 0
    todo = max(0, expected - done)
    stages.append(Stage("evaluate", f"{todo} checkpoints: target/noisy perplexity, per-token losses, few-shot",
                        3.0 * todo + 2, todo == 0 and not _eval_jobs(study), lambda: _evaluate(study)))
    return stages


def _eval_jobs(study: Study) -> list[tuple[Path, Path, int, int]]:
    """(checkpoint dir, eval dir, step, tokens) of every evaluation not yet written."""
    p = study.p
    jobs = [(study.base_ckpt, p("evals", "base", "step_000000"), 0, 0),
            (p("runs", "reference", "final"), p("evals", "reference", "step_final"), -1, -1)]
    for arm in study.arms():
        for d in checkpoint_dirs(arm["run_dir"]):
            meta = read_json(d / "slm_meta.json")
            jobs.append((d, Path(arm["eval_dir"]) / d.name, checkpoint_step(d), meta["tokens"]))
    return [j for j in jobs if not (j[1] / "metrics.json").is_file()]


def stratified(rows: list[dict], n: int) -> list[dict]:
    """The first ``n`` rows taken round-robin over their "family" (file order within a family)."""
    by_family: dict[str, list[dict]] = {}
    for r in rows:
        by_family.setdefault(r.get("family", ""), []).append(r)
    out: list[dict] = []
    queues = list(by_family.values())
    i = 0
    while len(out) < n and any(i < len(q) for q in queues):
        out += [q[i] for q in queues if i < len(q)][: n - len(out)]
        i += 1
    return out


def _evaluate(study: Study) -> None:
    import torch

    from ..data import TokenDataset
    from ..evaluate import dataset_token_losses, dump_token_losses, fewshot_accuracy, loss_summary, read_jsonl
    from ..model import load_model, resolve_device
    from ..runtime import progress

    c = study.cfg
    device = resolve_device(c.device)
    target, noisy = TokenDataset(study.p("data", "hq_math")), TokenDataset(study.p("data", "web_math"))
    tok = target.tokenizer()
    questions = stratified(read_jsonl(study.corpora / "fewshot_eval.jsonl"), c.fewshot_questions)
    exemplars = read_jsonl(study.corpora / "fewshot_exemplars.jsonl")
    jobs = _eval_jobs(study)
    for ckpt, out, step, tokens in progress(jobs, desc="evaluate", unit="ckpt", enabled=c.progress):
        model = load_model(ckpt, device).eval()
        result = {"checkpoint": str(ckpt), "step": step, "tokens": tokens}
        for name, ds, n in (("target", target, c.eval_windows_target), ("noisy", noisy, c.eval_windows_noisy)):
            losses = dataset_token_losses(model, ds, "validation", n, 32, device)
            dump_token_losses(losses, out / f"{name}.losses.bin", {"dataset": str(ds.path), "split": "validation",
                                                                  "dataset_fingerprint": ds.fingerprint})
            result[name] = loss_summary(losses)
        with torch.inference_mode():
            result["fewshot"] = fewshot_accuracy(model, tok, questions, exemplars, c.shots, max_new_tokens=40,
                                                 batch_size=100, device=device, max_positions=c.seq_len,
                                                 bos_id=target.bos_id)
        write_json(out / "metrics.json", result)
        del model
