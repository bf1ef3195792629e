"""Embedded default corpora: deterministic, offline stand-ins for the Rho-1 data.

``hq_math.jsonl`` (clean problems, plus a correct numeric table in some documents: trains the
reference), ``web_math.jsonl`` (noisy web-math pages with ``spans`` [start, end, label]; labels in
``noise.PROVENANCE``: 1 boilerplate, 2 off-topic prose, and near-domain noise 3 wrong solutions,
4 near-duplicates, 5 perturbed tables, 6 correct math in another notation; unlabelled characters are
math content), ``prose.jsonl`` (plain-text pydoc pages of allowlisted stdlib modules plus ~5% simple
math: the base model's general diet), ``fewshot_eval.jsonl`` (test-split questions),
``fewshot_exemplars.jsonl`` (train-split problems) and, last, ``manifest.json`` (sizes, hashes,
split and label statistics, the ``leakage`` check; also the cache key).

Splits are problem-level (``heldout``): every question belongs to train, validation or test by a
keyed hash of its normalised text, and every hq_math/web_math row carries ``"split"`` and is built
from problems of that split only (its near-domain noise included); prose and the exemplars use
train problems only. All randomness comes from ``random.Random`` seeded through SHA-256: the same
seed, scale and Python minor version give byte-identical files.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pydoc
import random
import re
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..files import UserError, atomic_write_text, read_json, sha256_file, write_json
from .heldout import SPLIT_SHARES, SPLITS, ProblemSplit, leakage
from .mathgen import FAMILIES, Problem, format_problem, iter_problems, normalise_question
from .noise import (INLINE, NAV, NEAR_KINDS, NEAR_WEIGHTS, PROVENANCE, REACTIONS, boilerplate, math_table,
                    near_domain, timestamp, user_name)

FORMAT_VERSION = 2
HQ_DOCS = 3400            # documents at scale=1 (~1.5M characters), 84/8/8 % train/validation/test
WEB_DOCS = 4450           # documents at scale=1 (~5M characters), 84/8/8 % train/validation/test
EVAL_MIN_CHARS = 22_000   # floor of each validation/test split: >= 24 windows of 257 tokens at ~2.9 chars/token
NEAR_SHARE = (0.25, 0.5)  # share of a page's non-content budget that near-domain noise (labels 3-6) takes
HQ_TABLE_SHARE = 0.1      # HQ documents with a correct numeric table
WEB_TABLE_SHARE = 0.12    # web pages with a correct numeric table as content
PROSE_CHARS = 3_000_000   # character target at scale=1
# train tokens per unit of scale with a 2048-token byte-level BPE trained on these corpora (measured on seed 0:
# hq_scale 0.25 -> 118,734 tokens, web_scale 0.2 -> 327,932): what scale_for sizes a corpus by
TRAIN_TOKENS_PER_SCALE = {"hq_math": 475_000, "web_math": 1_640_000}
PROSE_MATH_SHARE = 0.05
N_EVAL = 400
N_EXEMPLARS = 8
FILE_NAMES = {"hq_math": "hq_math.jsonl", "web_math": "web_math.jsonl", "prose": "prose.jsonl",
              "fewshot_eval": "fewshot_eval.jsonl", "fewshot_exemplars": "fewshot_exemplars.jsonl"}

_FORBIDDEN = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "site", "readline",
              "rlcompleter", "webbrowser", "ensurepip", "pip", "sysconfig", "platform"}
PROSE_MODULES: tuple[str, ...] = tuple("""
pydoc_data.topics string textwrap collections itertools functools operator math cmath decimal fractions random
statistics datetime calendar heapq bisect array copy pprint reprlib enum numbers dataclasses typing abc contextlib
json csv re difflib codecs base64 binascii hashlib hmac secrets struct zlib shutil pathlib posixpath glob fnmatch
tempfile io argparse logging getopt optparse configparser shlex html html.parser xml.etree.ElementTree uuid ipaddress
queue sched threading concurrent.futures subprocess socket selectors asyncio inspect dis ast tokenize token keyword
traceback warnings weakref types graphlib zoneinfo pickle shelve dbm plistlib tomllib wave colorsys gettext timeit
cProfile pstats doctest unittest filecmp fileinput linecache netrc quopri stringprep codeop code pickletools signal
mmap select errno stat importlib pkgutil modulefinder runpy pyclbr compileall py_compile logging.handlers
logging.config json.decoder json.encoder collections.abc multiprocessing.pool os unicodedata locale builtins
xml.dom.minidom xml.sax.saxutils ssl bdb pdb tracemalloc importlib.metadata importlib.resources ctypes unittest.mock
zipimport symtable contextvars importlib.abc importlib.util concurrent.futures.process multiprocessing
multiprocessing.managers multiprocessing.queues multiprocessing.shared_memory multiprocessing.synchronize
xml.sax.handler xml.sax.xmlreader xml.dom.pulldom xml.dom.expatbuilder xml.sax.expatreader cmd time sys profile trace
gc marshal venv _thread encodings.idna encodings.punycode zipapp tabnanny getpass
""".split())
OFFTOPIC_MODULES: tuple[str, ...] = tuple("""
email.message email.headerregistry email.utils email.parser email.policy email.charset email.mime.text http.client
http.server http.cookies http.cookiejar smtplib imaplib poplib ftplib socketserver xmlrpc.client xmlrpc.server
urllib.request urllib.parse urllib.robotparser wsgiref.simple_server wsgiref.handlers wsgiref.headers wsgiref.util
mimetypes mailbox sqlite3 tarfile zipfile gzip bz2 lzma
""".split())
assert not set(PROSE_MODULES) & set(OFFTOPIC_MODULES)
assert not {m.split(".")[0] for m in PROSE_MODULES + OFFTOPIC_MODULES} & _FORBIDDEN


@dataclass
class CorporaPaths:
    root: Path
    hq_math: Path
    web_math: Path
    prose: Path
    fewshot_eval: Path
    fewshot_exemplars: Path
    manifest: Path

    @classmethod
    def at(cls, root: str | Path) -> CorporaPaths:
        root = Path(root)
        return cls(root=root, manifest=root / "manifest.json",
                   **{k: root / v for k, v in FILE_NAMES.items()})


def _seed(seed: int, stream: str) -> int:
    return int.from_bytes(hashlib.sha256(f"selective-lm/{seed}/{stream}".encode()).digest()[:8], "big")


# ------------------------------------------------------------- stdlib prose
def render_module_doc(name: str) -> str:
    """Plain-text pydoc page of an allowlisted module, scrubbed to be deterministic."""
    if name.split(".")[0] in _FORBIDDEN or name not in PROSE_MODULES + OFFTOPIC_MODULES:
        raise ValueError(f"module {name!r} is not on an allowlist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = importlib.import_module(name)
        except ImportError:  # e.g. tomllib before 3.11: the manifest records the Python version
            return ""
        if name == "pydoc_data.topics":  # the language-reference topics that help() shows: prose
            return "\n\n".join(mod.topics[k].strip() for k in sorted(mod.topics)) + "\n"
        raw = pydoc.render_doc(mod, renderer=pydoc.plaintext)
    raw = re.sub(".\b", "", raw)  # overstrike bold, in case a renderer adds it
    out, keep, inherited = [], True, False
    for line in raw.splitlines():
        line = line.rstrip()
        if line and not line[0].isspace():  # a section header (or the title line)
            keep = line in ("NAME", "DESCRIPTION", "CLASSES", "FUNCTIONS") or line.startswith("Python Library")
        if re.match(r"^ *\|  -{20,}$", line) or not line.lstrip().startswith("|"):
            inherited = False  # end of a class-body block
        if re.match(r"^ *\|  [A-Z][\w ]+ inherited from ", line):
            inherited = True  # repeated verbatim across many classes: keep only the header
        # drop attribute lines whose repr may hold sets, dicts or object addresses
        if keep and (not inherited or "inherited from" in line) and not re.match(
                r"^[ |]*[\w.]+ = .*(?:\{|set\(|<)", line):
            out.append(line)
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", "\n".join(out))
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x0", text)
    text = re.sub(r"<_io\.\w+ name=[^>]*>", "<stream>", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _chunks(text: str, target: int) -> list[str]:
    """Split at blank (or bare ``|``) lines into pieces of about ``target`` characters."""
    pieces, cur, size = [], [], 0
    for line in text.split("\n"):
        cur.append(line)
        size += len(line) + 1
        if (size >= target and line.strip(" |") == "") or size >= 2 * target:
            pieces.append("\n".join(cur).strip("\n") + "\n")
            cur, size = [], 0
    pieces.append("\n".join(cur).strip("\n") + "\n")
    return [p for p in pieces if len(p.strip(" |\n")) > 40]

def _piece_stream(modules: tuple[str, ...], target: int) -> Iterator[str]:
    seen: list[str] = []
    for name in modules:
        for piece in _chunks(render_module_doc(name), target):
            seen.append(piece)
            yield piece
    while seen:  # off-topic sections may recur across web pages once the pool is used up
        yield from seen
    raise RuntimeError(f"none of {modules} could be imported")


# ------------------------------------------------------------------ documents
Parts = list[tuple[str, int]]  # (text, label) pieces of one document

def _finish(parts: Parts) -> tuple[str, list[list[int]]]:
    """Join ``parts`` into text and merged, sorted ``[start, end, label]`` spans of the labels other than 0."""
    spans, pos = [], 0
    for t, lab in parts:
        if lab and spans and spans[-1][1] == pos and spans[-1][2] == lab:
            spans[-1][1] = pos + len(t)
        elif lab:
            spans.append([pos, pos + len(t), lab])
        pos += len(t)
    return "".join(t for t, _ in parts), spans


@dataclass
class _Source:
    """The problems of one corpus and split, and the earlier ones that near-duplicates repeat."""
    probs: Iterator[Problem]
    ok: Callable[[str], bool]  # does a question belong to this split
    seen: list[Problem] = field(default_factory=list)

    def next(self) -> Problem:
        p = next(self.probs)
        self.seen.append(p)
        if len(self.seen) > 4000:
            del self.seen[:2000]
        return p

    def near(self, rng: random.Random, kind: int) -> str | None:
        return near_domain(rng, kind, lambda: next(self.probs), self.seen, self.ok)


def _sources(stream: Iterator[Problem], split_of: ProblemSplit) -> dict[str, _Source]:
    """One stream routed into the three splits (each problem goes where its question belongs)."""
    queues: dict[str, deque[Problem]] = {s: deque() for s in SPLITS}

    def take(split: str) -> Iterator[Problem]:
        q = queues[split]
        while True:
            while not q:
                p = next(stream)
                queues[split_of(p.question)].append(p)
            yield q.popleft()
    return {s: _Source(take(s), lambda q, s=s: split_of(q) == s) for s in SPLITS}


def _hq_doc(rng: random.Random, src: _Source) -> str:
    blocks = [format_problem(src.next()) for _ in range(rng.randint(2, 6))]
    if rng.random() < HQ_TABLE_SHARE:  # a correct table, so tables in themselves are in-domain
        blocks.insert(rng.randrange(len(blocks) + 1), math_table(rng))
    return "\n".join(blocks)


def _wrap_problem(rng: random.Random, p: Problem, clean: bool) -> Parts:
    """A problem as it appears on a web page: content (0) plus wrapper chrome (1)."""
    style = 0.0 if clean else rng.random()
    if style < 0.55 or style >= 0.9:  # canonical form, maybe in a div, maybe with inline debris
        parts: Parts = [('<div class="post-body">\n', 1)] if style >= 0.9 else []
        for line in format_problem(p).splitlines():
            parts.append((line, 0))
            if not clean and rng.random() < 0.12:
                parts.append((rng.choice(INLINE), 1))
            parts.append(("\n", 0))
        return parts + ([("</div>\n", 1)] if style >= 0.9 else [])
    if style < 0.7:
        return [("Q: ", 1), (p.question + "\n", 0), ("A: ", 1), (p.solution + "\n", 0), (f"Answer: {p.answer}\n", 0)]
    return [(f"Posted by {user_name(rng)} on {timestamp(rng)}\n", 1), (p.question + "\n", 0),
            (f"Reply #{rng.randint(1, 12)} from {user_name(rng)}:\n", 1), (p.solution + "\n", 0),
            (f"Answer: {p.answer}\n", 0), (rng.choice(REACTIONS) + "\n", 1)]


# junk-ratio profiles: (weight, low, high) of the share of non-content characters in a page
_PROFILES = ((24, 0.0, 0.06), (30, 0.15, 0.35), (26, 0.40, 0.60), (12, 0.65, 0.80), (8, 0.80, 0.90))


def _web_doc(rng: random.Random, src: _Source, offtopic: Iterator[str]) -> Parts:
    if rng.random() < 0.04:  # a wholly off-topic page, perhaps with site chrome
        nav = [(rng.choice(NAV) + "\n", 1)] if rng.random() < 0.6 else []
        return nav + [(next(offtopic) + "\n", 2) for _ in range(rng.randint(1, 3))]
    ratio = rng.uniform(*rng.choices([(lo, hi) for _, lo, hi in _PROFILES], weights=[w for w, _, _ in _PROFILES])[0])
    n = rng.randint(1, 3) if ratio > 0.8 else rng.randint(2, 9)
    blocks = [_wrap_problem(rng, src.next(), ratio < 0.1) for _ in range(n)]
    if n > 1 and rng.random() < WEB_TABLE_SHARE:  # a correct table is content too
        blocks[rng.randrange(n)] = [(math_table(rng), 0)]
    content = sum(len(t) for b in blocks for t, lab in b if lab == 0)
    budget = int(content * ratio / (1.0 - ratio)) - sum(len(t) for b in blocks for t, lab in b if lab)
    slots: list[Parts] = [[] for _ in range(n + 1)]  # before, between and after the problems
    used, spam_seen = 0, []
    if budget >= 80 and rng.random() < 0.7:
        slots[0].append((rng.choice(NAV) + "\n", 1))
        used += len(slots[0][0][0])
    if budget >= 150:  # near-domain noise: wrong solutions, near-duplicates, wrong tables, other notation
        goal, tries = used + budget * rng.uniform(*NEAR_SHARE), 0
        while used < goal and tries < 40:
            kind, tries = rng.choices(NEAR_KINDS, weights=NEAR_WEIGHTS)[0], tries + 1
            if t := src.near(rng, kind):
                slots[rng.randrange(n + 1)].append((t, kind))
                used += len(t)
    if budget > 1000 and rng.random() < 0.5:
        share = used + budget * rng.uniform(0.15, 0.5)
        while used < share:
            piece = next(offtopic) + "\n"
            slots[rng.randrange(n + 1)].append((piece, 2))
            used += len(piece)
    while used < budget:
        t = boilerplate(rng, spam_seen)
        if used + len(t) > 1.5 * budget + 30:
            break
        slots[rng.randrange(n + 1)].append((t, 1))
        used += len(t)
    return [part for i, slot in enumerate(slots) for part in slot + (blocks[i] + [("\n", 0)] if i < n else [])]


_FACTS = ("The sum of {a} and {b} is {s}.", "{a} plus {b} equals {s}.", "{a} times {b} is {p}.",
          "The product of {a} and {b} is {p}.", "{s} minus {b} is {a}.", "If you have {a} coins and find {b} more, "
          "you have {s} coins.", "Half of {e} is {a}.", "{p} divided by {b} is {a}.", "Twice {a} is {e}.")


def _math_prose(rng: random.Random, probs: Iterator[Problem]) -> str:
    """A few paragraphs of worked problems and arithmetic facts, for the base model's diet."""
    def sentence() -> str:
        if rng.random() < 0.5:
            p = next(probs)
            return f"{p.question} {p.solution}"
        a, b = rng.randint(1, 20), rng.randint(1, 12)
        return rng.choice(_FACTS).format(a=a, b=b, s=a + b, p=a * b, e=2 * a)
    return "\n\n".join(" ".join(sentence() for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(2, 5))) + "\n"


