"""The reference's own training data against the corpus it scores: the two warnings `slm score` prints.

SLM keeps the tokens whose excess loss (training model − reference) is high. Two things other than quality make a
reference's loss low or high, and this module measures both after scoring (on ``check_windows`` windows of the
scored split, evenly spaced; figures in the scores manifest's ``checks``, a warning line each when they cross the
threshold):

* **overlap** - the share of the corpus's counted targets that lie inside an n-gram (:data:`N` = 13 tokens) that
  also occurs in the reference's training data, and the mean excess of those tokens against the rest (the excess
  of the base model, the one SLM will train; without one, the mean reference loss). A reference that memorised
  text it shares with the corpus makes that text look learnable: SLM keeps it for being memorised, not for being
  good. Warned from :data:`OVERLAP_WARN` of the targets.
* **format mismatch** - a token class (:mod:`.tokenclass`: markup/LaTeX, code, digits, ...) at least
  :data:`FORMAT_RATIO` × more frequent in the corpus than in the reference's data whose mean reference loss is at
  least :data:`FORMAT_NATS` above the corpus's other tokens: SLM will skip that class for its format (the
  reference never saw it), whatever its quality.

The reference's data is the dataset its run trained on (its checkpoint's ``slm_meta.json``: dataset, the held-out
windows of a self-reference) or ``ref_data``; it must share the corpus's tokenizer. N-grams are compared by a 64-bit
hash of their token ids (collisions: about n²/2⁶⁴); at most :data:`MAX_REF_TOKENS` tokens of it are read (evenly
spaced windows beyond that, so the overlap is then a lower bound, recorded as ``reference_tokens_used``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N = 13
OVERLAP_WARN = 0.01
FORMAT_RATIO = 10.0
FORMAT_NATS = 1.0
FORMAT_MIN_SHARE = 0.002  # classes rarer than this in the corpus are not named
MAX_REF_TOKENS = 1 << 26  # 512 MiB of n-gram hashes
_MULT = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a polynomial hash over all 64 bits."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def ngram_hashes(tokens: np.ndarray, n: int = N) -> np.ndarray:
    """uint64 [..., L - n + 1]: a hash of each n-gram along the last axis of ``tokens`` (ids, [..., L])."""
    t = np.asarray(tokens).astype(np.uint64) + np.uint64(1)
    L = t.shape[-1]
    if L < n:
        return np.zeros((*t.shape[:-1], 0), dtype=np.uint64)
    h = np.zeros((*t.shape[:-1], L - n + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MULT + t[..., j:L - n + 1 + j]
        return _mix(h)


def reference_ngrams(windows: np.ndarray, n: int = N) -> np.ndarray:
    """Sorted unique hashes of every n-gram of a token stream (``windows`` [rows, L], consecutive in the stream)."""
    return np.unique(ngram_hashes(np.asarray(windows).reshape(-1), n))


def overlap_mask(windows: np.ndarray, ref_hashes: np.ndarray, n: int = N) -> np.ndarray:
    """bool [rows, L]: the positions of ``windows`` inside at least one n-gram (within the window) whose hash is in
    ``ref_hashes`` (sorted)."""
    w = np.atleast_2d(np.asarray(windows))
    h = ngram_hashes(w, n)
    if h.shape[-1] == 0 or len(ref_hashes) == 0:
        return np.zeros(w.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(ref_hashes, h), len(ref_hashes) - 1)
    hit = ref_hashes[pos] == h  # [rows, L - n + 1]: an n-gram starting here occurs in the reference's data
    # position t is covered by the starts t - n + 1 .. t
    c = np.concatenate([np.zeros((w.shape[0], 1), np.int64), np.cumsum(hit, axis=1)], axis=1)  # c[i] = Σ hit[:i]
    t = np.arange(w.shape[1])
    hi, lo = np.minimum(t, h.shape[1] - 1) + 1, np.maximum(t - n + 1, 0)
    return (c[:, hi] - c[:, lo]) > 0


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def corpus_checks(windows: np.ndarray, counted: np.ndarray, ref_loss: np.ndarray, base_loss: np.ndarray | None,
                  ref_hashes: np.ndarray, ref_class_counts: np.ndarray, class_table: np.ndarray,
                  n: int = N) -> dict:
    """The figures and warnings of the module docstring on arrays: ``windows`` [rows, T + 1] token ids, ``counted``,
    ``ref_loss`` and ``base_loss`` [rows, T] (targets), the reference data's n-gram hashes and class counts."""
    from .tokenclass import CLASSES

    counted = np.asarray(counted, bool)
    inside = overlap_mask(windows, ref_hashes, n)[:, 1:] & counted
    rest = counted & ~inside
    ref = np.asarray(ref_loss, np.float64)
    score, what = (np.asarray(base_loss, np.float64) - ref, "excess") if base_loss is not None else (ref, "ref_loss")
    n_counted = int(counted.sum())
    share = int(inside.sum()) / n_counted if n_counted else 0.0
    ov = {"n": n, "tokens": n_counted, "overlap_tokens": int(inside.sum()), "share": share, "measure": what,
          "mean_overlap": _mean(score[inside]), "mean_rest": _mean(score[rest])}
    warnings = []
    if share >= OVERLAP_WARN:
        gap = (ov["mean_overlap"] - ov["mean_rest"]) if ov["mean_rest"] is not None else None
        ov["gap"] = gap
        fig = (f"their mean excess loss is {gap:+.2f} nats against the rest's" if what == "excess" and gap is not None
               else f"the reference's loss on them is {gap:+.2f} nats against the rest's" if gap is not None else "")
        warnings.append(f"overlap: {share:.1%} of the corpus's scored tokens lie in {n}-grams that also occur in the "
                        f"reference's training data; {fig}: SLM will favour text the reference memorised, not better "
                        "text. Remove the shared passages from the reference's data (or from the corpus), or mark them "
                        "context only (slm prepare context_field)")
    ids = np.asarray(windows)[:, 1:][counted]
    cls = np.asarray(class_table)[ids.astype(np.int64)]
    corpus_counts = np.bincount(cls, minlength=len(CLASSES))
    ref_counts = np.asarray(ref_class_counts, np.float64)
    ref_total, corp_total = max(ref_counts.sum(), 1.0), max(int(corpus_counts.sum()), 1)
    r = ref[counted]
    classes = {}
    for i, name in enumerate(CLASSES):
        if name == "special" or not corpus_counts[i]:
            continue
        mine = cls == i
        c_share, r_share = corpus_counts[i] / corp_total, ref_counts[i] / ref_total
        ratio = c_share / r_share if r_share else None  # None: never in the reference's data
        gap = float(r[mine].mean() - r[~mine].mean()) if (~mine).any() else None
        classes[name] = {"corpus_share": c_share, "reference_share": r_share, "ratio": ratio,
                         "ref_loss": float(r[mine].mean()), "ref_loss_rest": _mean(r[~mine]), "gap": gap}
        if c_share >= FORMAT_MIN_SHARE and (ratio is None or ratio >= FORMAT_RATIO) and gap is not None \
                and gap >= FORMAT_NATS:
            times = "never seen in" if ratio is None else f"{ratio:.0f}× their share of"
            warnings.append(f"format mismatch: {name} tokens are {c_share:.1%} of the corpus ({times} the reference's "
                            f"training data, {r_share:.2%}) and the reference's loss on them is {gap:+.2f} nats above "
                            f"the corpus's other tokens: SLM will skip them for their format, not their quality. Add "
                            f"such text to the reference's data, or bring the corpus to the reference's format")
    return {"overlap": ov, "classes": classes, "warnings": warnings,
            "thresholds": {"overlap_share": OVERLAP_WARN, "format_ratio": FORMAT_RATIO, "format_nats": FORMAT_NATS,
                           "format_min_share": FORMAT_MIN_SHARE}}


