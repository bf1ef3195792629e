"""Embedded default corpora: deterministic, offline stand-ins for the Rho-1 data.

``hq_math.jsonl`` (clean problems: trains the reference), ``web_math.jsonl`` (noisy web-math
pages with ``spans`` [start, end, label] of noise = 1 and off-topic prose = 2; other characters
are math content from the same generator), ``prose.jsonl`` (plain-text pydoc pages of
allowlisted stdlib modules plus ~5% simple math: the base model's general diet),
``fewshot_eval.jsonl`` (held-out questions, in no training problem), ``fewshot_exemplars.jsonl``
and, last, ``manifest.json`` (sizes, hashes, counts; also the cache key). All randomness comes
from ``random.Random`` seeded through SHA-256: the same seed, scale and Python minor version
give byte-identical files.
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
from collections.abc import Iterator

from ..files import UserError, atomic_write_text, read_json, sha256_file, write_json
from .mathgen import FAMILIES, Problem, format_problem, iter_problems

FORMAT_VERSION = 1
PROVENANCE = {0: "content", 1: "noise", 2: "offtopic"}
HQ_DOCS = 3400            # documents at scale=1 (~1.5M characters)
WEB_DOCS = 4450           # documents at scale=1 (~5M characters)
PROSE_CHARS = 3_000_000   # character target at scale=1
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
         "Bitcoin doubled my savings in {n} days!!! Join the free trading webinar at {site} - spots are limited.",
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
_REACTIONS = ("Like · Reply · Report", "Quote | Thanks | Share", "Was this helpful? Yes / No")
_INLINE = ("&nbsp;", "<br />", " &nbsp;", "<br>", "  ", "</p>", " \\\\")
_TOKENS = ("sessionid={h32}; csrftoken={a40}", "Post ID: {h8}-{h4}-{h4}-{h12}", "data:image/png;base64,{b64}==",
           "_ga=GA1.2.{big}.{big}; __cfduid={h43}", "Ref: {a10} | Token: {a32}", "{n} views · {n} replies · "
           "last post by {u} {date}", "var _gaq = _gaq || []; _gaq.push(['_setAccount', 'UA-{big}-{v}']); "
           "_gaq.push(['_trackPageview']);", ".post-body{margin:{n}px auto;font-size:1{v}px;color:#{h6}}",
           "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}gtag('config','G-{U10}');")
_STOPS = ("Central Station", "Market Square", "University", "Hospital", "Airport", "Park Road", "Old Town",
          "Harbour", "Library", "Stadium")
_HEX, _ALNUM = "0123456789abcdef", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ALPHABETS = {"h": _HEX, "a": _ALNUM, "U": _ALNUM[:26] + _HEX[:10]}


def _user(rng: random.Random) -> str:
    return rng.choice(("mathfan", "guest", "sarah_k", "John", "calc_kid", "Wizard", "tutorbot", "anon")) + str(
        rng.randint(1, 9999))

def _date(rng: random.Random) -> str:
    return (f"{rng.randint(2006, 2023)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}")

def _url(rng: random.Random) -> str:
    path = "/".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    query = "&".join(f"{rng.choice(('sid', 'p', 't', 'utm_source', 'ref', 'session', 'page'))}="
                     + _fill(rng, rng.choice(("{h8}", "{h32}", "{a12}", "{n}"))) for _ in range(rng.randint(0, 3)))
    return f"https://{rng.choice(_DOMAINS)}/{path}-{rng.randint(1, 999999)}" + (f"?{query}" if query else "")

_SLOTS = {"y": lambda r: str(r.randint(2008, 2024)), "v": lambda r: str(r.randint(1, 9)),
          "t": lambda r: _date(r)[11:], "n": lambda r: str(r.randint(2, 99)), "u": _user, "date": _date,
          "p": lambda r: str(r.randint(10, 80)), "site": lambda r: r.choice(_DOMAINS),
          "big": lambda r: str(r.randint(10**6, 10**10)), "b64": lambda r: _fill(r, f"{{a{r.randint(60, 240)}}}"),
          "code": lambda r: r.choice(("SAVE20", "MATH50", "FREE", "STUDENT"))}

def _slot(rng: random.Random, key: str, raw: str) -> str:
    if key in _SLOTS:
        return _SLOTS[key](rng)
    if key[0] in _ALPHABETS and key[1:].isdigit():  # {h32}: 32 random hex digits, {a12}: alphanumerics
        return "".join(rng.choices(_ALPHABETS[key[0]], k=int(key[1:])))
    return raw

def _fill(rng: random.Random, template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _slot(rng, m.group(1), m.group(0)), template)


def _noise(rng: random.Random, spam_seen: list[str]) -> str:
    """One block of noise, ending with a newline."""
    k = rng.choices(range(9), weights=(12, 10, 9, 12, 10, 10, 16, 6, 9))[0]
    if k == 2 and spam_seen and rng.random() < 0.5:
        return rng.choice(spam_seen)  # verbatim repeat within the page
    if k < 3:
        out = _fill(rng, rng.choice((_NAV + _CONSENT, _FOOTER, _SPAM)[k])) + "\n"
        spam_seen += [out] if k == 2 else []
        return out
    if k in (3, 4):
        pieces = [_fill(rng, rng.choice(_MARKUP if k == 3 else _LATEX)) for _ in range(rng.randint(2, 9))]
        return ("" if k == 3 else " ").join(pieces) + "\n"
    if k == 5:
        return "\n".join(_url(rng) for _ in range(rng.randint(1, 4))) + "\n"
    if k == 6:
        return _fill(rng, rng.choice(_TOKENS)) + "\n"
    if k == 7:
        rows, start = [f"Line {rng.randint(1, 99)} timetable (Mon-Fri)"], rng.randint(300, 500)
        for i, stop in enumerate(rng.sample(_STOPS, rng.randint(3, 6))):
            t0 = start + 4 * i + rng.randint(0, 3)
            rows.append(f"{stop:<16}" + " ".join(f"{(t0 + j * 30) // 60:02d}:{(t0 + j * 30) % 60:02d}"
                                                  for j in range(rng.randint(4, 9))))
        return "\n".join(rows) + "\n"
    cols = rng.randint(3, 7)
    rows = ["| " + " | ".join(rng.choice(("id", "n", "x", "y", "score", "total", "rank", "%", "year"))
                              for _ in range(cols)) + " |"]
    for _ in range(rng.randint(2, 9)):
        rows.append("| " + " | ".join(str(rng.randint(0, 9999)) if rng.random() < 0.6 else
                                      f"{rng.uniform(0, 100):.{rng.randint(1, 3)}f}" for _ in range(cols)) + " |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------ documents
Parts = list[tuple[str, int]]  # (text, label) pieces of one document

def _finish(parts: Parts) -> tuple[str, list[list[int]]]:
    """Join ``parts`` into text and merged, sorted ``[start, end, label]`` spans of labels 1 and 2."""
    spans, pos = [], 0
    for t, lab in parts:
        if lab and spans and spans[-1][1] == pos and spans[-1][2] == lab:
            spans[-1][1] = pos + len(t)
        elif lab:
            spans.append([pos, pos + len(t), lab])
        pos += len(t)
    return "".join(t for t, _ in parts), spans


def _wrap_problem(rng: random.Random, p: Problem, clean: bool) -> Parts:
    """A problem as it appears on a web page: content (0) plus wrapper chrome (1)."""
    style = 0.0 if clean else rng.random()
    if style < 0.55 or style >= 0.9:  # canonical form, maybe in a div, maybe with inline debris
        parts: Parts = [('<div class="post-body">\n', 1)] if style >= 0.9 else []
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
            (f"Answer: {p.answer}\n", 0), (rng.choice(_REACTIONS) + "\n", 1)]


# junk-ratio profiles: (weight, low, high) of the share of noise + off-topic characters in a page
_PROFILES = ((24, 0.0, 0.06), (30, 0.15, 0.35), (26, 0.40, 0.60), (12, 0.65, 0.80), (8, 0.80, 0.90))


def _web_doc(rng: random.Random, probs: Iterator[Problem], offtopic: Iterator[str]) -> Parts:
    if rng.random() < 0.04:  # a wholly off-topic page, perhaps with site chrome
        nav = [(rng.choice(_NAV) + "\n", 1)] if rng.random() < 0.6 else []
        return nav + [(next(offtopic) + "\n", 2) for _ in range(rng.randint(1, 3))]
    ratio = rng.uniform(*rng.choices([(lo, hi) for _, lo, hi in _PROFILES], weights=[w for w, _, _ in _PROFILES])[0])
    n = rng.randint(1, 3) if ratio > 0.8 else rng.randint(2, 9)
    blocks = [_wrap_problem(rng, next(probs), ratio < 0.1) for _ in range(n)]
    content = sum(len(t) for b in blocks for t, lab in b if lab == 0)
    budget = int(content * ratio / (1.0 - ratio)) - sum(len(t) for b in blocks for t, lab in b if lab)
    slots: list[Parts] = [[] for _ in range(n + 1)]  # before, between and after the problems
    used, spam_seen = 0, []
    if budget >= 80 and rng.random() < 0.7:
        slots[0].append((rng.choice(_NAV) + "\n", 1))
        used += len(slots[0][0][0])
    if budget > 1000 and rng.random() < 0.5:
        share = budget * rng.uniform(0.15, 0.5)
        while used < share:
            piece = next(offtopic) + "\n"
            slots[rng.randrange(n + 1)].append((piece, 2))
            used += len(piece)
    while used < budget:
        t = _noise(rng, spam_seen)
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
def _filtered(seed: int, banned: set[str]) -> Iterator[Problem]:
    return (p for p in iter_problems(seed) if p.question not in banned)

def _eval_set(seed: int) -> list[Problem]:
    """N_EVAL distinct questions, stratified over families (generation order within a family)."""
    quota = {f: N_EVAL // len(FAMILIES) + (i < N_EVAL % len(FAMILIES)) for i, f in enumerate(FAMILIES)}
    out: dict[str, Problem] = {}
    for p in iter_problems(_seed(seed, "eval")):
        if quota[p.family] and p.question not in out:
            quota[p.family] -= 1
            out[p.question] = p
            if len(out) == N_EVAL:
                return sorted(out.values(), key=lambda q: FAMILIES.index(q.family))
    raise AssertionError("unreachable")

def is_cached(out_dir: str | Path, seed: int, scale: float) -> bool:
    """Whether ``out_dir`` holds complete corpora for this seed, scale, format and Python version."""
    paths = CorporaPaths.at(out_dir)
    try:
        m = read_json(paths.manifest)
        same = (m["format_version"], m["seed"], m["scale"], m["python_version"].split(".")[:2]) == (
            FORMAT_VERSION, seed, scale, [str(v) for v in sys.version_info[:2]])
        return same and all((paths.root / m["files"][k]["path"]).stat().st_size == m["files"][k]["bytes"]
                            for k in FILE_NAMES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_default_corpora(out_dir: str | Path, *, seed: int = 0, scale: float = 1.0, overwrite: bool = False,
                          progress: bool = True) -> CorporaPaths:
    """Write the default corpora into ``out_dir``, or return the cached ones (see the module docstring)."""
    from ..runtime import progress as progress_bar

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 100:
        raise UserError(f"scale must be a number in (0, 100], got {scale!r}")
    scale, seed = float(scale), int(seed)
    paths = CorporaPaths.at(out_dir)
    if not overwrite and is_cached(out_dir, seed, scale):
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.unlink(missing_ok=True)  # the files below are stale until the new manifest lands
    n_hq, n_web = max(2, round(HQ_DOCS * scale)), max(2, round(WEB_DOCS * scale))
    bar = progress_bar(total=n_hq + n_web + len(PROSE_MODULES), desc="corpora", unit="doc", enabled=progress)
    evals = _eval_set(seed)
    banned = {p.question for p in evals}
    exemplars: dict[str, Problem] = {}  # the first short problem of 8 families in the hq stream
    for p in _filtered(_seed(seed, "hq"), banned):
        if p.family not in exemplars and len(format_problem(p)) <= 130:
            exemplars[p.family] = p
        if len(exemplars) == N_EXEMPLARS:
            break
    bar.set_description("hq_math")
    rng, probs = random.Random(_seed(seed, "hq-docs")), _filtered(_seed(seed, "hq"), banned)
    hq = []
    for _ in range(n_hq):
        hq.append({"text": "\n".join(format_problem(next(probs)) for _ in range(rng.randint(2, 6)))})
        bar.update()
    bar.set_description("web_math")
    rng, probs = random.Random(_seed(seed, "web-docs")), _filtered(_seed(seed, "web"), banned)
    offtopic, web, label_chars = _piece_stream(OFFTOPIC_MODULES, 700), [], [0, 0, 0]
    for _ in range(n_web):
        text, spans = _finish(_web_doc(rng, probs, offtopic))
        web.append({"text": text, "spans": spans})
        for s, e, lab in spans:
            label_chars[lab] += e - s
        label_chars[0] += len(text) - sum(e - s for s, e, _ in spans)
        bar.update()
    bar.set_description("prose")
    rng, probs = random.Random(_seed(seed, "prose")), _filtered(_seed(seed, "prose-math"), banned)
    target, docs, size = PROSE_CHARS * scale * (1 - PROSE_MATH_SHARE), [], 0
    for name in PROSE_MODULES:
        bar.update()
        for piece in _chunks(render_module_doc(name), rng.randint(1500, 4000)):
            if size < target:
                docs.append(piece)
                size += len(piece)
        if size >= target:
            break
    math_docs: list[str] = []
    while sum(map(len, math_docs)) < size * PROSE_MATH_SHARE / (1 - PROSE_MATH_SHARE):
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
    write_json(paths.manifest, {
        "format_version": FORMAT_VERSION, "seed": seed, "scale": scale,
        "python_version": ".".join(map(str, sys.version_info[:3])), "files": files,
        "noise_char_share": round((label_chars[1] + label_chars[2]) / max(1, sum(label_chars)), 6),
        "web_label_chars": {PROVENANCE[i]: c for i, c in enumerate(label_chars)}, "families": list(FAMILIES)})
    return paths
