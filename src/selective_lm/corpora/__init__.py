"""The embedded corpora: the data of the zero-download default, usable without the study.

Generators, not experiments: each writes JSONL files that ``slm prepare`` reads (``text``, and for the
noisy corpus ``spans`` of labelled provenance and ``split`` by problem). The study (:mod:`selective_lm.study`)
calls them for its corpora stage; ``slm corpora`` writes them for any other use, and the tests build
small ones directly.

* :mod:`.mathgen` - grade-school problem families with worked solutions (:func:`~.mathgen.iter_problems`).
* :mod:`.noise` - what surrounds math on a web page: boilerplate, debris, off-topic text, and near-domain
  noise (wrong solutions, near-duplicates, perturbed tables, other notations), each with a provenance label.
* :mod:`.heldout` - the problem-level train/validation/test split and the leakage check.
* :mod:`.default` - :func:`~.default.build_default_corpora`: HQ math, noisy web math, prose, few-shot sets.
* :mod:`.external` - few-shot questions from a pinned external generator (reasoning-gym) nobody here wrote.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..files import UserError


@dataclass
class CorporaConfig:
    """Write the embedded default corpora as JSONL files (no download): HQ math, noisy web math with labelled provenance spans, prose, few-shot questions and exemplars."""

    out: str = ""
    """Output directory for the JSONL files and their manifest.json."""
    seed: int = 0
    """Seed of the generators: the same seed, scale and Python minor version give byte-identical files."""
    scale: float = 1.0
    """Size (1.0 ≈ 1.5M characters of HQ math, 5M of noisy web math, 3M of prose)."""
    external: int = 0
    """Also write this many few-shot questions from reasoning-gym (pinned) to fewshot_external.jsonl, none repeating a question of the corpora."""
    overwrite: bool = False
    """Rewrite corpora already in `out` (finished corpora with the same seed and scale are otherwise kept)."""
    progress: bool = True
    """Show progress bars (on a terminal only)."""

    def validate(self) -> None:
        if not self.out:
            raise UserError("no output directory: pass --out DIR")
        if isinstance(self.scale, bool) or not 0 < float(self.scale) <= 100:
            raise UserError(f"scale must be in (0, 100], got {self.scale}")
        if self.external < 0:
            raise UserError(f"external must be >= 0, got {self.external}")


def write_corpora(cfg: CorporaConfig) -> dict:
    """`slm corpora`: write (or keep, when cached) the default corpora into ``cfg.out``; returns their manifest."""
    from pathlib import Path

    from ..files import DirLock, read_json
    from .default import build_default_corpora, own_questions

    out = Path(cfg.out)
    with DirLock(out, "corpora directory", inside=False):
        paths = build_default_corpora(out, seed=cfg.seed, scale=cfg.scale, overwrite=cfg.overwrite,
                                      progress=cfg.progress)
        manifest = read_json(paths.manifest)
        if cfg.external:
            from .external import write_external

            manifest["external"] = write_external(out / "fewshot_external.jsonl", cfg.external, seed=cfg.seed,
                                                  exclude=own_questions(out))
    return manifest


__all__ = ["CorporaConfig", "write_corpora"]
