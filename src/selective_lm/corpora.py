"""Embedded default corpora: deterministic, offline stand-ins for the Rho-1 data.

:func:`build_default_corpora` writes into one directory:

* ``hq_math.jsonl`` - clean math documents (2-6 :func:`~selective_lm.mathgen.format_problem`
  blocks each); trains the reference model.
* ``web_math.jsonl`` - a noisy OpenWebMath-like corpus. Each row has ``text`` and
  ``spans``: sorted, non-overlapping ``[start, end, label]`` character ranges with
  label 1 (noise: menus, consent banners, markup/LaTeX debris, URLs, session ids,
  timetables, random-number tables, near-duplicate spam, forum chrome) or 2
  (off-topic prose); uncovered characters are label 0, math content drawn from the
  same generator as ``hq_math`` (another seed stream).
* ``prose.jsonl`` - general English-ish prose (plain-text pydoc pages of an allowlist
  of standard-library modules, plus ~5% simple math sentences) for the base model.
* ``fewshot_eval.jsonl`` - 400 held-out problems, stratified over families; their
  question strings occur in no training problem.
* ``fewshot_exemplars.jsonl`` - 8 prompt exemplars from the training stream.
* ``manifest.json`` - sizes, hashes and counts, written last; it doubles as a cache key.

Everything derives from ``random.Random`` seeded through SHA-256, so the same seed,
scale and Python minor version give byte-identical files.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .files import UserError, atomic_write_text, read_json, sha256_file, write_json
from .mathgen import FAMILIES, Problem, format_problem, iter_problems

FORMAT_VERSION = 1
PROVENANCE = {0: "content", 1: "noise", 2: "offtopic"}
HQ_DOCS = 3400            # documents at scale=1 (~1.5M characters)
WEB_DOCS = 2300           # documents at scale=1 (~5M characters)
PROSE_CHARS = 3_000_000   # character target at scale=1
PROSE_MATH_SHARE = 0.05
N_EVAL = 400
N_EXEMPLARS = 8
FILE_NAMES = {"hq_math": "hq_math.jsonl", "web_math": "web_math.jsonl", "prose": "prose.jsonl",
              "fewshot_eval": "fewshot_eval.jsonl", "fewshot_exemplars": "fewshot_exemplars.jsonl"}

_FORBIDDEN = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "site", "readline",
              "rlcompleter", "webbrowser", "ensurepip", "pip", "sysconfig", "platform"}
PROSE_MODULES: tuple[str, ...] = tuple("""
string textwrap collections itertools functools operator math cmath decimal fractions random
statistics datetime calendar heapq bisect array copy pprint reprlib enum numbers dataclasses typing
abc contextlib json csv re difflib codecs base64 binascii hashlib hmac secrets struct zlib shutil
pathlib posixpath glob fnmatch tempfile io argparse logging getopt optparse configparser shlex html
html.parser xml.etree.ElementTree uuid ipaddress queue sched threading concurrent.futures subprocess
socket selectors asyncio inspect dis ast tokenize token keyword traceback warnings weakref types
graphlib zoneinfo pickle shelve dbm plistlib tomllib wave colorsys gettext timeit cProfile pstats
doctest unittest filecmp fileinput linecache netrc quopri stringprep codeop code pickletools signal
mmap select errno stat importlib pkgutil modulefinder runpy pyclbr compileall py_compile
logging.handlers logging.config json.decoder json.encoder collections.abc multiprocessing.pool os
unicodedata locale builtins xml.dom.minidom xml.sax.saxutils ssl bdb pdb tracemalloc
importlib.metadata importlib.resources ctypes unittest.mock zipimport symtable contextvars
""".split())
OFFTOPIC_MODULES: tuple[str, ...] = tuple("""
email.message email.headerregistry email.utils email.parser email.policy email.charset
email.mime.text http.client http.server http.cookies http.cookiejar smtplib imaplib poplib ftplib
socketserver xmlrpc.client urllib.request urllib.parse urllib.robotparser wsgiref.simple_server
wsgiref.handlers wsgiref.headers wsgiref.util mimetypes mailbox sqlite3 tarfile zipfile gzip bz2 lzma
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


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _seed(seed: int, stream: str) -> int:
    return int.from_bytes(hashlib.sha256(f"selective-lm/{seed}/{stream}".encode()).digest()[:8], "big")


# ------------------------------------------------------------- stdlib prose
_KEEP_SECTIONS = {"NAME", "DESCRIPTION", "CLASSES", "FUNCTIONS"}