# ------------------------------------------------------------------- building
def _only(seed: int, split_of: ProblemSplit, split: str) -> Iterator[Problem]:
    return (p for p in iter_problems(seed) if split_of(p.question) == split)

def _eval_set(seed: int, split_of: ProblemSplit) -> list[Problem]:
    """N_EVAL distinct test-split questions, stratified over families (generation order within a family)."""
    quota = {f: N_EVAL // len(FAMILIES) + (i < N_EVAL % len(FAMILIES)) for i, f in enumerate(FAMILIES)}
    out: dict[str, Problem] = {}
    for p in _only(_seed(seed, "eval"), split_of, "test"):
        key = normalise_question(p.question)
        if quota[p.family] and key not in out:
            quota[p.family] -= 1
            out[key] = p
            if len(out) == N_EVAL:
                return sorted(out.values(), key=lambda q: FAMILIES.index(q.family))
    raise AssertionError("unreachable")

def _split_rows(make: Callable[[str], dict], n_total: int, eval_chars: int = EVAL_MIN_CHARS) -> list[dict]:
    """``n_total`` rows, 84/8/8 % by split, validation and test each at least ``eval_chars`` long."""
    n_eval = max(1, round(n_total * SPLIT_SHARES["validation"]))
    rows = [make("train") for _ in range(max(1, n_total - 2 * n_eval))]
    for split in ("validation", "test"):
        k = chars = 0
        while k < n_eval or chars < eval_chars:
            rows.append(make(split))
            k, chars = k + 1, chars + len(rows[-1]["text"])
    return rows

def _split_stats(rows: list[dict]) -> dict:
    out = {s: {"documents": 0, "chars": 0} for s in SPLITS}
    for r in rows:
        out[r["split"]]["documents"] += 1
        out[r["split"]]["chars"] += len(r["text"])
    return out

def scale_for(corpus: str, train_tokens: float) -> float:
    """The scale of ``corpus`` (hq_math or web_math) whose train split holds about ``train_tokens`` tokens."""
    return round(max(train_tokens / TRAIN_TOKENS_PER_SCALE[corpus], 0.005), 4)


def corpora_params(seed: int = 0, scale: float = 1.0, *, hq_scale: float | None = None,
                   web_scale: float | None = None, prose_scale: float | None = None, split_seed: int | None = None,
                   eval_chars: int = EVAL_MIN_CHARS, prose_math_share: float = PROSE_MATH_SHARE) -> dict:
    """What a set of corpora is made from (its manifest records it; the cache key): the sample ``seed``, the
    problem split's ``split_seed`` (default: ``seed``), and each corpus's scale (default: ``scale``)."""
    scales = {"hq_math": hq_scale, "web_math": web_scale, "prose": prose_scale}
    for name, v in [("scale", scale), *scales.items()]:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100
                              or (name == "scale" and v == 0)):
            raise UserError(f"{name if name == 'scale' else name.split('_')[0] + '_scale'} must be a number in "
                            f"{'(0' if name == 'scale' else '[0'}, 100], got {v!r}")
    if not isinstance(eval_chars, int) or eval_chars < 1:
        raise UserError(f"eval_chars must be a positive integer, got {eval_chars!r}")
    if isinstance(prose_math_share, bool) or not 0 <= prose_math_share < 1:
        raise UserError(f"prose_math_share must be in [0, 1), got {prose_math_share!r}")
    out = {"seed": int(seed), "split_seed": int(seed if split_seed is None else split_seed),
           "scales": {k: float(scale if v is None else v) for k, v in scales.items()}, "eval_chars": eval_chars}
    return out | ({"prose_math_share": float(prose_math_share)} if prose_math_share != PROSE_MATH_SHARE else {})


