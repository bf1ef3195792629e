"""A small corpus with known planted structure: the reference's data (HQ) and a noisy corpus.

* an overlap block: one passage of 25 rare words in every second HQ document (the reference memorises it) and in
  every fourth noisy one;
* a markup class the reference never saw: LaTeX/HTML pieces in every third noisy document, none in HQ;
* a labelled noise span: random letters at the end of every fifth noisy document, span label 1 ("junk").
"""
import json
import random

WORDS = ("the of and to in is that it for on with as was at by an be this from or are we sum total each "
         "number value half twice more less than equal find").split()
BLOCK = ("quartz lantern meadow violet harbor copper ember willow thistle granite saffron orchid falcon juniper "
         "cobalt marble pepper tundra velvet cinder plume sequoia amber glacier hollow")  # memorised by the reference
MARKUP = ["$\\frac{a}{b}$", "\\cdot", "${x}^{n}$", "\\left(", "\\right)", "<br>", "\\sqrt{n}"]


def sentence(r):
    return " ".join(r.choice(WORDS) for _ in range(r.randint(8, 16))) + "."


def hq_docs(n=240, seed=0):
    r = random.Random(seed)
    rows = []
    for i in range(n):
        parts = [sentence(r) for _ in range(r.randint(4, 8))]
        if i % 2 == 0:
            parts.insert(r.randint(0, len(parts)), BLOCK + ".")
        rows.append({"text": " ".join(parts)})
    return rows


def noisy_docs(n=240, seed=1):
    r = random.Random(seed)
    rows = []
    for i in range(n):
        parts = [sentence(r) for _ in range(r.randint(4, 8))]
        if i % 4 == 0:
            parts.insert(r.randint(0, len(parts)), BLOCK + ".")
        if i % 3 == 0:
            parts.insert(r.randint(0, len(parts)), " ".join(r.choice(MARKUP) for _ in range(6)))
        text = " ".join(parts)
        spans = []
        if i % 5 == 0:
            junk = " ".join("".join(r.choice("qxzkvj") for _ in range(5)) for _ in range(8))
            spans = [[len(text) + 1, len(text) + 1 + len(junk), 1]]
            text = text + " " + junk
        rows.append({"text": text, "spans": spans})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    return path