def render_module_doc(name: str) -> str:
    """Plain-text pydoc page of an allowlisted module, scrubbed to be deterministic."""
    if name.split(".")[0] in _FORBIDDEN or name not in PROSE_MODULES + OFFTOPIC_MODULES:
        raise ValueError(f"module {name!r} is not on an allowlist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
    raw = re.sub(".\b", "", raw)  # overstrike bold, in case a renderer adds it
    out, keep = [], True
    for line in raw.splitlines():
        line = line.rstrip()
        if line and not line[0].isspace():  # a section header (or the title line)
            keep = line in _KEEP_SECTIONS or line.startswith("Python Library Documentation")
        # drop attribute lines whose repr may hold sets, dicts or object addresses
        if keep and not re.match(r"^[ |]*[\w.]+ = .*(?:\{|set\(|<)", line):
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
    if "".join(cur).strip():
        pieces.append("\n".join(cur).strip("\n") + "\n")
    return [p for p in pieces if len(p.strip(" |\n")) > 40]


def _piece_stream(modules: tuple[str, ...], target: int) -> Iterator[str]:
    seen: list[str] = []
    for name in modules:
        for piece in _chunks(render_module_doc(name), target):
            seen.append(piece)
            yield piece
    while True:  # off-topic sections may recur across web pages once the pool is used up
        yield from seen


# ------------------------------------------------------------- noise material
_NAV = ("Home | Forums | Questions | Tags | Users | Badges | Ask Question | Log in | Sign up",
        "Skip to main content\nMenu  Home  Topics  Algebra  Calculus  Geometry  Statistics  Search",
        "MathHelpBoards > Pre-University Math > Pre-Algebra and Algebra > Thread Tools > Display Modes",
        "Home » Homework Help » Arithmetic » Previous topic :: Next topic",
        "Main navigation: About | Courses | Worksheets | Teachers | Parents | Contact us | FAQ",
        "You are here: Home / Resources / Practice Problems / Print this page / Email this page")
_CONSENT = ("We use cookies to improve your experience on our site. By continuing to browse you agree "
            "to our use of cookies. Accept all | Manage preferences | Learn more",
            "This website stores cookies on your computer. These cookies are used to collect information "
            "about how you interact with our website and allow us to remember you. [Accept] [Decline]",
            "Subscribe to our newsletter! Get weekly practice problems delivered to your inbox. "
            "Enter your email address: ______ [Subscribe] No spam, unsubscribe at any time.",
            "Your privacy matters. We and our 142 partners store and access information on your device "
            "for personalised ads and content, ad and content measurement. I Agree | Show Purposes",
            "Please disable your ad blocker to support our free content. Whitelist us | How to whitelist")
_FOOTER = ("© {y} MathHelpBoards. All rights reserved. Privacy Policy | Terms of Service | Contact",
           "Copyright {y} - Powered by vBulletin® Version 4.2.{v} - All times are GMT -5. The time now is {t}.",
           "Terms of Use | Privacy | Sitemap | © 2006-{y} Homework Forum Ltd. Registered in England no. 0{v}51{v}",
           "Share this: Twitter Facebook Reddit Email Print | Like this: Like Loading... | Related posts",
           "Powered by WordPress | Theme by Themeisle | Back to top ↑ | © {y}")
_SPAM = ("Get {p}% OFF all graphing calculators this week only! Free shipping on orders over ${n}. "
         "Visit {site} now and use code {code} at checkout.",
         "Struggling with homework? Our certified tutors are online 24/7. First session FREE - "
         "join {n},000+ happy students at {site} today!",
         "Make ${n} a day working from home!!! No experience needed. Click here to learn the secret "
         "that banks don't want you to know: {site}",
         "Best essay writing service {y}. Plagiarism-free papers from ${p}.99 per page. Order now at {site} "
         "and get a {p}% discount with promo code {code}.",
         "Hot singles in your area are waiting to chat. Sign up free at {site} - {n} new members today.",
         "Download the free Math Solver app - scan any problem with your camera and get instant answers! "
         "Rated 4.{p} stars by {n},000 users.",
         "Cheap replica watches, bags and sunglasses - up to {p}% off retail. Worldwide delivery. {site}",
         "Buy followers and likes for Instagram, TikTok and YouTube. {n}k real followers from ${p}. {site}")
_DOMAINS = ("mathhelpboards.com", "www.homework-forum.net", "cdn.static-assets.io", "ads.doubleclick.net",
            "www.google-analytics.com", "i.imgur.com", "mathforum.example.org", "tutor-zone.biz",
            "web.archive.org", "pagead2.googlesyndication.com", "www.freemathhelp.com", "s3.amazonaws.com")
_WORDS = ("thread", "topic", "post", "showthread", "viewtopic", "question", "index", "forum", "tag",
          "algebra", "fractions", "homework", "help", "page", "print", "archive", "member", "profile")
_MARKUP = ('<div class="post-body">', "</div>", '<div class="entry-content clearfix">', "<br />", "&nbsp;",
           "&nbsp;&nbsp;", "<p>", "</p>", '<span class="math-container">', "</span>", "&lt;/td&gt;", "&amp;",
           '<td align="center" width="{n}%">', "</td></tr>", "<!-- google_ad_section_start -->",
           '<img src="/images/smilies/smile.gif" border="0" alt="" />', "[/quote]", "[quote={u}]",
           "Ã¢â‚¬â„¢", "â€œ", "Â ", "</li><li>", '<a href="#top">', "</a>", "&quot;", "&#8217;")
_LATEX = (r"\begin{align*}", r"\end{align*}", "}}", "{{", r"\\", "&=", r"\frac{", r"\left(", r"\right)",
          "$$", r"\mathrm{d}", r"\label{eq:{n}}", r"\nonumber", r"\quad", r"\text{", r"\hline", r"\[",
          r"\]", r"\begin{array}{|c|c|}", r"\end{array}", r"\displaystyle", r"\cdot", "^{", "_{")
_INLINE = ("&nbsp;", "<br />", " &nbsp;", "<br>", "  ", "</p>", " \\\\")
_HEX = "0123456789abcdef"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _rand(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choices(alphabet, k=rng.randint(lo, hi)))


def _user(rng: random.Random) -> str:
    return rng.choice(("mathfan", "guest", "sarah_k", "John", "calc_kid", "Wizard", "tutorbot", "anon")) + str(
        rng.randint(1, 9999))


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2006, 2023)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"


