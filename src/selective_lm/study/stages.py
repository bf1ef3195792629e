"""The stages of `slm study`. Each returns whether it is already done and how to run it."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..checkpoint import checkpoint_dirs, checkpoint_step, is_finished
from ..config import LoraConfig, PrepareConfig, ScoreConfig
from ..files import atomic_dir, commit_dir, read_json, write_json
from .config import parse_variant
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


def _arm_checkpoints(study: Study) -> tuple[int, int]:
    """(steps between an arm's checkpoints, checkpoints of a finished arm); the last is the final step."""
    steps = _steps(study.cfg.cpt_tokens, study)
    every = max(1, math.ceil(steps / study.cfg.checkpoints))
    return every, math.ceil(steps / every)


def build_stages(study: Study) -> list[Stage]:
    """The stages of every seed's pipeline in order (corpora → … → arms), then one evaluation stage."""
    stages: list[Stage] = []
    for seed in study.cfg.seeds:
        stages += _pipeline(study, seed)
    jobs = _eval_jobs(study)
    done = sum(1 for _ in study.root.glob("seed-*/evals/*/*/metrics.json"))
    todo = max(len(jobs), 2 * len(study.cfg.seeds) + len(study.arms()) * _arm_checkpoints(study)[1] - done)
    stages.append(Stage("evaluate", f"{todo} checkpoints: test-split perplexity and per-token losses, few-shot "
                        "(own and external questions), validation at each run's end", 3.0 * todo + 2,
                        not jobs and _all_checkpoints_done(study), lambda: _evaluate(study)))
    return stages


def _pipeline(study: Study, seed: int) -> list[Stage]:
    c = study.cfg
    tag = f"s{seed} "
    from ..model import PRESETS

    stages: list[Stage] = []
    corpora_dir, ext = study.corpora(seed), study.external(seed)

    # 1. corpora (+ the external few-shot questions) ----------------------------------------
    def corpora() -> None:
        if c.corpora is None:
            from ..corpora.default import build_default_corpora

            build_default_corpora(corpora_dir, seed=c.corpora_seed + seed, scale=c.corpora_scale, progress=c.progress)
        if c.fewshot_external:
            from ..corpora.default import own_questions
            from ..corpora.external import write_external

            write_external(ext, c.fewshot_external, seed=c.corpora_seed + seed, exclude=own_questions(corpora_dir))

    from ..corpora.default import is_cached

    own_done = c.corpora is not None or is_cached(corpora_dir, c.corpora_seed + seed, float(c.corpora_scale))
    stages.append(Stage(tag + "corpora", f"embedded default corpora (seed {c.corpora_seed + seed}, scale {c.corpora_scale:g})"
                        + (f" and {c.fewshot_external} external questions" if c.fewshot_external else ""),
                        25 * c.corpora_scale, own_done and (not c.fewshot_external or ext.is_file()), corpora))

    # 2. tokenizer -------------------------------------------------------------------------
    tok_dir = study.seed_dir(seed) / "tokenizer"
    own_tok = c.tokenizer or (c.model if c.model not in PRESETS and (Path(c.model) / "tokenizer.json").is_file() else None)

    def tokenizer() -> None:
        tmp = atomic_dir(tok_dir)
        try:
            if own_tok:
                from ..tokenizer import copy_tokenizer

                copy_tokenizer(Path(own_tok), tmp)
            else:  # train documents only (a document's split field; see train_tokenizer_from_inputs)
                from ..data import train_tokenizer_from_inputs

                train_tokenizer_from_inputs([str(corpora_dir / f) for f in DATASETS.values()], c.vocab_size, tmp)
            commit_dir(tmp, tok_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    stages.append(Stage(tag + "tokenizer", "copy the model's tokenizer" if own_tok else f"byte-level BPE, vocab {c.vocab_size}",
                        10, (tok_dir / "tokenizer.json").is_file(), tokenizer))

    # 3. prepare ---------------------------------------------------------------------------
    def prepare() -> None:
        from ..data import prepare as do_prepare

        for name, file in DATASETS.items():
            if not (study.data(seed, name) / "manifest.json").is_file():
                # documents with a split field (the embedded corpora: split by problem) keep it;
                # others (a user's corpora) are split by a seeded hash of the document
                do_prepare(PrepareConfig(inputs=[str(corpora_dir / file)], out=str(study.data(seed, name)),
                                         tokenizer=str(tok_dir), seq_len=c.seq_len, val_fraction=0.05,
                                         test_fraction=0.05, seed=c.corpora_seed + seed, progress=c.progress,
                                         overwrite=True))

    stages.append(Stage(tag + "prepare", "tokenize prose, HQ math and web math into train/validation/test windows",
                        15 * c.corpora_scale, all((study.data(seed, n) / "manifest.json").is_file() for n in DATASETS),
                        prepare))

    # 4. base ------------------------------------------------------------------------------
    if c.model in PRESETS:
        base_cfg = study.train_cfg(data=str(study.data(seed, "prose")), out=str(study.run_dir(seed, "base")),
                                   model=c.model, max_tokens=c.base_tokens, lr=c.base_lr, seed=seed, data_seed=seed)
        stages.append(Stage(tag + "base", f"pretrain the {c.model} preset on prose, {c.base_tokens:,} tokens",
                            0.0, is_finished(base_cfg.out), lambda: _train(study, base_cfg),
                            tokens=c.base_tokens, kind="train"))

    # 5. reference -------------------------------------------------------------------------
    def reference() -> int:
        return _train_reference(study, seed, study.data(seed, "hq_math"), study.run_dir(seed, "reference"))

    stages.append(Stage(tag + "reference", f"continue the base on HQ math (train split) for {c.reference_epochs:g} epochs",
                        0.0, is_finished(study.run_dir(seed, "reference")), reference,
                        tokens=c.reference_epochs * 450_000 * c.corpora_scale, kind="train"))

    # 6. score -----------------------------------------------------------------------------
    stages.append(Stage(tag + "score", "reference losses and entropies of every web-math training token", 0.0,
                        _scored(study.scores(seed), entropy=any(parse_variant(v)[0] in ENTROPY_VARIANTS
                                                                for v in c.variants)),
                        lambda: _score_web(study, seed, study.reference_ckpt(seed), study.scores(seed), "reference"),
                        tokens=1_700_000 * c.corpora_scale, kind="forward"))
    if "self" in c.variants:
        stages += _self_reference(study, seed)

    # 7. arms ------------------------------------------------------------------------------
    ckpt_every = _arm_checkpoints(study)[0]
    lora = c.lora or LoraConfig(r=0)
    for arm in (a for a in study.arms() if a["seed"] == seed):
        kw = dict(data=arm["data"], out=arm["run_dir"], model=str(study.base_ckpt(seed)), max_tokens=c.cpt_tokens,
                  lr=c.cpt_lr, seed=seed, data_seed=seed, ckpt_every=ckpt_every, lora=lora)
        if arm["arm"] == "slm":
            kw.update(objective="slm", strategy=arm["strategy"], ratio=arm["ratio"], temperature=c.temperature,
                      temperature_unit=c.temperature_unit, ref_scores=str(study.scores(seed)))
        elif arm["arm"] == "content":
            kw.update(keep_labels=[0])
        elif arm["arm"] == "variant":
            kw.update(variant_train_kwargs(study, seed, arm["variant"]))
        tcfg = study.train_cfg(**kw)
        stages.append(Stage(f"arm {arm['name']}", f"{ARM_LABELS.get(arm['arm']) or _slm_label(arm)}, {c.cpt_tokens:,} "
                            f"tokens from the base", 0.0, is_finished(tcfg.out), (lambda t=tcfg: _train(study, t)),
                            tokens=c.cpt_tokens, kind="train"))
    return stages


ARM_LABELS = {"clm": "CLM (all tokens)", "hq": "CLM on HQ math only", "content": "CLM on content tokens only",
              "slm": "", "variant": ""}
ENTROPY_VARIANTS = {"entropy", "excess+entropy"}


def _slm_label(arm: dict) -> str:
    if arm["arm"] == "variant":
        return f"variant {arm['variant']} (top-k ratio {arm['ratio']:g})"
    return f"SLM {arm['strategy']} ratio {arm['ratio']:g}"


def _scored(scores: Path, entropy: bool) -> bool:
    """A finished scores directory (with the reference's entropies when a variant needs them)."""
    m = scores / "manifest.json"
    return m.is_file() and (not entropy or bool(read_json(m).get("entropy_file")))


def variant_train_kwargs(study: Study, seed: int, spec: str) -> dict:
    """The TrainConfig of a variant arm: top-k SLM at variant_ratio, changed in one way (config.VARIANTS;
    `name:value` sets the variant's value, config.VARIANT_SETTINGS)."""
    c = study.cfg
    variant, value = parse_variant(spec)
    kw = dict(objective="slm", strategy="topk", ratio=c.variant_ratio, ref_scores=str(study.scores(seed)))
    if variant in ("reference", "entropy", "excess+entropy"):
        kw.update(score=variant, entropy_weight=c.entropy_weight if value is None else value)
    elif variant == "self":
        kw.update(score="self", ref_scores=str(study.self_scores(seed)), holdout_fraction=c.self_fraction,
                  holdout="exclude", holdout_seed=seed)
    elif variant in ("soft", "dft"):
        kw.update(weighting=variant, **({"weight_temperature": value} if value is not None else {}))
        if variant == "dft":
            kw.update(ref_scores=None)
    elif variant == "sequence":
        kw.update(selection_scope="sequence")
    elif variant in ("eslm-loss", "eslm-entropy"):  # reference-free: the model's own loss or entropy
        kw.update(score="loss" if variant == "eslm-loss" else "model-entropy", ref_scores=None)
    elif variant == "warmup":
        kw.update(clm_warmup=c.variant_warmup if value is None else value)
    elif variant == "schedule":
        kw.update(ratio=1.0, ratio_schedule="linear", ratio_end=c.variant_ratio)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return kw


def _train_reference(study: Study, seed: int, data: Path, out: Path, share: float = 1.0, **holdout) -> int:
    """Continue the base for reference_epochs over ``share`` of the train windows of ``data`` (the HQ
    reference; the self-reference with its held-out share)."""
    from ..data import TokenDataset

    c = study.cfg
    n = round(share * TokenDataset(data).num_windows("train"))
    return _train(study, study.train_cfg(data=str(data), out=str(out), model=str(study.base_ckpt(seed)),
                                         max_tokens=int(c.reference_epochs * n * c.seq_len), lr=c.reference_lr,
                                         seed=seed, data_seed=seed, **holdout))


def _score_web(study: Study, seed: int, model: Path, out: Path, what: str, entropy: bool = True) -> int:
    """Score every web-math training token with ``model`` into ``out``; returns the tokens scored."""
    from ..scoring import score

    c = study.cfg
    m = score(ScoreConfig(data=str(study.data(seed, "web_math")), model=str(model), out=str(out), split="train",
                          entropy=entropy, device=c.device, progress=c.progress, overwrite=True))
    print(f"      mean {what} loss {m['mean_loss']:.4f} over {m['windows']} windows", flush=True)
    return m["windows"] * m["seq_len"]


def _self_reference(study: Study, seed: int) -> list[Stage]:
    """The self-reference (the base continued on a held-out share of the web-math train windows, the same
    epochs as the HQ reference) and its scores of the web-math train split."""
    c = study.cfg
    run = study.run_dir(seed, "self-reference")

    def train_self() -> int:
        return _train_reference(study, seed, study.data(seed, "web_math"), run, share=c.self_fraction,
                                holdout_fraction=c.self_fraction, holdout="only", holdout_seed=seed)

    def score_self() -> int:
        return _score_web(study, seed, study.self_reference_ckpt(seed), study.self_scores(seed), "self-reference",
                          entropy=False)

    return [Stage(f"s{seed} self-reference", f"continue the base on {c.self_fraction:.0%} of the web-math train windows "
                  f"(held out from the self arm) for {c.reference_epochs:g} epochs", 0.0, is_finished(run), train_self,
                  tokens=c.reference_epochs * c.self_fraction * 1_600_000 * c.corpora_scale, kind="train"),
            Stage(f"s{seed} self-score", "self-reference losses of every web-math training token", 0.0,
                  _scored(study.self_scores(seed), entropy=False), score_self,
                  tokens=1_700_000 * c.corpora_scale, kind="forward")]


def _all_checkpoints_done(study: Study) -> bool:
    """Every arm finished (so no checkpoint is still to come and be evaluated)."""
    return all(is_finished(a["run_dir"]) for a in study.arms())


def _eval_jobs(study: Study) -> list[tuple]:
    """(checkpoint dir, eval dir, step, tokens, seed, with validation, with few-shot) of every evaluation not
    yet written: validation at each run's last checkpoint; few-shot at ``fewshot_checkpoints`` evenly spaced
    ones (the last included), the base and the reference."""
    jobs = []
    for seed in study.cfg.seeds:
        jobs += [(study.base_ckpt(seed), study.eval_dir(seed, "base") / "step_000000", 0, 0, seed, True, True),
                 (study.reference_ckpt(seed), study.eval_dir(seed, "reference") / "step_final", -1, -1, seed, True, True)]
    n = _arm_checkpoints(study)[1]
    f = min(n, study.cfg.fewshot_checkpoints)
    shots = {round(k * n / f) for k in range(1, f + 1)}  # 1-based checkpoint numbers
    for arm in study.arms():
        dirs = checkpoint_dirs(arm["run_dir"])
        for i, d in enumerate(dirs, 1):
            meta = read_json(d / "slm_meta.json")
            last = d == dirs[-1] and is_finished(arm["run_dir"])
            jobs.append((d, Path(arm["eval_dir"]) / d.name, checkpoint_step(d), meta["tokens"], arm["seed"], last,
                         last or i in shots))
    return [j for j in jobs if not (j[1] / "metrics.json").is_file() or
            (j[5] and "validation" not in read_json(j[1] / "metrics.json"))]


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
    from ..evaluate import dataset_token_losses, dump_token_losses, loss_summary
    from ..fewshot import fewshot_accuracy, read_jsonl
    from ..model import load_model, resolve_device
    from ..runtime import progress

    c = study.cfg
    device = resolve_device(c.device)
    per_seed: dict[int, dict] = {}
    for seed in c.seeds:
        target, noisy = TokenDataset(study.data(seed, "hq_math")), TokenDataset(study.data(seed, "web_math"))
        corpora_dir = study.corpora(seed)
        sets = {"own": stratified(read_jsonl(corpora_dir / "fewshot_eval.jsonl"), c.fewshot_questions)}
        if c.fewshot_external and study.external(seed).is_file():
            sets["external"] = stratified(read_jsonl(study.external(seed)), c.fewshot_external)
        per_seed[seed] = {"target": target, "noisy": noisy, "tok": target.tokenizer(), "sets": sets,
                          "exemplars": read_jsonl(corpora_dir / "fewshot_exemplars.jsonl")}
    jobs = _eval_jobs(study)
    for ckpt, out, step, tokens, seed, with_val, with_shots in progress(jobs, desc="evaluate", unit="ckpt",
                                                                       enabled=c.progress):
        e = per_seed[seed]
        model = load_model(ckpt, device).eval()
        result = {"checkpoint": str(ckpt), "step": step, "tokens": tokens, "test": {}}
        evals = [("test", "target", e["target"], c.eval_windows_target), ("test", "noisy", e["noisy"], c.eval_windows_noisy)]
        if with_val:
            evals.append(("validation", "target", e["target"], c.eval_windows_target))
        for split, name, ds, n in evals:
            losses = dataset_token_losses(model, ds, split, n, 32, device)
            dump_token_losses(losses, out / f"{split}.{name}.losses.bin", {"dataset": str(ds.path), "split": split,
                                                                         "dataset_fingerprint": ds.fingerprint})
            result.setdefault(split, {})[name] = loss_summary(losses)
        if with_shots:
            with torch.inference_mode():
                result["fewshot"] = {k: fewshot_accuracy(model, e["tok"], qs, e["exemplars"], c.shots,
                                                         max_new_tokens=40, batch_size=100, device=device,
                                                         max_positions=c.seq_len, bos_id=e["target"].bos_id)
                                     for k, qs in e["sets"].items()}
        write_json(out / "metrics.json", result)
        del model
