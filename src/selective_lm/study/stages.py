"""The stages of `slm study`. Each returns whether it is already done and how to run it.

Per seed: corpora → tokenizer → prepare → base (these two only in the base seed's pipeline when share_base) →
one reference per HQ : budget ratio (the reference on hq_ratio first, then the sweep's) → their scores →
the arms. Then one evaluation stage (:mod:`.evaluation`) over every checkpoint of every seed.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..checkpoint import is_finished
from ..config import LoraConfig, PrepareConfig, ScoreConfig
from ..files import UserError, atomic_dir, commit_dir, read_json
from .config import parse_variant, ratio_label
from .layout import Study
from .plan import Stage

DATASETS = {"prose": "prose.jsonl", "hq_math": "hq_math.jsonl", "web_math": "web_math.jsonl"}
# what each dataset's validation split is called in the stage lines
VAL_SETS = {"prose": "prose", "hq_math": "target (HQ math)", "web_math": "noisy (web math)"}
MARGIN = 1.25  # generated corpora hold this many times the train tokens the study needs (tokenizers differ)


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


def build_stages(study: Study) -> list[Stage]:
    """The stages of every seed's pipeline in order (corpora → … → arms), then one evaluation stage."""
    from .evaluation import evaluation_stage

    stages: list[Stage] = []
    for seed in study.cfg.seeds:
        stages += _pipeline(study, seed)
    return stages + [evaluation_stage(study)]


def corpus_scales(study: Study) -> dict:
    """The generated corpora's scales: as configured, or just large enough (:data:`MARGIN` × what the study
    trains on) for the largest HQ : budget ratio (HQ math) and for an arm's budget without a repeated window
    (web math; the self variant's held-out share on top)."""
    from ..corpora.default import scale_for

    c = study.cfg
    web = c.cpt_tokens / (1 - c.self_fraction) if "self" in c.variants else c.cpt_tokens
    if c.corpus == "champ":  # the HQ corpus is what CHAMP holds; the LLM solutions are sized to the budget
        from ..corpora.champ import TRAIN_TOKENS_PER_SCALE

        return {"hq_scale": 1.0, "web_scale": c.web_scale or round(MARGIN * web / TRAIN_TOKENS_PER_SCALE, 4)}
    return {"hq_scale": c.hq_scale or scale_for("hq_math", MARGIN * max(c.hq_ratios()) * c.cpt_tokens),
            "web_scale": c.web_scale or scale_for("web_math", MARGIN * web)}


def check_sizes(study: Study, seed: int) -> dict:
    """Refuse prepared corpora too small for the study (one line naming the scale to raise); returns the
    train windows of each."""
    from ..data import TokenDataset

    c = study.cfg
    hq, web = (TokenDataset(study.data(seed, n)).num_windows("train") for n in ("hq_math", "web_math"))
    need_hq = study.hq_windows(hq, max(c.hq_ratios()))
    need_web = study.steps(c.cpt_tokens) * c.batch_size
    if "self" in c.variants:
        need_web = math.ceil(need_web / (1 - c.self_fraction))
    scales = corpus_scales(study)
    if hq <= need_hq and c.corpus == "champ":
        raise UserError(f"seed {seed}: CHAMP's human solutions hold {hq} train windows but the HQ : budget ratio "
                        f"{ratio_label(max(c.hq_ratios()))} needs more than {need_hq}: lower cpt_tokens or the "
                        "largest of hq_ratio and hq_sweep")
    if hq <= need_hq:
        raise UserError(f"seed {seed}: the HQ math corpus has {hq} train windows but the HQ : budget ratio "
                        f"{ratio_label(max(c.hq_ratios()))} needs more than {need_hq}: raise hq_scale (now "
                        f"{scales['hq_scale']:.3g}) to at least {scales['hq_scale'] * need_hq / hq * 1.1:.3g}")
    if web < need_web:
        raise UserError(f"seed {seed}: the web-math corpus has {web} train windows but an arm reads {need_web} "
                        f"without repeating one: raise web_scale (now {scales['web_scale']:.3g}) to at least "
                        f"{scales['web_scale'] * need_web / web * 1.1:.3g}")
    return {"hq_math": hq, "web_math": web}


