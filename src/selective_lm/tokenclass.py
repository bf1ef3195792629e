"""Token classes of a vocabulary: what kind of text each token spells, for the selection tables and the format check.

One class per token id, from its decoded string, first match wins::

    special      the tokenizer's special tokens (EOS, BOS, padding)
    whitespace   only whitespace (spaces, newlines, tabs)
    markup       contains $ \\ < > { } (LaTeX, HTML, templates)
    code         contains _ ; ` # [ ] | @ ~, or an operator pair such as == != -> :: // += && ||
    letters      only letters (after its leading/trailing whitespace)
    digits       digits, with nothing but . , and spaces beside them
    punctuation  no letter, no digit (. , : ! ? ( ) = + - * / % ' " ...)
    mixed        the rest (letters with digits or punctuation, e.g. "x2", "n't")

:func:`class_table` gives the class code of every id of a tokenizer; :data:`CLASSES` names the codes.
"""
from __future__ import annotations

import re

import numpy as np

CLASSES = ("special", "whitespace", "markup", "code", "letters", "digits", "punctuation", "mixed")
MARKUP_CHARS = "$\\<>{}"
CODE_CHARS = "_;`#[]|@~"
_CODE_PAIRS = re.compile(r"==|!=|->|::|//|\+=|-=|&&|\|\||<=|>=")
_DIGITS = re.compile(r"[\d.,\s]*\d[\d.,\s]*")


def token_class(text: str, special: bool = False) -> str:
    """The class of one decoded token (see the module docstring)."""
    if special:
        return "special"
    s = text.strip()
    if not s:
        return "whitespace"
    if any(c in MARKUP_CHARS for c in s):
        return "markup"
    if any(c in CODE_CHARS for c in s) or _CODE_PAIRS.search(s):
        return "code"
    if s.isalpha():
        return "letters"
    if _DIGITS.fullmatch(s):
        return "digits"
    if not any(c.isalnum() for c in s):
        return "punctuation"
    return "mixed"


def class_table(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """uint8 [vocab_size]: the :data:`CLASSES` index of every token id of ``tokenizer`` (a transformers tokenizer);
    ids past the tokenizer's own are ``special``."""
    n = len(tokenizer) if vocab_size is None else vocab_size
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    codes = {name: i for i, name in enumerate(CLASSES)}
    table = np.full(n, codes["special"], dtype=np.uint8)
    known = min(n, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    for i, text in enumerate(texts):
        table[i] = codes[token_class(text, i in specials)]
    return table

