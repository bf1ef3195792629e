"""Real text nobody here wrote: CHAMP (Mao et al. 2024), competition math from the ``champ-dataset`` package (MIT).

270 problems with human-written step-by-step solutions, and for each, solutions written by LLMs (GPT-3.5,
GPT-4, GPT-4 Turbo, PaLM 2) under several prompts; 540 of those carry a human annotation of the *first wrong
step* (or "no mistake"). The study reads it as Rho-1's setting:

* ``hq_math.jsonl`` — the HQ corpus: each problem with its human solution and answer;
* ``web_math.jsonl`` — the noisy corpus: LLM solutions, each after its problem, with provenance ``spans``:
  the text from an annotated first wrong step to the end of the solution is label 1
  (``after_first_wrong_step``), an unannotated LLM solution is label 2 (``unverified``: its correctness is
  unknown), and the rest (the problem, and a solution up to its first wrong step or annotated as correct) is
  label 0 (``content``). The annotated solutions come first, then unannotated ones (seeded order) up to
  ``web_scale`` × :data:`WEB_CHARS` characters; ``error`` in each row says what its annotation says;
* ``fewshot_eval.jsonl`` (test problems: question and answer, the family is the CHAMP category),
  ``fewshot_exemplars.jsonl`` (short train problems with solutions) and ``prose.jsonl`` (the default
  generator's prose, for the base).

Problems are split into train/validation/test (:data:`SHARES`) by a keyed hash of their identifier *before*
anything else, so a problem, its human solution and every LLM solution of it share one split; the manifest's
``leakage`` counts validation/test problem statements found in any training row (0 by construction).
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from ..files import UserError, atomic_write_text, read_json, sha256_file, write_json

FORMAT_VERSION = 1
SHARES = {"train": 0.7, "validation": 0.15, "test": 0.15}
LABELS = {0: "content", 1: "after_first_wrong_step", 2: "unverified"}
WEB_CHARS = 1_500_000  # web_scale 1 = this many characters of LLM solutions (the package holds ~37M)
N_EXEMPLARS = 8
FILES = ("hq_math.jsonl", "web_math.jsonl", "prose.jsonl", "fewshot_eval.jsonl", "fewshot_exemplars.jsonl")
# train tokens per unit of web_scale with the study's 2048-token BPE (what the study sizes the corpus by)
TRAIN_TOKENS_PER_SCALE = 360_000


def load_champ() -> dict:
    """The package's problems (``champ_dataset/dataset_files/v0.json``), read as JSON."""
    try:
        from importlib import resources

        import champ_dataset  # noqa: F401  (installed with selective-lm)
    except ImportError:
        raise UserError("the champ-dataset package is not installed: pip install champ-dataset") from None
    path = resources.files("champ_dataset") / "dataset_files" / "v0.json"
    return json.loads(path.read_text(encoding="utf-8"))["problems"]


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("champ-dataset")
    except PackageNotFoundError:
        return "unknown"


def _clean(text: str) -> str:
    return text.replace("@@", "")