def _pipeline(study: Study, seed: int) -> list[Stage]:
    c = study.cfg
    tag = f"s{seed} "
    from ..model import PRESETS

    stages: list[Stage] = []
    corpora_dir, ext = study.corpora(seed), study.external(seed)
    own_base = study.base_seed(seed) == seed

    # 1. corpora (+ the external few-shot questions) ----------------------------------------
    scales = corpus_scales(study)
    params = dict(hq_scale=scales["hq_scale"], web_scale=scales["web_scale"],
                  prose_scale=c.prose_scale if own_base else 0.0, split_seed=c.corpora_seed,
                  eval_chars=max(c.eval_windows_target, c.eval_windows_noisy) * (c.seq_len + 1) * 3)

    def corpora() -> None:
        if c.corpora is None:
            from ..corpora.default import build_default_corpora

            if c.corpus == "champ":
                from ..corpora.champ import build_champ_corpora

                build_champ_corpora(corpora_dir, seed=c.corpora_seed + seed, prose_scale=params["prose_scale"],
                                    web_scale=scales["web_scale"], progress=c.progress)
            else:
                build_default_corpora(corpora_dir, seed=c.corpora_seed + seed, progress=c.progress, **params)
        if c.fewshot_external:
            from ..corpora.default import own_questions
            from ..corpora.external import write_external

            write_external(ext, max(c.fewshot_external, c.mc_questions), seed=c.corpora_seed + seed,
                           exclude=own_questions(corpora_dir))

    if c.corpora is not None:
        own_done = True
    elif c.corpus == "champ":
        from ..corpora.champ import is_cached as champ_cached

        own_done = champ_cached(corpora_dir, c.corpora_seed + seed, params["prose_scale"], scales["web_scale"])
    else:
        from ..corpora.default import is_cached

        own_done = is_cached(corpora_dir, c.corpora_seed + seed, **params)
    what = "CHAMP corpora" if c.corpus == "champ" else "embedded default corpora"
    stages.append(Stage(tag + "corpora", f"{what} (seed {c.corpora_seed + seed}, HQ scale {scales['hq_scale']:.3g}, "
                        f"web scale {scales['web_scale']:.3g}" + (f", prose scale {c.prose_scale:g}" if own_base else "")
                        + ")" + (" and external questions" if c.fewshot_external else ""),
                        5 + 25 * (scales["web_scale"] + scales["hq_scale"] + (c.prose_scale if own_base else 0)),
                        own_done and (not c.fewshot_external or ext.is_file()), corpora))

    # 2. tokenizer (the base seed's pipeline) ------------------------------------------------
    tok_dir = study.tokenizer(seed)
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

    if own_base:
        stages.append(Stage(tag + "tokenizer", "copy the model's tokenizer" if own_tok else
                            f"byte-level BPE, vocab {c.vocab_size}" + (" (shared by every seed)" if c.share_base
                                                                        else ""),
                            10, (tok_dir / "tokenizer.json").is_file(), tokenizer))

    # 3. prepare ---------------------------------------------------------------------------
    names = [n for n in DATASETS if n != "prose" or (own_base and c.model in PRESETS)]

    def prepare() -> None:
        from ..data import prepare as do_prepare

        m = corpora_dir / "manifest.json"  # the corpora name their provenance labels (default, CHAMP)
        labels = read_json(m).get("provenance_labels") if m.is_file() else None
        label_names = [labels[str(i)] for i in range(len(labels))] if labels else []
        for name in names:
            if not (study.data(seed, name) / "manifest.json").is_file():
                # documents with a split field (the embedded corpora: split by problem) keep it;
                # others (a user's corpora) are split by a seeded hash of the document
                do_prepare(PrepareConfig(inputs=[str(corpora_dir / DATASETS[name])], out=str(study.data(seed, name)),
                                         tokenizer=str(tok_dir), seq_len=c.seq_len, val_fraction=0.05,
                                         test_fraction=0.05, seed=c.corpora_seed + seed, progress=c.progress,
                                         overwrite=True, label_names=label_names))
        check_sizes(study, seed)

    stages.append(Stage(tag + "prepare", f"tokenize {', '.join(names)} into train/validation/test windows",
                        10 + 10 * (scales["web_scale"] + scales["hq_scale"]),
                        all((study.data(seed, n) / "manifest.json").is_file() for n in names), prepare))

    # 4. base ------------------------------------------------------------------------------
    if c.model in PRESETS and own_base:
        base_cfg = study.train_cfg(data=str(study.data(seed, "prose")), out=str(study.run_dir(seed, "base")),
                                   model=c.model, max_tokens=c.base_tokens, lr=c.base_lr, seed=seed, data_seed=seed)
        stages.append(Stage(tag + "base", f"pretrain the {c.model} preset on prose, {c.base_tokens:,} tokens"
                            + (" (shared by every seed)" if c.share_base and len(c.seeds) > 1 else ""),
                            0.0, is_finished(base_cfg.out), lambda: _train(study, base_cfg),
                            tokens=c.base_tokens, kind="train"))

    # 5. references and 6. their scores, one per HQ : budget ratio -------------------------
    need_entropy = any(parse_variant(v)[0] in ENTROPY_VARIANTS for v in c.variants)
    hq_tokens = lambda r: study.hq_windows(0, r) * c.seq_len  # noqa: E731
    for r in c.hq_ratios():
        label = ratio_label(r)
        sweep = r != float(c.hq_ratio)
        stages.append(Stage(
            tag + ("reference" + (f" {label}" if sweep else "")),
            f"continue the base on {hq_tokens(r):,} HQ math train tokens (HQ : budget {label}) for "
            f"{c.reference_epochs:g} epochs", 0.0, is_finished(study.reference_dir(seed, r)),
            (lambda r=r: _train_reference(study, seed, r)), tokens=c.reference_epochs * hq_tokens(r), kind="train"))
        stages.append(Stage(
            tag + ("score" + (f" {label}" if sweep else "")),
            f"reference {label} losses{' and entropies' if not sweep else ''} of every web-math training token", 0.0,
            _scored(study.scores(seed, r), entropy=need_entropy and not sweep),
            (lambda r=r, sweep=sweep: _score_web(study, seed, study.reference_ckpt(seed, r), study.scores(seed, r),
                                                 f"reference {ratio_label(r)}", entropy=not sweep)),
            tokens=MARGIN * c.cpt_tokens, kind="forward"))
    if "self" in c.variants:
        stages += _self_reference(study, seed)
    if c.corpus == "champ":  # document scores of the annotated LLM solutions: does the filter rank errors lower?
        stages.append(Stage(tag + "filter", "document scores (mean reference loss) of every web-math train row", 5.0,
                            (study.filter_dir(seed) / "manifest.json").is_file(), lambda: _filter(study, seed)))

    # 7. arms ------------------------------------------------------------------------------
    for arm in (a for a in study.arms() if a["seed"] == seed):
        stages.append(Stage(f"arm {arm['name']}", f"{ARM_LABELS.get(arm['arm']) or _slm_label(arm)}"
                            + (f" (HQ : budget {arm['hq_label']})" if arm["arm"] == "hq" or arm["sweep"] else "")
                            + f", {c.cpt_tokens:,} tokens from the base", 0.0, is_finished(arm["run_dir"]),
                            (lambda a=arm: _train(study, arm_config(study, a))), tokens=c.cpt_tokens, kind="train"))
    return stages


