"""The package's import layers: the README's Layout lists the modules top-down, and imports only run down.

Every ``import`` in ``src/selective_lm`` (module level or inside a function) is an edge; the test fails on
a module importing one listed above it, on two modules importing each other through any chain, and on a
module the README does not list.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "selective_lm"


def _layers() -> dict[str, int]:
    """Top-level module or sub-package name -> its line in the README's Layout block (0 = top)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Layout"):].split("```")[1]
    rank: dict[str, int] = {}
    rows = [line for line in block.splitlines()[1:] if line.startswith("  ") and not line.startswith("   ")]
    for i, line in enumerate(rows):  # "  a.py b.py   what they do"; deeper-indented lines continue a row
        for name in line.strip().split("  ")[0].split():
            rank[name.removesuffix(".py").rstrip("/")] = i
    return rank


def _edges() -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PKG.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                out |= {m for m in [mod, *(f"{mod}.{a.name}" for a in node.names)] if m in mods and m != name}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in mods and a.name != name}
        edges[name] = out
    return edges


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_readme_lists_every_module_and_imports_only_run_down() -> None:
    rank, edges = _layers(), _edges()
    tops = {_top(m) for m in edges} - {"__init__"}
    assert tops <= set(rank), f"modules missing from the README's Layout: {sorted(tops - set(rank))}"
    up = [f"{a} -> {b}" for a, bs in edges.items() for b in bs
          if _top(a) != _top(b) and _top(a) in rank and _top(b) in rank and rank[_top(b)] < rank[_top(a)]]
    assert not up, f"imports that run up the layers: {up}"


def test_no_import_circles() -> None:
    edges = _edges()
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(edges[m]):
            assert seen.get(n) != 1, "import circle: " + " -> ".join(path[path.index(n):] + [n] if n in path
                                                                        else path + [n])
            if n not in seen:
                visit(n, path + [n])
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m, [m])


def test_analysis_and_corpora_never_import_the_study() -> None:
    for m, bs in _edges().items():
        if re.match(r"selective_lm\.(analysis|corpora)\b", m):
            assert not {b for b in bs if re.match(r"selective_lm\.(study|analyze|cli)\b", b)}, m