def split_of(identifier: str, seed: int) -> str:
    """A problem's split: a keyed hash of its identifier (the same identifier and seed, the same split)."""
    h = hashlib.blake2b(identifier.encode(), key=f"selective-lm/champ/{seed}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2.0 ** 64
    return "train" if u < SHARES["train"] else ("validation" if u < SHARES["train"] + SHARES["validation"] else "test")


def human_solution(p: dict) -> str:
    return " ".join(_clean(s["_raw_text"]) for s in p["solution"]["steps"])


def _head(p: dict) -> str:
    return f"Problem: {_clean(p['_raw_text'])}\nSolution: "


def llm_rows(problems: dict, seed: int, max_chars: float) -> list[dict]:
    """The noisy corpus's rows: every annotated LLM solution, then unannotated ones in a seeded order, until
    ``max_chars`` characters; each with its split, provenance spans and what its annotation says."""
    rows, seen = [], set()
    for pid, p in problems.items():
        split = split_of(pid, seed)
        for key, a in sorted((p.get("fws_annotations") or {}).items()):
            head, sol = _head(p), a["text"]
            if not sol or (pid, sol) in seen:
                continue
            seen.add((pid, sol))
            spans = [] if a.get("start_idx") is None else [[len(head) + a["start_idx"], len(head) + len(sol), 1]]
            rows.append({"text": head + sol + "\n", "spans": spans, "split": split, "problem": pid, "source": key,
                         "error": "no mistake" if a.get("start_idx") is None else "first wrong step annotated"})
    pool = []
    for pid, p in problems.items():
        for key, conv in sorted((p.get("conversations") or {}).items()):
            msg = next((m for m in conv.get("messages") or [] if m["role"].startswith("Model.") and m.get("text")), None)
            if msg and (pid, msg["text"]) not in seen:
                seen.add((pid, msg["text"]))
                pool.append((pid, key, msg["text"]))
    random.Random(f"selective-lm/champ/{seed}/order").shuffle(pool)
    size = sum(len(r["text"]) for r in rows)
    for pid, key, sol in pool:
        if size >= max_chars:
            break
        p = problems[pid]
        head = _head(p)
        rows.append({"text": head + sol + "\n", "spans": [[len(head), len(head) + len(sol), 2]],
                     "split": split_of(pid, seed), "problem": pid, "source": key, "error": "unannotated"})
        size += len(rows[-1]["text"])
    random.Random(f"selective-lm/champ/{seed}/rows").shuffle(rows)
    return rows


def leakage(rows_by_file: dict[str, list[dict]], problems: dict) -> dict:
    """Validation/test problem statements that occur in any training row (hq_math, web_math), by split."""
    train_text = "\n".join(r["text"] for f in ("hq_math", "web_math") for r in rows_by_file[f] if r["split"] == "train")
    out = {}
    for split in ("validation", "test"):
        ids = {r["problem"] for r in rows_by_file["hq_math"] if r["split"] == split}
        leaked = sum(_clean(problems[i]["_raw_text"]) in train_text for i in ids)
        out[split] = {"problems": len(ids), "leaked": leaked}
    out["max_share"] = max(v["leaked"] / max(1, v["problems"]) for v in out.values())
    return out


def is_cached(out_dir: str | Path, seed: int, prose_scale: float, web_scale: float = 1.0) -> bool:
    try:
        m = read_json(Path(out_dir) / "manifest.json")
        return ((m["format_version"], m["seed"], m["prose_scale"], m["web_scale"]) ==
                (FORMAT_VERSION, seed, float(prose_scale), float(web_scale))
                and all((Path(out_dir) / f).stat().st_size == m["files"][f]["bytes"] for f in FILES))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_champ_corpora(out_dir: str | Path, *, seed: int = 0, prose_scale: float = 1.0, web_scale: float = 1.0,
                        max_problems: int | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Write the CHAMP corpora into ``out_dir`` (see the module docstring), or keep finished ones; returns the
    directory. ``max_problems`` takes the first problems only (a tiny subset for tests)."""
    out = Path(out_dir)
    if not overwrite and is_cached(out, seed, prose_scale, web_scale) and max_problems is None:
        return out
    problems = load_champ()
    if max_problems is not None:
        problems = dict(list(problems.items())[:max_problems])
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    hq = [{"text": _head(p) + human_solution(p) + f"\nAnswer: {_clean(p['_raw_answer'])}\n", "split": split_of(pid, seed),
           "problem": pid} for pid, p in problems.items()]
    web = llm_rows(problems, seed, web_scale * WEB_CHARS)
    evals = [{"family": p["category"], "question": _clean(p["_raw_text"]), "answer": _clean(p["_raw_answer"]),
              "problem": pid} for pid, p in problems.items() if split_of(pid, seed) == "test"]
    train = sorted(((pid, p) for pid, p in problems.items() if split_of(pid, seed) == "train"),
                   key=lambda kv: len(human_solution(kv[1])) + len(kv[1]["_raw_text"]))
    exemplars = [{"family": p["category"], "question": _clean(p["_raw_text"]), "solution": human_solution(p),
                  "answer": _clean(p["_raw_answer"])} for _, p in train[:N_EXEMPLARS]]
    prose = _prose(seed, prose_scale, progress)
    rows = {"hq_math": hq, "web_math": web, "prose": prose, "fewshot_eval": evals, "fewshot_exemplars": exemplars}
    files = {}
    for name, rs in rows.items():
        f = out / f"{name}.jsonl"
        atomic_write_text(f, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f), "documents": len(rs),
                         "chars": sum(len(r.get("text", "")) for r in rs)}
    label_chars = {v: 0 for v in LABELS.values()}
    for r in web:
        marked = sum(e - s for s, e, _ in r["spans"])
        label_chars["content"] += len(r["text"]) - marked
        for s, e, lab in r["spans"]:
            label_chars[LABELS[lab]] += e - s
    write_json(out / "manifest.json", {
        "format_version": FORMAT_VERSION, "kind": "champ", "seed": seed, "prose_scale": float(prose_scale),
        "web_scale": float(web_scale), "package": f"champ-dataset=={package_version()}", "max_problems": max_problems,
        "python_version": ".".join(map(str, sys.version_info[:3])), "files": files, "split_shares": SHARES,
        "splits": {s: sum(split_of(pid, seed) == s for pid in problems) for s in SHARES},
        "provenance_labels": {str(k): v for k, v in LABELS.items()}, "web_label_chars": label_chars,
        "web_errors": {k: sum(r["error"] == k for r in web) for k in ("first wrong step annotated", "no mistake",
                                                                        "unannotated")},
        "leakage": leakage(rows, problems)})
    return out


def _prose(seed: int, prose_scale: float, progress: bool) -> list[dict]:
    """The default generator's prose (the base's diet), or none at prose_scale 0."""
    if not prose_scale:
        return []
    import tempfile

    from .default import build_default_corpora

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_default_corpora(tmp, seed=seed, hq_scale=0.001, web_scale=0.001, prose_scale=prose_scale,
                                      progress=progress)
        return [json.loads(line) for line in paths.prose.read_text(encoding="utf-8").splitlines()]