def _url(rng: random.Random) -> str:
    path = "/".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    query = "&".join(f"{rng.choice(('sid', 'p', 't', 'utm_source', 'ref', 'session', 'page'))}="
                     f"{_rand(rng, _HEX if rng.random() < 0.5 else _ALNUM, 2, 32)}" for _ in range(rng.randint(0, 3)))
    return f"https://{rng.choice(_DOMAINS)}/{path}-{rng.randint(1, 999999)}" + (f"?{query}" if query else "")


_SLOTS = {"y": lambda r: str(r.randint(2008, 2024)), "v": lambda r: str(r.randint(1, 9)),
          "t": lambda r: _date(r)[11:], "n": lambda r: str(r.randint(2, 99)), "u": _user,
          "p": lambda r: str(r.randint(10, 80)), "site": lambda r: r.choice(_DOMAINS),
          "code": lambda r: r.choice(("SAVE20", "MATH50", "FREE", "STUDENT"))}


def _fill(rng: random.Random, t: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _SLOTS[m.group(1)](rng) if m.group(1) in _SLOTS else m.group(0), t)


def _noise(rng: random.Random, spam_seen: list[str]) -> str:
    """One block of noise, ending with a newline."""
    k = rng.choices(range(10), weights=(12, 10, 9, 12, 10, 10, 8, 6, 9, 8))[0]
    if k == 0:
        return rng.choice(_NAV + _CONSENT) + "\n"
    if k == 1:
        return _fill(rng, rng.choice(_FOOTER)) + "\n"
    if k == 2:
        if spam_seen and rng.random() < 0.5:
            return rng.choice(spam_seen)  # verbatim repeat within the page
        spam_seen.append(_fill(rng, rng.choice(_SPAM)) + "\n")
        return spam_seen[-1]
    if k == 3:
        return "".join(_fill(rng, rng.choice(_MARKUP)) for _ in range(rng.randint(2, 8))) + "\n"
    if k == 4:
        return " ".join(_fill(rng, rng.choice(_LATEX)) for _ in range(rng.randint(2, 10))) + "\n"
    if k == 5:
        return "\n".join(_url(rng) for _ in range(rng.randint(1, 4))) + "\n"
    if k == 6:
        return rng.choice((
            lambda: f"sessionid={_rand(rng, _HEX, 32, 32)}; csrftoken={_rand(rng, _ALNUM, 32, 64)}",
            lambda: f"Post ID: {_rand(rng, _HEX, 8, 8)}-{_rand(rng, _HEX, 4, 4)}-{_rand(rng, _HEX, 4, 4)}-{_rand(rng, _HEX, 12, 12)}",
            lambda: f"data:image/png;base64,{_rand(rng, _ALNUM + '+/', 60, 240)}==",
            lambda: f"_ga=GA1.2.{rng.randint(10**8, 10**10)}.{rng.randint(10**9, 2 * 10**9)}; __cfduid={_rand(rng, _HEX, 43, 43)}",
            lambda: f"Ref: {_rand(rng, _ALNUM, 6, 14)} | Token: {_rand(rng, _ALNUM, 20, 40)}"))() + "\n"
    if k == 7:
        stops = rng.sample(("Central Station", "Market Square", "University", "Hospital", "Airport",
                            "Park Road", "Old Town", "Harbour", "Library", "Stadium"), rng.randint(3, 6))
        start = rng.randint(300, 500)
        rows = [f"Line {rng.randint(1, 99)} timetable (Mon-Fri)"]
        for i, s in enumerate(stops):
            t0 = start + 4 * i + rng.randint(0, 3)
            rows.append(f"{s:<16}" + " ".join(f"{(t0 + j * 30) // 60:02d}:{(t0 + j * 30) % 60:02d}"
                                               for j in range(rng.randint(4, 9))))
        return "\n".join(rows) + "\n"
    if k == 8:
        cols = rng.randint(3, 7)
        rows = ["| " + " | ".join(rng.choice(("id", "n", "x", "y", "score", "total", "rank", "%", "year"))
                                  for _ in range(cols)) + " |"]
        for _ in range(rng.randint(2, 9)):
            rows.append("| " + " | ".join(str(rng.randint(0, 9999)) if rng.random() < 0.6
                                          else f"{rng.uniform(0, 100):.{rng.randint(1, 3)}f}" for _ in range(cols)) + " |")
        return "\n".join(rows) + "\n"
    return rng.choice((
        lambda: f"var _gaq = _gaq || []; _gaq.push(['_setAccount', 'UA-{rng.randint(10**6, 10**7)}-{rng.randint(1, 9)}']); _gaq.push(['_trackPageview']);",
        lambda: f".post-body{{margin:{rng.randint(0, 20)}px auto;font-size:{rng.randint(10, 18)}px;color:#{_rand(rng, _HEX, 6, 6)}}}",
        lambda: f"{rng.randint(0, 400)} views · {rng.randint(0, 40)} replies · last post by {_user(rng)} {_date(rng)}",
        lambda: f"window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments)}}gtag('config','G-{_rand(rng, _ALNUM.upper()[:36], 10, 10)}');"))() + "\n"