def _held_out(n: int, fraction: float, seed: int) -> np.ndarray:
    """The windows a self-reference's run trained on: train.held_out's draw (tests/test_refdata.py checks they agree)."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng([seed, 0x5E1F]).permutation(n)[: round(fraction * n)]] = True
    return mask


def reference_data(model: str | Path, given: str | None):
    """(TokenDataset, its train windows the reference trained on or None for all, the base it started from or None,
    how it was found); raises ValueError with the reason when the reference's data cannot be known."""
    from .data import TokenDataset
    from .files import UserError, read_json

    meta = {}
    try:
        meta = read_json(Path(model) / "slm_meta.json")
    except (OSError, ValueError):
        pass
    path = given or meta.get("dataset")
    if not path:
        raise ValueError(f"the reference's training data is unknown ({model} has no slm_meta.json naming it): pass "
                         "ref_data=DIR (that data prepared with the same tokenizer) for the overlap and format checks")
    try:
        ds = TokenDataset(path)
    except UserError as e:
        raise ValueError(f"the reference's training data is not readable ({e})") from None
    pool = None
    hold = meta.get("holdout") if not given else None
    if hold:
        n = ds.num_windows("train")
        mask = _held_out(n, hold["fraction"], hold["seed"])
        pool = np.flatnonzero(mask if hold["side"] == "only" else ~mask)
    return ds, pool, meta.get("base"), "ref_data" if given else f"{model}/slm_meta.json"