ARM_LABELS = {"clm": "CLM (all tokens)", "hq": "CLM on HQ math only", "content": "CLM on content tokens only",
              "slm": "", "variant": ""}
ENTROPY_VARIANTS = {"entropy", "excess+entropy"}


def _slm_label(arm: dict) -> str:
    if arm["arm"] == "variant":
        return f"variant {arm['variant']} (top-k ratio {arm['ratio']:g})"
    return f"SLM {arm['strategy']} ratio {arm['ratio']:g}"


def _hq_holdout(study: Study, seed: int, hq_ratio: float) -> dict:
    """The HQ train windows of one HQ : budget ratio, as a holdout share (seeded by the seed, so the subsets
    of the ratios are nested: every smaller one lies inside the larger ones)."""
    from ..data import TokenDataset

    n = TokenDataset(study.data(seed, "hq_math")).num_windows("train")
    return dict(holdout_fraction=study.hq_windows(n, hq_ratio) / n, holdout="only", holdout_seed=seed)


def arm_config(study: Study, arm: dict):
    """The TrainConfig of an arm (built when it runs: the HQ share needs the prepared HQ data)."""
    c, seed = study.cfg, arm["seed"]
    lora = c.lora or LoraConfig(r=0)
    kw = dict(data=arm["data"], out=arm["run_dir"], model=str(study.base_ckpt(seed)), max_tokens=c.cpt_tokens,
              lr=c.cpt_lr, seed=seed, data_seed=seed, ckpt_every=study.arm_checkpoints(arm["sweep"])[0], lora=lora)
    if arm["arm"] == "slm":
        kw.update(objective="slm", strategy=arm["strategy"], ratio=arm["ratio"], temperature=c.temperature,
                  temperature_unit=c.temperature_unit, ref_scores=str(study.scores(seed, arm["hq_ratio"])))
    elif arm["arm"] == "hq":
        kw.update(_hq_holdout(study, seed, arm["hq_ratio"]))
    elif arm["arm"] == "content":
        kw.update(keep_labels=[0])
    elif arm["arm"] == "variant":
        kw.update(variant_train_kwargs(study, seed, arm["variant"]))
    return study.train_cfg(**kw)


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


