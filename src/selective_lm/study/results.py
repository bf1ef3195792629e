"""A finished study directory read back: :class:`StudyResults` (index.json, per-seed pipelines, eval
points, cached per-token loss dumps) and the per-run helpers the sections share.

:mod:`.collect` assembles ``results.json`` from the sections of this module's readers, :mod:`.tokens`
and :mod:`.claims`; none of them imports :mod:`.collect`.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import yaml

from ..checkpoint import read_metrics
from ..evaluate import load_losses
from ..files import UserError, read_json

DEFAULT_LABELS = {0: "content", 1: "noise", 2: "offtopic", 3: "wrong_solution", 4: "near_duplicate",
                  5: "perturbed_table", 6: "other_notation"}
PROTOCOL = ("Headline numbers are on the test split (metrics.json 'test'); tuning choices are made on the validation "
            "split only: the best ratio of a strategy is the one with the lowest mean final validation target loss "
            "over seeds, and it is then reported on test. Groups aggregate over seeds (what a seed varies: "
            "'The regime and the seeds').")
_ERRORS = (UserError, ValueError, OSError, KeyError, IndexError, TypeError)
PUBLIC = ("step", "tokens", "target_loss", "target_ppl", "noisy_loss", "noisy_ppl", "val_target_loss",
          "own_acc", "own_correct", "own_n", "ext_acc", "ext_correct", "ext_n",
          "own_mc_acc", "own_mc_acc_norm", "own_mc_correct", "own_mc_correct_norm", "own_mc_n", "own_answer_nll",
          "ext_mc_acc", "ext_mc_acc_norm", "ext_mc_correct", "ext_mc_correct_norm", "ext_mc_n", "ext_answer_nll",
          "mc_chance")


def clean(obj):
    """JSON round trip: numpy values and paths converted, non-finite floats become None."""
    text = json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, (np.ndarray, np.generic)) else str(o))
    return json.loads(text, parse_constant=lambda _: None)


def needs_reference(run: dict) -> bool:
    """Whether an arm pays for a reference and its scoring pass: SLM that ranks by a reference (random selection
    ranks nothing; dft weights and ESLM's scores are the model's own)."""
    if run.get("arm") == "slm":
        return run.get("strategy") != "random"
    return run.get("arm") == "variant" and not str(run.get("variant", "")).startswith(("dft", "eslm"))


def group_of(run: dict) -> str:
    """The group of a run over seeds: clm, hq, content, slm-STRATEGY-RATIO, variant-NAME; a sweep arm's group
    carries its HQ : budget ratio (hq@1:30, slm-topk-0.6@1:30)."""
    if run.get("arm") == "variant":
        return f"variant-{run['variant']}"
    g = run["arm"] if run.get("arm") != "slm" else f"slm-{run['strategy']}-{float(run['ratio']):g}"
    return f"{g}@{run['hq_label']}" if run.get("sweep") else g


def _point(f: Path) -> dict:
    m, num = read_json(f), re.fullmatch(r"step_(\d+)", f.parent.name)
    test, val, fs = m.get("test") or {}, m.get("validation") or {}, m.get("fewshot") or {}
    t, n, v = test.get("target") or {}, test.get("noisy") or {}, val.get("target") or {}
    own, ext = fs.get("own") or {}, fs.get("external") or {}
    mc = m.get("mc") or {}
    point = {"dir": f.parent, "step": int(m.get("step", num.group(1) if num else -1)), "tokens": float(m.get("tokens", 0)),
             "target_loss": t.get("loss"), "target_ppl": t.get("ppl"), "noisy_loss": n.get("loss"),
             "noisy_ppl": n.get("ppl"), "val_target_loss": v.get("loss"),
             "own_acc": own.get("accuracy"), "own_correct": own.get("correct"), "own_n": own.get("n"),
             "ext_acc": ext.get("accuracy"), "ext_correct": ext.get("correct"), "ext_n": ext.get("n"),
             "mc_chance": next((x.get("chance") for x in mc.values()), None)}
    for kind, key in (("own", "own"), ("ext", "external")):
        x = mc.get(key) or {}
        point.update({f"{kind}_mc_acc": x.get("acc"), f"{kind}_mc_acc_norm": x.get("acc_norm"),
                      f"{kind}_mc_correct": x.get("correct"), f"{kind}_mc_correct_norm": x.get("correct_norm"),
                      f"{kind}_mc_n": x.get("n"), f"{kind}_answer_nll": x.get("answer_nll")})
    return point


def public(p: dict) -> dict:
    return {k: p.get(k) for k in PUBLIC}


class StudyResults:
    """A v2 study directory: index.json, per-seed pipelines, eval points and cached loss dumps."""

    def __init__(self, study_dir):
        self.dir, idx = Path(study_dir), Path(study_dir) / "index.json"
        if not idx.is_file():
            raise UserError(f"{self.dir} is not a finished study directory (no {idx.name}): pass the out "
                            "directory of `slm study` once it has finished")
        try:
            self.index = read_json(idx)
        except ValueError:
            raise UserError(f"{idx} is not valid JSON: re-run `slm study` to rewrite it") from None
        if not isinstance(self.index, dict) or not self.index.get("runs") or not self.index.get("pipelines"):
            raise UserError(f"{idx} lists no pipelines or no runs (study layout v2 expected): re-run `slm study`")
        self.all_runs: list[dict] = self.index["runs"]
        self.runs = [r for r in self.all_runs if not r.get("sweep")]  # the main arms (a sweep arm: its end only)
        self.seeds = list(self.index.get("seeds") or sorted({r["seed"] for r in self.runs}))
        self.ratios = [float(r) for r in (self.index.get("ratios") or sorted(
            {float(r["ratio"]) for r in self.runs if r.get("arm") == "slm"}))]
        self._cache: dict = {}
        study_yaml = self.dir / "study.yaml"
        cfg = (yaml.safe_load(study_yaml.read_text(encoding="utf-8")) or {}) if study_yaml.is_file() else {}
        self.study_cfg = cfg if isinstance(cfg, dict) else {}
        self.quick = bool(self.index.get("quick", self.study_cfg.get("quick", False)))

    def path(self, p) -> Path:
        """Resolve an index path: as given, relative to the study dir, or by its tail (a moved study)."""
        q = Path(p)
        cands = ([q] if q.is_absolute() else [self.dir / q, q]) + [self.dir / Path(*q.parts[i:])
                                                                 for i in range(1, len(q.parts))]
        return next((c for c in cands if c.exists()), cands[0])

    def pipeline(self, seed) -> dict:
        pl = self.index["pipelines"].get(str(seed))
        if pl is None:
            raise UserError(f"index.json has no pipeline for seed {seed}: re-run `slm study`")
        return pl

    def evals(self, eval_dir) -> list[dict]:
        """Eval points (one per step_*/metrics.json), sorted by (tokens, step)."""
        d = self.path(eval_dir)
        if d not in self._cache:
            pts = [_point(f) for f in sorted(d.glob("step_*/metrics.json"))]
            if not pts:
                raise UserError(f"no step_*/metrics.json under {d}: re-run the study's eval stage (`slm study`)")
            self._cache[d] = sorted(pts, key=lambda p: (p["tokens"], p["step"]))
        return self._cache[d]

    def base_point(self, seed) -> dict:
        return dict(self.evals(self.pipeline(seed)["base"]["eval_dir"])[-1], tokens=0.0, is_base=True)

    def ref_point(self, seed, label: str | None = None) -> dict:
        """The end of a pipeline's reference: the main one, or the sweep's at HQ : budget ``label`` ("1:30")."""
        pl = self.pipeline(seed)
        d = pl["reference"]["eval_dir"] if label is None else pl["references"][label]["eval_dir"]
        return self.evals(d)[-1]

    def curve(self, run: dict) -> list[dict]:
        """Eval points of a continual run, the base's point of its pipeline first (tokens 0)."""
        pts = [p for p in self.evals(run["eval_dir"]) if p["tokens"] > 0 or p["step"] > 0]
        return [self.base_point(run["seed"])] + pts

    def dump(self, point: dict, name: str = "test.noisy") -> np.ndarray:
        f = Path(point["dir"]) / f"{name}.losses.bin"
        return self._cache[f] if f in self._cache else self._cache.setdefault(f, load_losses(f))

    def ref_noisy(self, seed) -> np.ndarray:
        return self.dump(self.ref_point(seed))

    def excess(self, point: dict, seed) -> np.ndarray:
        """That checkpoint's per-token test-noisy loss minus its pipeline's reference loss on the same tokens."""
        cur, ref = self.dump(point), self.ref_noisy(seed)
        if cur.shape != ref.shape:
            raise UserError(f"{point['dir']} holds {cur.size} test-noisy losses but the reference {ref.size}: "
                            "the eval stage must dump the same windows for every model")
        return cur - ref

    def test_tokens(self, seed, n_tokens: int):
        """(token ids [W, seq_len], provenance [W, seq_len] or None, dataset) aligned with the test-noisy dumps."""
        from ..data import TokenDataset

        key = ("tokens", seed)
        if key not in self._cache:
            ds = TokenDataset(self.path(self.pipeline(seed)["datasets"]["noisy"]))
            win, prov = ds.windows("test"), ds.provenance("test")
            w = n_tokens // ds.seq_len
            if n_tokens % ds.seq_len or w > win.shape[0]:
                raise UserError(f"{n_tokens} test-noisy losses are not whole windows of {ds.seq_len} tokens of "
                                f"{ds.path} ({win.shape[0]} windows): the dumps do not belong to this dataset")
            self._cache[key] = (np.asarray(win[:w, 1:]), None if prov is None else np.asarray(prov[:w, 1:]), ds)
        return self._cache[key]

    def strings(self, seed, n_tokens: int) -> list[str]:
        ids, _, ds = self.test_tokens(seed, n_tokens)
        return list(map(self.decoder(ds), ids.reshape(-1).tolist()))

    @staticmethod
    def decoder(ds):  # token id -> text, cached
        return functools.lru_cache(maxsize=None)(lambda i: ds.tokenizer().decode([int(i)]))

    @staticmethod
    def labels(ds) -> dict:
        return {int(k): v for k, v in (ds.manifest.get("provenance_labels") or DEFAULT_LABELS).items()}

    def reference_tokens(self, seed) -> float | None:
        """Training tokens of the pipeline's reference run: run.json, else metrics.jsonl, else final/slm_meta.json."""
        d = self.path(self.pipeline(seed)["reference"]["run_dir"])
        if (d / "run.json").is_file() and read_json(d / "run.json").get("tokens") is not None:
            return float(read_json(d / "run.json")["tokens"])
        rows = [r["tokens"] for r in read_metrics(d) if r.get("type") == "train" and r.get("tokens") is not None]
        if rows:
            return float(rows[-1])
        meta = d / "final" / "slm_meta.json"
        return float(read_json(meta)["tokens"]) if meta.is_file() and "tokens" in read_json(meta) else None

    def scored_tokens(self, seed) -> float | None:
        """Tokens the reference scored (the scores manifest's shape: windows × seq_len)."""
        m = self.path(self.pipeline(seed)["scores"]) / "manifest.json"
        return float(np.prod(read_json(m)["shape"])) if m.is_file() else None