def check_inputs(corpus, ref_data: str | None, base_model: str | None) -> None:
    """`slm score`, before scoring: a ``ref_data`` or ``base_model`` given by the user must be usable (UserError)."""
    from .data import TokenDataset
    from .files import UserError
    from .model import check_compatible

    if ref_data and TokenDataset(ref_data).manifest["tokenizer_fingerprint"] != corpus.manifest["tokenizer_fingerprint"]:
        raise UserError(f"ref_data {ref_data} has another tokenizer than {corpus.path}: prepare it with "
                        f"--tokenizer {corpus.tokenizer_dir}")
    if base_model:
        check_compatible(base_model, corpus, role="base model")


def run_checks(corpus, split: str, ref_loss: np.ndarray, model: str | Path, ref_data: str | None,
               base_model: str | None, windows: int, device, precision: str = "auto") -> dict:
    """The checks for `slm score`: ``corpus`` its TokenDataset, ``ref_loss`` [windows, seq_len] the scores just
    computed. Returns the figures and warnings, or ``{"skipped": reason}``."""
    import torch

    from .model import autocast_ctx, load_model, model_token_losses
    from .tokenclass import CLASSES, class_table

    try:
        rds, pool, base, found = reference_data(model, ref_data)
    except ValueError as e:
        return {"skipped": str(e)}
    if rds.manifest["tokenizer_fingerprint"] != corpus.manifest["tokenizer_fingerprint"]:
        return {"skipped": f"the reference's training data {rds.path} has another tokenizer than {corpus.path}: "
                           "prepare both with one tokenizer (slm prepare --tokenizer) to compare them"}
    rows = np.arange(rds.num_windows("train")) if pool is None else pool
    cap = max(1, MAX_REF_TOKENS // rds.window_len)
    if len(rows) > cap:
        rows = rows[np.linspace(0, len(rows) - 1, cap).round().astype(np.int64)]
    table = class_table(corpus.tokenizer(), max(corpus.vocab_size, rds.vocab_size))
    ref_win = rds.windows("train")
    hashes, ref_classes = [], np.zeros(len(CLASSES), np.int64)
    for s in range(0, len(rows), 4096):
        block = np.asarray(ref_win[np.sort(rows[s:s + 4096])])
        hashes.append(reference_ngrams(block))
        ref_classes += np.bincount(table[block.reshape(-1).astype(np.int64)], minlength=len(CLASSES))
    ref_hashes = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    n = corpus.num_windows(split)
    pick = np.arange(n) if not windows or windows >= n else np.linspace(0, n - 1, windows).round().astype(np.int64)
    win = np.asarray(corpus.windows(split)[pick])
    counted = corpus.target_mask(split, pick)
    counted = np.ones((len(pick), corpus.seq_len), bool) if counted is None else counted
    base_model = base_model or base
    base_loss = None
    if base_model and Path(base_model).is_dir():
        m = load_model(base_model, device).eval()
        parts = []
        with torch.inference_mode(), autocast_ctx(device, precision):
            for s in range(0, len(pick), 32):
                inputs, targets = corpus.batch(split, pick[s:s + 32])
                parts.append(model_token_losses(m, inputs.to(device), targets.to(device)).float().cpu().numpy())
        base_loss = np.concatenate(parts)
        del m
    out = corpus_checks(win, counted, np.asarray(ref_loss[pick], np.float64), base_loss, ref_hashes, ref_classes,
                        table)
    out.update(reference_data=str(rds.path), found_by=found, reference_tokens_used=int(len(rows) * rds.window_len),
               base_model=str(base_model) if base_loss is not None else None, windows=len(pick))
    return out
