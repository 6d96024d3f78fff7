"""The shape of the source tree: no import circles, no private names across files, short modules and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "covidcxr"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported covidcxr module, names taken from it) for every import in the module, top-level or not."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            names = [a.name for a in node.names]
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if module in MODULES:
                out.append((module, [n for n in names if f"{module}.{n}" not in MODULES]))
            out.extend((m, []) for m in submodules)
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names if a.name in MODULES)
    return out


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), packages importing their own submodules excepted."""
    edges = {m: {t for t, _ in _imports(m) if t != m and not t.startswith(m + ".")} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    fake = {"a": [("b", [])], "b": [("a", [])]}
    monkeypatch.setattr(f"{__name__}.MODULES", {"a": None, "b": None})
    monkeypatch.setattr(f"{__name__}._imports", lambda m: fake[m])
    assert _cycles() == [["a", "b"]]


def test_no_import_circles():
    assert _cycles() == []


def test_no_private_name_is_imported_from_another_file():
    private = [
        f"{m} imports {n} from {t}"
        for m in MODULES
        for t, names in _imports(m)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_short(name):
    source = MODULES[name].read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{name}: {source.count(chr(10))} lines"
    long = [
        f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for f in ast.walk(ast.parse(source))
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{name}: {', '.join(long)}"


MAX_FOLDER_MODULES = 12


def test_no_product_module_imports_the_research_package():
    product = [m for m in MODULES if not m.startswith("covidcxr.research")]
    offending = [f"{m} imports {t}" for m in product for t, _ in _imports(m) if t.startswith("covidcxr.research")]
    assert offending == []


def test_no_folder_holds_more_than_twelve_modules():
    crowded = {}
    for folder in {p.parent for p in MODULES.values()}:
        n = len(list(folder.glob("*.py")))
        if n > MAX_FOLDER_MODULES:
            crowded[str(folder.relative_to(SRC.parent))] = n
    assert crowded == {}
