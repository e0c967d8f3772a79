"""The architecture as docs/README.md draws it, checked on the source: each module's layer, who may import whom,
imports inside functions (few, each saying why) and the size limits of modules, classes and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vad"

# Lowest first; a module may import its own layer and those below, never above. offline and live are siblings:
# neither imports the other (the live path must not carry the offline stages, and the stages no camera).
LAYERS = [
    ("foundation", ["vad", "vad.errors", "vad.config", "vad.atomic", "vad.text", "vad.progress", "vad.device",
                    "vad.tensorfile", "vad.metrics", "vad.heatmap", "vad.web"]),
    ("data and networks", ["vad.io", "vad.models"]),
    ("run folders and processes", ["vad.runs", "vad.distributed", "vad.policy"]),
    ("runtime", ["vad.runtime"]),
    ("review", ["vad.review"]),
    ("offline", ["vad.offline"]),
    ("live", ["vad.live"]),
    ("site", ["vad.site"]),
    ("cli", ["vad.cli"]),
]
SIBLINGS = {"offline": "live", "live": "offline"}
MAX_LINES, MAX_CLASS, MAX_FUNCTION, MAX_INNER_IMPORTS = 450, 200, 60, 15


def _module(p: Path) -> str:
    return ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best:
                best, rank = len(pre), i
    assert rank is not None, f"{module} has no layer in tests/test_layers.py (and docs/README.md's picture)"
    return rank


def _sources() -> list[tuple[Path, str, ast.Module]]:
    return [(p, _module(p), ast.parse(p.read_text())) for p in sorted(ROOT.rglob("*.py"))]


def _imports(tree: ast.Module) -> list[tuple[ast.ImportFrom | ast.Import, bool]]:
    """Every import of ``vad`` with whether it sits inside a function (``if TYPE_CHECKING:`` blocks left out)."""
    out = []

    def walk(node: ast.AST, inner: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            names = [child.module or ""] if isinstance(child, ast.ImportFrom) else [
                a.name for a in child.names] if isinstance(child, ast.Import) else []
            if any(n.split(".")[0] == "vad" for n in names):
                out.append((child, inner))
            walk(child, inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(tree, False)
    return out


def _targets(node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module]


def test_every_import_goes_down_or_sideways_never_up() -> None:
    wrong = []
    for _, mod, tree in _sources():
        mine = _layer(mod)
        for node, _ in _imports(tree):
            for target in _targets(node):
                theirs = _layer(target)
                if theirs > mine or SIBLINGS.get(LAYERS[mine][0]) == LAYERS[theirs][0]:
                    wrong.append(f"{mod} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), line "
                                 f"{node.lineno}")
    assert not wrong, "\n".join(wrong)


def test_few_imports_inside_functions_each_saying_why() -> None:
    """Outside the CLI (which imports a command's modules when it runs), an import of vad inside a function is
    there for a reason that a comment on it states (a cycle, a child process, a heavy optional part)."""
    inner, silent = [], []
    for p, mod, tree in _sources():
        if mod.startswith("vad.cli"):
            continue
        lines = p.read_text().splitlines()
        for node, in_function in _imports(tree):
            if not in_function:
                continue
            where = f"{p.relative_to(ROOT.parent)}:{node.lineno}"
            inner.append(where)
            said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            if not said:
                silent.append(where)
    assert len(inner) <= MAX_INNER_IMPORTS, inner
    assert not silent, f"imports inside functions without a comment saying why: {silent}"


@pytest.mark.parametrize("limit", ["module", "class", "function"])
def test_sizes(limit: str) -> None:
    big = []
    for p, mod, tree in _sources():
        if limit == "module":
            n = len(p.read_text().splitlines())
            if n > MAX_LINES:
                big.append(f"{mod}: {n} lines")
            continue
        kinds = (ast.ClassDef,) if limit == "class" else (ast.FunctionDef, ast.AsyncFunctionDef)
        most = MAX_CLASS if limit == "class" else MAX_FUNCTION
        for node in ast.walk(tree):
            if isinstance(node, kinds) and node.end_lineno - node.lineno + 1 > most:
                big.append(f"{mod}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not big, big
