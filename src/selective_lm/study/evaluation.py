"""The study's evaluation stage: every checkpoint on the test split, each run's end on validation.

Per checkpoint (``evals/RUN/step_N/metrics.json`` plus per-token loss dumps): the test target (HQ math) and
noisy (web math) loss, and multiple choice on both question sets (own generator, external) — accuracy as
lm-evaluation-harness scores it (``acc``, ``acc_norm``) and the gold answer's NLL. At each run's last
checkpoint also the validation target loss (what every choice is made on) and greedy exact match.
Sweep arms and sweep references are evaluated at their end only.
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import checkpoint_dirs, checkpoint_step, is_finished
from ..files import read_json, write_json
from .layout import Study
from .plan import Stage


def evaluation_stage(study: Study) -> Stage:
    c = study.cfg
    jobs = eval_jobs(study)
    done = sum(1 for _ in study.root.glob("seed-*/evals/*/*/metrics.json"))
    planned = len(c.seeds) * (1 + len(c.hq_ratios())) + sum(study.arm_checkpoints(a["sweep"])[1]
                                                              for a in study.arms())
    todo = max(len(jobs), planned - done)
    return Stage("evaluate", f"{todo} checkpoints: test-split losses and per-token dumps, multiple choice and answer "
                 "NLL (own and external questions), validation and exact match at each run's end", 1.5 * todo + 2,
                 not jobs and all(is_finished(a["run_dir"]) for a in study.arms()), lambda: evaluate_study(study))


def eval_jobs(study: Study) -> list[tuple]:
    """(checkpoint dir, eval dir, step, tokens, seed, last) of every evaluation not yet written: the base, each
    reference, every checkpoint of a main arm, the end of a sweep arm and of a sweep reference (``last``: the
    validation loss and exact match, at the end of the base, the main reference and every main arm)."""
    c, jobs = study.cfg, []
    for seed in c.seeds:
        jobs.append((study.base_ckpt(seed), study.eval_dir(seed, "base") / "step_000000", 0, 0, seed, True))
        jobs += [(study.reference_ckpt(seed, r), study.reference_eval_dir(seed, r) / "step_final", -1, -1, seed,
                  r == float(c.hq_ratio)) for r in c.hq_ratios()]
    for arm in study.arms():
        dirs = checkpoint_dirs(arm["run_dir"])
        for d in dirs[-1:] if arm["sweep"] else dirs:
            last = d == dirs[-1] and is_finished(arm["run_dir"]) and not arm["sweep"]
            jobs.append((d, Path(arm["eval_dir"]) / d.name, checkpoint_step(d), read_json(d / "slm_meta.json")["tokens"],
                         arm["seed"], last))
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


def question_sets(study: Study, seed: int) -> dict:
    """A seed's few-shot material: exemplars, and per question set (own, external) the exact-match questions
    and the multiple-choice items (distractors drawn from the whole set, seeded by the seed)."""
    from ..fewshot import mc_items, read_jsonl

    c = study.cfg
    corpora_dir = study.corpora(seed)
    files = {"own": corpora_dir / "fewshot_eval.jsonl"}
    if c.fewshot_external and study.external(seed).is_file():
        files["external"] = study.external(seed)
    out: dict = {"exemplars": read_jsonl(corpora_dir / "fewshot_exemplars.jsonl"), "exact": {}, "mc": {}}
    for k, f in files.items():
        rows = read_jsonl(f)
        n_exact = c.fewshot_questions if k == "own" else c.fewshot_external
        if n_exact:
            out["exact"][k] = stratified(rows, n_exact)
        if c.mc_questions:
            out["mc"][k] = mc_items(stratified(rows, c.mc_questions), pool=rows, seed=c.corpora_seed + seed)
    return out


def evaluate_study(study: Study) -> None:
    import torch

    from ..data import TokenDataset
    from ..evaluate import dataset_token_losses, dump_token_losses, loss_summary
    from ..fewshot import fewshot_accuracy, mc_accuracy
    from ..model import load_model, resolve_device
    from ..runtime import progress

    c = study.cfg
    device = resolve_device(c.device)
    per_seed: dict[int, dict] = {}
    for seed in c.seeds:
        target, noisy = TokenDataset(study.data(seed, "hq_math")), TokenDataset(study.data(seed, "web_math"))
        per_seed[seed] = {"target": target, "noisy": noisy, "tok": target.tokenizer(), **question_sets(study, seed)}
    jobs = eval_jobs(study)
    for ckpt, out, step, tokens, seed, last in progress(jobs, desc="evaluate", unit="ckpt", enabled=c.progress):
        e = per_seed[seed]
        model = load_model(ckpt, device).eval()
        result: dict = {"checkpoint": str(ckpt), "step": step, "tokens": tokens, "test": {}}
        evals = [("test", "target", e["target"], c.eval_windows_target), ("test", "noisy", e["noisy"], c.eval_windows_noisy)]
        if last:
            evals.append(("validation", "target", e["target"], c.eval_windows_target))
        for split, name, ds, n in evals:
            losses = dataset_token_losses(model, ds, split, n, 32, device)
            dump_token_losses(losses, out / f"{split}.{name}.losses.bin", {"dataset": str(ds.path), "split": split,
                                                                         "dataset_fingerprint": ds.fingerprint})
            result.setdefault(split, {})[name] = loss_summary(losses)
        with torch.inference_mode():
            kw = dict(device=device, max_positions=c.seq_len, bos_id=e["target"].bos_id)
            result["mc"] = {k: mc_accuracy(model, e["tok"], items, e["exemplars"], c.shots, batch_size=64, **kw)
                            for k, items in e["mc"].items()}
            if last:
                result["fewshot"] = {k: fewshot_accuracy(model, e["tok"], qs, e["exemplars"], c.shots,
                                                         max_new_tokens=40, batch_size=100, **kw)
                                     for k, qs in e["exact"].items()}
        write_json(out / "metrics.json", result)
        del model