def is_cached(out_dir: str | Path, seed: int = 0, scale: float = 1.0, **kw) -> bool:
    """Whether ``out_dir`` holds complete corpora made from these parameters (:func:`corpora_params`), this
    format and this Python minor version."""
    paths = CorporaPaths.at(out_dir)
    try:
        m = read_json(paths.manifest)
        want = corpora_params(seed, scale, **kw)
        same = (m["format_version"], {k: m[k] for k in want}, m["python_version"].split(".")[:2]) == (
            FORMAT_VERSION, want, [str(v) for v in sys.version_info[:2]])
        return same and all((paths.root / m["files"][k]["path"]).stat().st_size == m["files"][k]["bytes"]
                            for k in FILE_NAMES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_default_corpora(out_dir: str | Path, *, seed: int = 0, scale: float = 1.0, overwrite: bool = False,
                          progress: bool = True, hq_scale: float | None = None, web_scale: float | None = None,
                          prose_scale: float | None = None, split_seed: int | None = None,
                          eval_chars: int = EVAL_MIN_CHARS, prose_math_share: float = PROSE_MATH_SHARE) -> CorporaPaths:
    """Write the default corpora into ``out_dir``, or return the cached ones (see the module docstring).

    ``scale`` sizes all three corpora; ``hq_scale``, ``web_scale`` and ``prose_scale`` size one each (0 = an
    empty prose file, e.g. when another sample's prose trains the base). ``split_seed`` keys the problem
    split (default ``seed``): samples with different ``seed`` and one ``split_seed`` never put a problem in
    two splits, so one sample's training text holds no other sample's validation or test problem.
    ``eval_chars`` is the floor of each validation and test split; ``prose_math_share`` the share of the prose
    corpus's characters that are worked problems and arithmetic facts in running text (train problems only)."""
    from ..runtime import progress as progress_bar

    params = corpora_params(seed, scale, hq_scale=hq_scale, web_scale=web_scale, prose_scale=prose_scale,
                            split_seed=split_seed, eval_chars=eval_chars, prose_math_share=prose_math_share)
    seed, scale, sc = params["seed"], float(scale), params["scales"]
    paths = CorporaPaths.at(out_dir)
    if not overwrite and is_cached(out_dir, seed, scale, hq_scale=hq_scale, web_scale=web_scale,
                                   prose_scale=prose_scale, split_seed=split_seed, eval_chars=eval_chars,
                                   prose_math_share=prose_math_share):
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.unlink(missing_ok=True)  # the files below are stale until the new manifest lands
    n_hq, n_web = max(3, round(HQ_DOCS * sc["hq_math"])), max(3, round(WEB_DOCS * sc["web_math"]))
    bar = progress_bar(total=n_hq + n_web + len(PROSE_MODULES), desc="corpora", unit="doc", enabled=progress)
    split_of = ProblemSplit(params["split_seed"])
    evals = _eval_set(seed, split_of)
    exemplars: dict[str, Problem] = {}  # the first short train problem of 8 families in the hq stream
    for p in _only(_seed(seed, "hq"), split_of, "train"):
        if p.family not in exemplars and len(format_problem(p)) <= 130:
            exemplars[p.family] = p
        if len(exemplars) == N_EXEMPLARS:
            break

    def made(row: dict) -> dict:
        bar.update()
        return row

    bar.set_description("hq_math")
    rng, src = random.Random(_seed(seed, "hq-docs")), _sources(iter_problems(_seed(seed, "hq")), split_of)
    hq = _split_rows(lambda s: made({"text": _hq_doc(rng, src[s]), "split": s}), n_hq, eval_chars)
    rng.shuffle(hq)
    bar.set_description("web_math")
    rng, src = random.Random(_seed(seed, "web-docs")), _sources(iter_problems(_seed(seed, "web")), split_of)
    offtopic = _piece_stream(OFFTOPIC_MODULES, 700)

    def web_row(split: str) -> dict:
        text, spans = _finish(_web_doc(rng, src[split], offtopic))
        return made({"text": text, "spans": spans, "split": split})
    web = _split_rows(web_row, n_web, eval_chars)
    rng.shuffle(web)
    label_chars = [0] * len(PROVENANCE)
    for r in web:
        for s, e, lab in r["spans"]:
            label_chars[lab] += e - s
        label_chars[0] += len(r["text"]) - sum(e - s for s, e, _ in r["spans"])
    bar.set_description("prose")
    rng, probs = random.Random(_seed(seed, "prose")), _only(_seed(seed, "prose-math"), split_of, "train")
    share = prose_math_share
    target, docs, size = PROSE_CHARS * sc["prose"] * (1 - share), [], 0
    for name in PROSE_MODULES if target > 0 else ():
        bar.update()
        for piece in _chunks(render_module_doc(name), rng.randint(1500, 4000)):
            if size < target:
                docs.append(piece)
                size += len(piece)
        if size >= target:
            break
    math_docs: list[str] = []
    while sum(map(len, math_docs)) < size * share / (1 - share):
        math_docs.append(_math_prose(rng, probs))
    docs += math_docs
    rng.shuffle(docs)
    bar.close()
    rows = {"hq_math": hq, "web_math": web, "prose": [{"text": t} for t in docs],
            "fewshot_eval": [{"family": p.family, "question": p.question, "answer": p.answer} for p in evals],
            "fewshot_exemplars": [{"family": p.family, "question": p.question, "solution": p.solution,
                                   "answer": p.answer} for p in exemplars.values()]}
    files = {}
    for key, name in FILE_NAMES.items():
        path = getattr(paths, key)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[key]))
        files[key] = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                      "documents": len(rows[key]), "chars": sum(len(r.get("text", "")) for r in rows[key])}
    total = max(1, sum(label_chars))
    write_json(paths.manifest, {
        "format_version": FORMAT_VERSION, **params, "scale": scale,
        "python_version": ".".join(map(str, sys.version_info[:3])), "files": files,
        "split_shares": SPLIT_SHARES, "splits": {"hq_math": _split_stats(hq), "web_math": _split_stats(web)},
        "provenance_labels": {str(k): v for k, v in PROVENANCE.items()},
        "noise_char_share": round(1 - label_chars[0] / total, 6),
        "near_domain_char_share": round(sum(label_chars[k] for k in NEAR_KINDS) / total, 6),
        "web_label_chars": {PROVENANCE[i]: c for i, c in enumerate(label_chars)},
        "leakage": leakage(paths.root), "families": list(FAMILIES)})
    return paths


def own_questions(corpora_dir: Path) -> set[str]:
    """Normalised questions of our own corpora (problem lines and the few-shot files): the external
    questions must not repeat them."""
    from .external import normalize_question as norm  # the form `exclude` is compared in

    out: set[str] = set()
    pat = re.compile(r"(?:Problem|Q): (.+)")
    for name in ("hq_math.jsonl", "web_math.jsonl", "fewshot_eval.jsonl", "fewshot_exemplars.jsonl"):
        path = corpora_dir / name
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "question" in row:
                    out.add(norm(row["question"]))
                out.update(norm(q) for q in pat.findall(row.get("text", "")))
    return out