# ------------------------------------------------------------------ documents
class _Doc:
    """Accumulates (text, label) parts and turns them into text + merged spans."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, int]] = []

    def add(self, text: str, label: int) -> None:
        if text:
            self.parts.append((text, label))

    def chars(self, label: int) -> int:
        return sum(len(t) for t, lab in self.parts if lab == label)

    def finish(self) -> tuple[str, list[list[int]]]:
        spans: list[list[int]] = []
        pos = 0
        for t, lab in self.parts:
            if lab:
                if spans and spans[-1][1] == pos and spans[-1][2] == lab:
                    spans[-1][1] = pos + len(t)
                else:
                    spans.append([pos, pos + len(t), lab])
            pos += len(t)
        return "".join(t for t, _ in self.parts), spans


def _wrap_problem(rng: random.Random, p: Problem, clean: bool) -> list[tuple[str, int]]:
    """A problem as it appears on a web page: content (0) plus wrapper chrome (1)."""
    style = 0.0 if clean else rng.random()
    if style < 0.55 or style >= 0.9:
        parts: list[tuple[str, int]] = [('<div class="post-body">\n', 1)] if style >= 0.9 else []
        for line in format_problem(p).splitlines():
            parts.append((line, 0))
            if not clean and rng.random() < 0.12:
                parts.append((rng.choice(_INLINE), 1))
            parts.append(("\n", 0))
        return parts + ([("</div>\n", 1)] if style >= 0.9 else [])
    if style < 0.7:
        return [("Q: ", 1), (p.question + "\n", 0), ("A: ", 1), (p.solution + "\n", 0), (f"Answer: {p.answer}\n", 0)]
    return [(f"Posted by {_user(rng)} on {_date(rng)}\n", 1), (p.question + "\n", 0),
            (f"Reply #{rng.randint(1, 12)} from {_user(rng)}:\n", 1), (p.solution + "\n", 0),
            (f"Answer: {p.answer}\n", 0), (rng.choice(("Like · Reply · Report", "Quote | Thanks | Share",
                                                       "Was this helpful? Yes / No")) + "\n", 1)]


# junk-ratio profiles: (weight, low, high) of the share of noise + off-topic characters
_PROFILES = ((20, 0.0, 0.06), (26, 0.15, 0.35), (28, 0.40, 0.60), (16, 0.65, 0.80), (10, 0.82, 0.92))


def _web_doc(rng: random.Random, probs: Iterator[Problem], offtopic: Iterator[str]) -> _Doc:
    d = _Doc()
    if rng.random() < 0.05:  # a wholly off-topic page, perhaps with site chrome
        if rng.random() < 0.6:
            d.add(rng.choice(_NAV) + "\n", 1)
        for _ in range(rng.randint(1, 3)):
            d.add(next(offtopic) + "\n", 2)
        return d
    prof = rng.choices(_PROFILES, weights=[w for w, _, _ in _PROFILES])[0]
    ratio = rng.uniform(prof[1], prof[2])
    blocks = [_wrap_problem(rng, next(probs), ratio < 0.1) for _ in range(rng.randint(1, 3) if ratio > 0.8 else rng.randint(2, 9))]
    content = sum(len(t) for b in blocks for t, lab in b if lab == 0)
    budget = int(content * ratio / (1.0 - ratio)) - sum(len(t) for b in blocks for t, lab in b if lab)
    slots: list[list[tuple[str, int]]] = [[] for _ in range(len(blocks) + 1)]
    used, spam_seen = 0, []
    if budget >= 80 and rng.random() < 0.7:
        slots[0].append((rng.choice(_NAV) + "\n", 1))
        used += len(slots[0][0][0])
    if budget > 1000 and rng.random() < 0.5:
        share = budget * rng.uniform(0.15, 0.5)
        while used < share:
            piece = next(offtopic) + "\n"
            slots[rng.randrange(len(slots))].append((piece, 2))
            used += len(piece)
    while used < budget:
        t = _noise(rng, spam_seen)
        if used + len(t) > 1.5 * budget + 30:
            break
        slots[rng.randrange(len(slots))].append((t, 1))
        used += len(t)
    for i, slot in enumerate(slots):
        for t, lab in slot:
            d.add(t, lab)
        if i < len(blocks):
            for t, lab in blocks[i]:
                d.add(t, lab)
            d.add("\n", 0)
    return d


_FACTS = ("The sum of {a} and {b} is {s}.", "{a} plus {b} equals {s}.", "{a} times {b} is {p}.",
          "The product of {a} and {b} is {p}.", "{s} minus {b} is {a}.", "If you have {a} coins and find {b} more, "
          "you have {s} coins.", "Half of {e} is {a}.", "{p} divided by {b} is {a}.", "Twice {a} is {e}.")


def _math_prose(rng: random.Random, probs: Iterator[Problem]) -> str:
    paras = []
    for _ in range(rng.randint(2, 5)):
        sents = []
        for _ in range(rng.randint(2, 4)):
            if rng.random() < 0.5:
                p = next(probs)
                sents.append(f"{p.question} {p.solution}")
            else:
                a, b = rng.randint(1, 20), rng.randint(1, 12)
                sents.append(rng.choice(_FACTS).format(a=a, b=b, s=a + b, p=a * b, e=2 * a))
        paras.append(" ".join(sents))
    return "\n\n".join(paras) + "\n"


# ------------------------------------------------------------------- building
def _filtered(seed: int, banned: set[str]) -> Iterator[Problem]:
    return (p for p in iter_problems(seed) if p.question not in banned)


def _eval_set(seed: int) -> list[Problem]:
    quota = {f: N_EVAL // len(FAMILIES) + (i < N_EVAL % len(FAMILIES)) for i, f in enumerate(FAMILIES)}
    out: list[Problem] = []
    seen: set[str] = set()
    for p in iter_problems(_seed(seed, "eval")):
        if quota[p.family] and p.question not in seen:
            quota[p.family] -= 1
            seen.add(p.question)
            out.append(p)
            if len(out) == N_EVAL:
                return sorted(out, key=lambda q: FAMILIES.index(q.family))
    raise AssertionError("unreachable")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _cached(paths: CorporaPaths, seed: int, scale: float) -> bool:
    try:
        m = read_json(paths.manifest)
        ok = (m["format_version"] == FORMAT_VERSION and m["seed"] == seed and m["scale"] == scale
              and m["python_version"].split(".")[:2] == [str(sys.version_info[0]), str(sys.version_info[1])])
        return ok and all((paths.root / m["files"][k]["path"]).stat().st_size == m["files"][k]["bytes"]
                          for k in FILE_NAMES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_default_corpora(out_dir: str | Path, *, seed: int = 0, scale: float = 1.0, overwrite: bool = False,
                          progress: bool = True) -> CorporaPaths:
    """Write the default corpora into ``out_dir`` (or reuse them; see module docstring)."""
    from tqdm import tqdm

    if not isinstance(scale, (int, float)) or not 0 < scale <= 100:
        raise UserError(f"scale must be a number in (0, 100], got {scale!r}")
    scale, seed = float(scale), int(seed)
    paths = CorporaPaths.at(out_dir)
    if not overwrite and _cached(paths, seed, scale):
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.unlink(missing_ok=True)  # files below are stale until the new manifest lands

    n_hq, n_web = max(2, round(HQ_DOCS * scale)), max(2, round(WEB_DOCS * scale))
    bar = tqdm(total=n_hq + n_web + len(PROSE_MODULES), desc="corpora", unit="doc", disable=not progress)
    evals = _eval_set(seed)
    banned = {p.question for p in evals}
    exemplar_pool = _filtered(_seed(seed, "hq"), banned)
    exemplars: dict[str, Problem] = {}
    while len(exemplars) < N_EXEMPLARS:
        p = next(exemplar_pool)
        if p.family not in exemplars and len(format_problem(p)) <= 130:
            exemplars[p.family] = p

    bar.set_description("hq_math")
    rng, probs = random.Random(_seed(seed, "hq-docs")), _filtered(_seed(seed, "hq"), banned)
    hq_rows = []
    for _ in range(n_hq):
        hq_rows.append({"text": "\n".join(format_problem(next(probs)) for _ in range(rng.randint(2, 6)))})
        bar.update()

    bar.set_description("web_math")
    rng, probs = random.Random(_seed(seed, "web-docs")), _filtered(_seed(seed, "web"), banned)
    offtopic = _piece_stream(OFFTOPIC_MODULES, 700)
    web_rows, label_chars = [], [0, 0, 0]
    for _ in range(n_web):
        text, spans = _web_doc(rng, probs, offtopic).finish()
        web_rows.append({"text": text, "spans": spans})
        for s, e, lab in spans:
            label_chars[lab] += e - s
        label_chars[0] += len(text) - sum(e - s for s, e, _ in spans)
        bar.update()

    bar.set_description("prose")
    rng, probs = random.Random(_seed(seed, "prose")), _filtered(_seed(seed, "prose-math"), banned)
    target = PROSE_CHARS * scale * (1 - PROSE_MATH_SHARE)
    docs: list[str] = []
    size = 0
    for name in PROSE_MODULES:
        bar.update()
        for piece in _chunks(render_module_doc(name), rng.randint(1500, 4000)):
            if size < target:
                docs.append(piece)
                size += len(piece)
        if size >= target:
            break
    math_size = 0
    while math_size < size * PROSE_MATH_SHARE / (1 - PROSE_MATH_SHARE):
        docs.append(_math_prose(rng, probs))
        math_size += len(docs[-1])
    rng.shuffle(docs)
    bar.close()

    rows = {"hq_math": hq_rows, "web_math": web_rows, "prose": [{"text": t} for t in docs],
            "fewshot_eval": [{"family": p.family, "question": p.question, "answer": p.answer} for p in evals],
            "fewshot_exemplars": [{"family": p.family, "question": p.question, "solution": p.solution,
                                   "answer": p.answer} for p in exemplars.values()]}
    files = {}
    for key, name in FILE_NAMES.items():
        path = getattr(paths, key)
        atomic_write_text(path, _jsonl(rows[key]))
        chars = sum(len(r.get("text", "")) for r in rows[key])
        files[key] = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                      "documents": len(rows[key]), "chars": chars}
    total = sum(label_chars)
    write_json(paths.manifest, {
        "format_version": FORMAT_VERSION, "seed": seed, "scale": scale,
        "python_version": ".".join(map(str, sys.version_info[:3])), "files": files,
        "noise_char_share": round((label_chars[1] + label_chars[2]) / max(1, total), 6),
        "web_label_chars": {PROVENANCE[i]: c for i, c in enumerate(label_chars)},
        "families": list(FAMILIES)})
    return paths
