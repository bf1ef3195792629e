"""Markdown formatting of the study report's numbers: means ± std, accuracies with intervals, tables, images."""
from __future__ import annotations

from .plots import CAPTIONS


def f(x, nd: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def ms(s: dict | None, nd: int = 3, pct: bool = False) -> str:
    """mean ± std (n); std shown as 'n/a' for n = 1 (no variance estimate)."""
    if not s or s.get("mean") is None:
        return "—"
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.{nd}f}")
    return f"{f(s['mean'])} ± {f(s['std']) if s.get('std') is not None else 'n/a'} (n={s['n']})"


def pct(x) -> str:
    return "—" if x is None else f"{x:.1%}"


def acc(w: dict | None) -> str:
    if not w or w.get("accuracy") is None:
        return "—"
    return f"{w['accuracy']:.1%} [{w['ci95'][0]:.1%}, {w['ci95'][1]:.1%}] (n={w['n']})"


def code(x) -> str:
    return str(x).replace("\n", "⏎").replace("`", "'")


def cell(x) -> str:
    return code(x).replace("|", "\\|")


def table(head: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows] + [""])


def err(section) -> list[str]:
    if isinstance(section, dict) and "error" in section:
        return [f"_Not available: {cell(section['error'])}_", ""]
    return [] if section else ["_Not available._", ""]


def img(images: dict, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({images[name]})", "", f"_{CAPTIONS[name]}_", ""] if name in images else []
