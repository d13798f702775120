"""Imports only go downward (issue 26): the modules of blurdiff/ and blurdiff_ops/ form no import
cycle, and they import each other at the top of the module, where a reader sees a module's
dependencies, not inside functions. Read from the source (AST), nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("blurdiff", "blurdiff_ops")

# The project imports that stay inside a function, each with its reason (keep this short).
ALLOWED_INSIDE_FUNCTIONS = {
    ("blurdiff.export", "blurdiff.diffusers_pipeline"): "needs diffusers, an optional package",
    ("blurdiff_ops._loader", "blurdiff_ops._C"): "the compiled extension, which may be missing",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules an import statement loads (the deepest known module of each name;
    ``from package import submodule`` counts as the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: None if is_package else -1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        names = [f"{base}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        if name.split(".")[0] not in PACKAGES:
            continue
        if name.endswith("._C"):  # the compiled extension: a leaf
            out.add(name)
            continue
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def _is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Compare) and getattr(test.left, "id", None) == "__name__"


def _graph():
    """``(edges, inner)``: module -> the modules it imports anywhere; and the imports inside a
    function or a ``__main__`` block, as ``(module, target, line)``."""
    modules = _modules()
    known = set(modules)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    inner: list[tuple[str, str, int]] = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, nested: bool, module=module, is_package=is_package) -> None:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, is_package, known):
                    edges[module].add(target)
                    if nested:
                        inner.append((module, target, node.lineno))
            nested = nested or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            nested = nested or _is_main_guard(node)
            for child in ast.iter_child_nodes(node):
                visit(child, nested)

        visit(ast.parse(path.read_text(), str(path)), False)
    return edges, inner


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_graph_is_read():
    edges, _ = _graph()
    assert "blurdiff.diffusion" in edges["blurdiff.checkpoint"]
    assert "blurdiff.sample_guard" in edges["blurdiff.samplers"]
    assert "blurdiff_ops.ops" in edges["blurdiff_ops"]


def test_no_import_cycle():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_project_imports_at_the_top():
    _, inner = _graph()
    unexpected = [f"{m} imports {t} (line {line})" for m, t, line in inner if (m, t) not in ALLOWED_INSIDE_FUNCTIONS]
    assert unexpected == [], "import these at the top of the module (or say in ALLOWED_INSIDE_FUNCTIONS why not)"


def test_the_allow_list_is_current():
    _, inner = _graph()
    assert set(ALLOWED_INSIDE_FUNCTIONS) <= {(m, t) for m, t, _ in inner}, "remove the entries no longer needed"


def _imported_test_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {name for name in names if name.startswith("test_")}


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    found = {p.name: _imported_test_modules(p.read_text()) for p in sorted(tests.glob("test_*.py"))}
    assert {name: mods for name, mods in found.items() if mods} == {}, "share it through conftest.py or helpers.py"
    assert _imported_test_modules("import test_a\nfrom test_b.x import y\nfrom helpers import z") == {
        "test_a",
        "test_b",
    }
