"""Noise for the embedded web-math corpus: what a Rho-1 reference should learn to tell from content.

Provenance labels (``PROVENANCE``; the same names as ``selective_lm.data.PROVENANCE_LABELS``):

- 1 ``noise``: page boilerplate (navigation, cookie banners, spam, markup, URLs, tokens, timetables).
- 2 ``offtopic``: prose about something else (written by ``corpora``).
- 3 ``wrong_solution``: a problem in exactly the canonical ``Problem/Solution/Answer`` form whose
  final answer is wrong; in half of them an intermediate ``= N`` is wrong as well.
- 4 ``near_duplicate``: an earlier problem of the same corpus and split, repeated in canonical form
  with one number of the question changed and the solution and answer left verbatim, so they
  usually no longer fit the question (a scraped mirror with a typo, not a fresh problem).
- 5 ``perturbed_table``: a numeric table (times, addition, squares, unit conversions) in the same
  layout as the correct tables that pages and HQ documents carry as content, with 1-3 wrong entries.
- 6 ``other_notation``: correct math in another notation: LaTeX (``$\\frac{3}{4} \\times 2$``),
  words ("What is seven plus five? ... equals twelve.") or an answer-first exercise layout.

Near-domain blocks (3-6) take their problems from the same split as their page, through ``ok``
(does a question belong to this split): train pages never show a validation or test question,
not even edited or reworded. ``canonical_text`` undoes the notations of 6 (LaTeX, number words),
so the leakage check sees a reworded question as the question it is.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from .mathgen import _UNITS, Problem, format_problem

PROVENANCE = {0: "content", 1: "noise", 2: "offtopic", 3: "wrong_solution", 4: "near_duplicate",
              5: "perturbed_table", 6: "other_notation"}
NEAR_KINDS = (3, 4, 5, 6)
NEAR_WEIGHTS = (30, 22, 20, 28)


# ------------------------------------------------------- boilerplate noise (label 1)
NAV = ("Home | Forums | Questions | Tags | Users | Badges | Ask Question | Log in | Sign up",
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
REACTIONS = ("Like · Reply · Report", "Quote | Thanks | Share", "Was this helpful? Yes / No")
INLINE = ("&nbsp;", "<br />", " &nbsp;", "<br>", "  ", "</p>", " \\\\")
_TOKENS = ("sessionid={h32}; csrftoken={a40}", "Post ID: {h8}-{h4}-{h4}-{h12}", "data:image/png;base64,{b64}==",
           "_ga=GA1.2.{big}.{big}; __cfduid={h43}", "Ref: {a10} | Token: {a32}", "{n} views · {n} replies · "
           "last post by {u} {date}", "var _gaq = _gaq || []; _gaq.push(['_setAccount', 'UA-{big}-{v}']); "
           "_gaq.push(['_trackPageview']);", ".post-body{margin:{n}px auto;font-size:1{v}px;color:#{h6}}",
           "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}gtag('config','G-{U10}');")
_STOPS = ("Central Station", "Market Square", "University", "Hospital", "Airport", "Park Road", "Old Town",
          "Harbour", "Library", "Stadium")
_HEX, _ALNUM = "0123456789abcdef", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ALPHABETS = {"h": _HEX, "a": _ALNUM, "U": _ALNUM[:26] + _HEX[:10]}


def user_name(rng: random.Random) -> str:
    return rng.choice(("mathfan", "guest", "sarah_k", "John", "calc_kid", "Wizard", "tutorbot", "anon")) + str(
        rng.randint(1, 9999))

def timestamp(rng: random.Random) -> str:
    return (f"{rng.randint(2006, 2023)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}")

def _url(rng: random.Random) -> str:
    path = "/".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    query = "&".join(f"{rng.choice(('sid', 'p', 't', 'utm_source', 'ref', 'session', 'page'))}="
                     + _fill(rng, rng.choice(("{h8}", "{h32}", "{a12}", "{n}"))) for _ in range(rng.randint(0, 3)))
    return f"https://{rng.choice(_DOMAINS)}/{path}-{rng.randint(1, 999999)}" + (f"?{query}" if query else "")

_SLOTS = {"y": lambda r: str(r.randint(2008, 2024)), "v": lambda r: str(r.randint(1, 9)),
          "t": lambda r: timestamp(r)[11:], "n": lambda r: str(r.randint(2, 99)), "u": user_name, "date": timestamp,
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


def boilerplate(rng: random.Random, spam_seen: list[str]) -> str:
    """One block of noise, ending with a newline."""
    k = rng.choices(range(9), weights=(12, 10, 9, 12, 10, 10, 16, 6, 9))[0]
    if k == 2 and spam_seen and rng.random() < 0.5:
        return rng.choice(spam_seen)  # verbatim repeat within the page
    if k < 3:
        out = _fill(rng, rng.choice((NAV + _CONSENT, _FOOTER, _SPAM)[k])) + "\n"
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


# ------------------------------------------------------------------ near-domain noise (labels 3-6)
def _bounded(s: str) -> re.Pattern:
    """``s`` as a whole number/fraction/percent token, not a piece of a longer one."""
    return re.compile(rf"(?<![\w./]){re.escape(s)}(?![\w/%]|\.\d)")


def _off(rng: random.Random, v: int, step: int = 0) -> int:
    """A plausible wrong value near ``v`` (never ``v``; non-negative when ``v`` is)."""
    if abs(v) >= 10 and len(set(str(abs(v)))) > 1 and rng.random() < 0.25:  # swapped digits
        d = str(abs(v))
        w = int(d[::-1].lstrip("0") or "0") * (1 if v >= 0 else -1)
        if w != v:
            return w
    deltas = [1, -1, 2, -2, 10, -10] + ([step, -step] if step > 2 else [])
    while True:
        w = v + rng.choice(deltas)
        if w != v and (w >= 0 or v < 0) and (w != 0 or v == 0):
            return w


def wrong_answer(rng: random.Random, p: Problem) -> str:
    """An answer string that is not ``p.answer`` but looks like one."""
    a = p.answer
    if m := re.fullmatch(r"Which is (?:larger|smaller): (.+) or (.+)\?", p.question):
        return m.group(2) if m.group(1) == a else m.group(1)  # the other option
    if ", " in a:  # a sorted list: swap two neighbours
        items = a.split(", ")
        i = rng.randrange(len(items) - 1)
        items[i], items[i + 1] = items[i + 1], items[i]
        return ", ".join(items)
    if m := re.fullmatch(r"(-?\d+)(/\d+|%)?", a):
        v = int(m.group(1))
        w = _off(rng, v)
        while m.group(2) and m.group(2).startswith("/") and w <= 0:
            w = _off(rng, v)
        return f"{w}{m.group(2) or ''}"
    return a[:-1] + str((int(a[-1]) + 1) % 10) if a[-1:].isdigit() else a + "0"


def wrong_solution(rng: random.Random, p: Problem) -> str:
    """``p`` in the canonical form with a wrong final answer (and, half the time, a wrong step)."""
    wrong = wrong_answer(rng, p)
    sol = p.solution
    hits = list(_bounded(p.answer).finditer(sol))
    end = hits[-1].start() if hits else len(sol)
    if hits:
        sol = sol[:end] + wrong + sol[hits[-1].end():]
    steps = list(re.finditer(r"= (-?\d+)(?![\d/%]|\.\d)", sol[:end]))
    if steps and rng.random() < 0.5:
        m = rng.choice(steps)
        sol = sol[:m.start(1)] + str(_off(rng, int(m.group(1)))) + sol[m.end(1):]
    return format_problem(Problem(p.family, p.question, sol, wrong))


def near_duplicate(rng: random.Random, p: Problem, ok: Callable[[str], bool]) -> str | None:
    """``p`` with one number of its question changed, solution and answer verbatim; None if no edit
    keeps the question in the split (``ok``)."""
    nums = list(re.finditer(r"(?<![\d.])\d+(?![\d.])", p.question))
    for _ in range(24 if nums else 0):
        m = rng.choice(nums)
        q = p.question[:m.start()] + str(_off(rng, int(m.group()))) + p.question[m.end():]
        if q != p.question and ok(q):
            return format_problem(Problem(p.family, q, p.solution, p.answer))
    return None


def math_table(rng: random.Random, wrong: int = 0) -> str:
    """A numeric table in one of four layouts; ``wrong`` of its entries are off (0: all correct)."""
    kind = rng.randrange(4)
    k0 = rng.choice((1, 1, rng.randint(2, 30)))
    ks = range(k0, k0 + rng.randint(8, 12))
    if kind == 0:
        n = rng.randint(2, 25)
        title = rng.choice((f"Multiplication table of {n}", f"The {n} times table", f"Times table: {n}"))
        rows, fmt, step = [(k, n * k) for k in ks], lambda k, v: f"{n} * {k} = {v}", n
    elif kind == 1:
        n = rng.randint(2, 50)
        title = rng.choice((f"Addition table of {n}", f"Adding {n}", f"Add {n}: table"))
        rows, fmt, step = [(k, n + k) for k in ks], lambda k, v: f"{n} + {k} = {v}", 1
    elif kind == 2:
        title = f"Squares of {ks[0]} to {ks[-1]}\n| n | n^2 |\n|---|-----|"
        rows, fmt, step = [(k, k * k) for k in ks], lambda k, v: f"| {k} | {v} |", 0
    else:
        one, many, small, f = rng.choice(_UNITS)
        title = rng.choice((f"Conversion table: {many} to {small}", f"{many.capitalize()} in {small}"))
        rows = [(k, k * f) for k in ks]
        fmt, step = (lambda k, v: f"{k} {one if k == 1 else many} = {v} {small}"), f
    bad = set(rng.sample(range(len(rows)), min(wrong, len(rows))))
    return "\n".join([title] + [fmt(k, _off(rng, v, step) if i in bad else v)
                                for i, (k, v) in enumerate(rows)]) + "\n"


# LaTeX: maximal runs of terms joined by operators, e.g. "(3 + 4) * 5 = 35" or "2x - 3 = 7"
_TERM = r"\(*-?(?:\d+(?:\.\d+)?[xyn]?|\b[xyn]\b)\)*"
_RUN = re.compile(rf"{_TERM}(?:\s*[-+*/=]\s*{_TERM})+")
_FRAC = re.compile(r"(?<![\d.])(\d+)/(\d+)(?![\d.])")
_FRAC_TEX = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")


def _tex_math(s: str) -> str:
    s = _FRAC.sub(r"\\frac{\1}{\2}", s.replace(" / ", r" \div ")).replace(" * ", r" \times ")
    return s.replace("%", r"\%")


def latexify(text: str) -> str:
    """Math runs of ``text`` in LaTeX (``$\\frac{a}{b}$``, ``\\times``, ``\\div``); ``canonical_text`` inverts it."""
    return _RUN.sub(lambda m: f"${_tex_math(m.group())}$", text)


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_WORD_NUM = re.compile(rf"\b(?=[efnostz])(?:({'|'.join(_TENS[2:])})(?:-({'|'.join(_ONES[1:10])}))?|({'|'.join(_ONES)}))\b",
                       re.IGNORECASE)


def number_words(n: int) -> str:
    """0 <= n < 100 in words: 56 -> "fifty-six"."""
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")


def _word_value(m: re.Match) -> str:
    if m.group(3):
        return str(_ONES.index(m.group(3).lower()))
    return str(10 * _TENS.index(m.group(1).lower()) + (_ONES.index(m.group(2).lower()) if m.group(2) else 0))


def canonical_text(text: str) -> str:
    """Undo the other notations: LaTeX fractions and operators, ``$``, number words (below 100) to digits."""
    if "$" in text or "\\" in text:
        text = _FRAC_TEX.sub(r"\1/\2", text).replace(r" \times ", " * ").replace(r" \div ", " / ").replace(
            r"\%", "%").replace("$", "")
    return _WORD_NUM.sub(_word_value, text)


_SIMPLE = re.compile(r"(?:What is|Calculate) (\d+) ([-+*/]|plus|minus|times|divided by) (\d+)[?.]")
_OPS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


def _in_words(p: Problem) -> tuple[str, str] | None:
    m = _SIMPLE.fullmatch(p.question)
    if not m:
        return None
    a, b, op = int(m.group(1)), int(m.group(3)), _OPS.get(m.group(2), m.group(2))
    r = {"plus": a + b, "minus": a - b, "times": a * b, "divided by": a // b if b and a % b == 0 else -1}[op]
    if not (0 <= r < 100 and a < 100 and b < 100) or str(r) != p.answer:
        return None
    q = f"What is {number_words(a)} {op} {number_words(b)}?"
    return q, f"{number_words(a).capitalize()} {op} {number_words(b)} equals {number_words(r)}."


def other_notation(rng: random.Random, p: Problem, ok: Callable[[str], bool]) -> str:
    """``p``, correct, in LaTeX, in words (simple arithmetic only) or in an answer-first layout."""
    style = rng.random()
    words = _in_words(p) if style < 0.3 else None
    if words and ok(canonical_text(words[0])):
        return f"Q. {words[0]}\nA. {words[1]}\n"
    if style < 0.65:
        return (f"Problem: {latexify(p.question)}\nSolution: {latexify(p.solution)}\n"
                f"Answer: ${_tex_math(p.answer)}$\n")
    return f"Exercise {rng.randint(1, 40)}. {p.question}\nShort answer: {p.answer}\nWhy: {p.solution}\n"


def near_domain(rng: random.Random, kind: int, fresh: Callable[[], Problem], earlier: Sequence[Problem],
                ok: Callable[[str], bool]) -> str | None:
    """One near-domain block of label ``kind`` (3-6), ending with a blank line; None if none fits."""
    if kind == 3:
        text = wrong_solution(rng, fresh())
    elif kind == 4:  # in a validation/test page few edits stay in the split: try a few problems
        text = next((t for _ in range(4 if earlier else 0) if (t := near_duplicate(rng, rng.choice(earlier), ok))),
                    None)
    elif kind == 5:
        text = math_table(rng, rng.randint(1, 3))
    else:
        text = other_notation(rng, fresh(), ok)
    return None if text is None else text + "\n"
