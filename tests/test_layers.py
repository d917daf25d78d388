"""The layer table of DESIGN.md §1, held by a test instead of prose.

Every ``import`` and ``from ... import`` in the four packages is read from the AST (lazy
imports inside functions included) and checked against the table:

| package                                          | may import (besides third-party) |
|--------------------------------------------------|----------------------------------|
| ``edge_moe`` top-level modules, ``edge_moe.runtime`` | each other only (the base)   |
| ``exporters``                                    | the base, ``exporters``          |
| ``nodes``                                        | the base, ``nodes``              |
| ``gating``                                       | the base, ``gating``             |
| ``edge_moe.cli``, ``edge_moe.fleet``, ``edge_moe.jobs`` | anything (the apex)       |

The same walk fails on an import cycle among project modules (a lazy import that dodges a
cycle at run time is still a cycle here) and on an exception class name defined twice or
outside ``edge_moe/errors.py`` (private ``_Names`` local to one module aside). The checker itself is tested on small made-up trees, so a
broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_moe", "exporters", "nodes", "gating")
APEX = ("edge_moe.cli", "edge_moe.fleet", "edge_moe.jobs")
ERRORS_MODULE = "edge_moe.errors"


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported project module
    line: int

    def __str__(self) -> str:
        return f"{self.src}:{self.line} imports {self.dst}"


def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every .py file under the packages."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an import of ``name`` loads (the longest known prefix)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(mod: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every project import in one module, lazy ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    edges: list[Edge] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            # `from pkg import sub` loads pkg.sub when sub is a module, else pkg itself
            targets = [f"{parent}.{a.name}" if f"{parent}.{a.name}" in known else parent
                       for a in node.names]
        for t in targets:
            dst = _resolve(t, known)
            if dst is not None and dst != mod:
                edges.append(Edge(mod, dst, node.lineno))
    return edges


def layer(mod: str) -> str:
    """'apex', 'base', or the role package's name."""
    if any(mod == a or mod.startswith(a + ".") for a in APEX):
        return "apex"
    top = mod.split(".")[0]
    return "base" if top == "edge_moe" else top


def allowed(src: str, dst: str) -> bool:
    s, d = layer(src), layer(dst)
    if s == "apex":
        return True
    if d == "apex":
        return False
    return d == "base" or d == s


def violations(edges: Iterable[Edge]) -> list[str]:
    return [f"{e} ({layer(e.src)} may not import {layer(e.dst)})"
            for e in edges if not allowed(e.src, e.dst)]


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def exception_classes(known: dict[str, Path]) -> dict[str, list[str]]:
    """Exception class name → the modules that define it (bases followed by name)."""
    exc_names = {n for n in dir(builtins)
                 if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), BaseException)}
    defs: list[tuple[str, str, list[str]]] = []
    for mod, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                defs.append((node.name, mod, bases))
    changed = True
    while changed:  # a class is an exception when any base is one
        changed = False
        for name, _, bases in defs:
            if name not in exc_names and any(b in exc_names for b in bases):
                exc_names.add(name)
                changed = True
    found: dict[str, list[str]] = {}
    for name, mod, bases in defs:
        if any(b in exc_names for b in bases):
            found.setdefault(name, []).append(mod)
    return found


def all_edges(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    known = modules(root, packages)
    return [e for mod, path in known.items() for e in imports(mod, path, known)]


# ---------------------------------------------------------------- the project


def test_the_walk_sees_the_project() -> None:
    known = modules(ROOT)
    edges = all_edges()
    assert {"edge_moe.wire", "edge_moe.runtime.runners", "nodes.server", "gating.coordinator",
            "exporters.llm", "edge_moe.cli", "edge_moe.fleet", "edge_moe.jobs.demo"} <= set(known)
    # lazy imports inside functions are seen: the apex's demo reaches the exporters lazily
    assert any(e.src == "edge_moe.jobs.demo" and e.dst.startswith("exporters.") for e in edges)
    assert len(edges) > 100


def test_every_import_follows_the_layer_table() -> None:
    bad = violations(all_edges())
    assert not bad, "imports that break the layer table (DESIGN.md §1):\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    found = cycles(all_edges())
    assert not found, "import cycles (lazy imports count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_each_exception_class_is_defined_once_in_errors() -> None:
    found = exception_classes(modules(ROOT))
    twice = {n: m for n, m in found.items() if len(m) > 1}
    # a private class (leading underscore) may stay inside the one module that raises and catches it
    elsewhere = {n: m for n, m in found.items()
                 if m != [ERRORS_MODULE] and n not in twice and not n.startswith("_")}
    assert not twice, f"exception classes defined more than once: {twice}"
    assert not elsewhere, f"exception classes outside {ERRORS_MODULE}: {elsewhere}"


# ---------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize(("src", "code", "why"), [
    ("gating/coordinator.py", "from nodes.server import X\n", "gating may not import nodes"),
    ("gating/coordinator.py", "def f():\n    import exporters.llm\n", "a lazy import counts"),
    ("exporters/llm.py", "from nodes import server\n", "exporters may not import nodes"),
    ("edge_moe/wire.py", "from gating.coordinator.routing import Router\n", "the base imports no role"),
    ("edge_moe/runtime/runners.py", "from edge_moe.jobs import demo\n", "the base imports no apex"),
    ("nodes/server.py", "from edge_moe.fleet import deploy\n", "a role imports no apex"),
    ("nodes/server.py", "from ..gating import routing\n", "relative imports resolve"),
])
def test_checker_flags_a_forbidden_import(tmp_path: Path, src: str, code: str, why: str) -> None:
    files = dict.fromkeys(["nodes/server.py", "gating/coordinator/routing.py", "exporters/llm.py",
                           "edge_moe/jobs/demo.py", "edge_moe/fleet/__init__.py", "edge_moe/wire.py"], "")
    files[src] = code  # the importer, and every module it names, exist
    root = _tree(tmp_path, files)
    assert violations(all_edges(root)), why


def test_checker_allows_the_table(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "edge_moe/wire.py": "from edge_moe.errors import E\nfrom edge_moe.runtime import gate\n",
        "edge_moe/errors.py": "", "edge_moe/runtime/__init__.py": "", "edge_moe/runtime/gate.py": "",
        "gating/coordinator/routing.py": "from edge_moe.runtime.gate import G\nfrom . import mixture\n",
        "gating/planning/mixture.py": "import numpy\n",
        "edge_moe/cli/__init__.py": "from gating.coordinator.routing import R\nfrom nodes import server\n",
        "nodes/server.py": "from edge_moe.wire import encode\n",
    })
    assert violations(all_edges(root)) == []


def test_checker_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "exporters/llm.py": "from exporters.parity import check\n",
        "exporters/parity.py": "from exporters.encoder import embed\n",
        "exporters/encoder.py": "def f():\n    from exporters.llm import save\n",
    })
    assert cycles(all_edges(root)) == [["exporters.encoder", "exporters.llm", "exporters.parity"]]


def test_checker_finds_a_twice_defined_exception(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "edge_moe/errors.py": "class EdgeMoEError(Exception): ...\nclass FleetError(EdgeMoEError): ...\n",
        "edge_moe/fleet/__init__.py": "from edge_moe import errors\nclass FleetError(errors.EdgeMoEError): ...\n",
        "nodes/server.py": "class Helper: ...\n",
    })
    found = exception_classes(modules(root))
    assert found["FleetError"] == ["edge_moe.errors", "edge_moe.fleet"]
    assert "Helper" not in found