def _train_reference(study: Study, seed: int, hq_ratio: float) -> int:
    """Continue the base for reference_epochs over the HQ train windows of one HQ : budget ratio."""
    c = study.cfg
    hold = _hq_holdout(study, seed, hq_ratio)
    n = study.hq_windows(0, hq_ratio)
    return _train(study, study.train_cfg(data=str(study.data(seed, "hq_math")), out=str(study.reference_dir(seed, hq_ratio)),
                                         model=str(study.base_ckpt(seed)), max_tokens=int(c.reference_epochs * n * c.seq_len),
                                         lr=c.reference_lr, batch_size=c.reference_batch_size, seed=seed, data_seed=seed,
                                         **hold))


def _filter(study: Study, seed: int) -> None:
    """`slm filter` over the web-math train split with the main reference's scores, every document kept with its
    score (the study compares the scores of solutions with and without an annotated error)."""
    from ..config import FilterConfig
    from ..filter import filter_documents

    filter_documents(FilterConfig(data=str(study.data(seed, "web_math")), ref_scores=str(study.scores(seed)),
                                  inputs=[str(study.corpora(seed) / "web_math.jsonl")], out=str(study.filter_dir(seed)),
                                  keep_fraction=1.0, doc_score="ref_loss", unscored="keep", overwrite=True,
                                  progress=study.cfg.progress))


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
        from ..data import TokenDataset

        n = round(c.self_fraction * TokenDataset(study.data(seed, "web_math")).num_windows("train"))
        return _train(study, study.train_cfg(data=str(study.data(seed, "web_math")), out=str(run),
                                             model=str(study.base_ckpt(seed)),
                                             max_tokens=int(c.reference_epochs * n * c.seq_len), lr=c.reference_lr,
                                             batch_size=c.reference_batch_size, seed=seed, data_seed=seed,
                                             holdout_fraction=c.self_fraction,
                                             holdout="only", holdout_seed=seed))

    def score_self() -> int:
        return _score_web(study, seed, study.self_reference_ckpt(seed), study.self_scores(seed), "self-reference",
                          entropy=False)

    return [Stage(f"s{seed} self-reference", f"continue the base on {c.self_fraction:.0%} of the web-math train windows "
                  f"(held out from the self arm) for {c.reference_epochs:g} epochs", 0.0, is_finished(run), train_self,
                  tokens=c.reference_epochs * c.self_fraction * MARGIN * c.cpt_tokens, kind="train"),
            Stage(f"s{seed} self-score", "self-reference losses of every web-math training token", 0.0,
                  _scored(study.self_scores(seed), entropy=False), score_self,
                  tokens=MARGIN * c.cpt_tokens, kind="forward")]
