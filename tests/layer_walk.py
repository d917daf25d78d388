"""The AST walk behind :mod:`tests.test_layers`: the mechanics, with no rule of its own.

Everything here reads source files and returns facts (project imports, third-party imports,
private names reached, cycles, exception classes, module sizes); the rules that judge those
facts, and the tables they use, live in ``tests/test_layers.py``.
"""

from __future__ import annotations

import ast
import builtins
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported project module
    line: int

    def __str__(self) -> str:
        return f"{self.src}:{self.line} imports {self.dst}"


@dataclass(frozen=True)
class Use:
    """One import of a name that is not a project module's: a third-party package, or a private name."""

    src: str  # the module that imports it
    name: str  # the package (third party) or ``owner._name`` (private)
    owner: str  # the package (third party) or the project module that defines the name
    line: int

    def __str__(self) -> str:
        return f"{self.src}:{self.line} imports {self.name}"


@lru_cache(maxsize=512)
def _parse(text: str) -> ast.Module:
    return ast.parse(text)


def parse(path: Path) -> ast.Module:
    return _parse(path.read_text())


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name → file, for every .py file under the packages (a folder without
    ``__init__.py``, like ``benchmarks/``, names its scripts ``benchmarks.<file>`` all the same)."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an import of ``name`` loads (the longest known prefix)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _parent(mod: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every project import in one module, lazy ones included; an import that names no
    project module (``from conftest import ...`` after a ``sys.path`` trick) is left out."""
    edges: list[Edge] = []
    for node in ast.walk(parse(path)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = _parent(mod, path, node)
            # `from pkg import sub` loads pkg.sub when sub is a module, else pkg itself
            targets = [f"{parent}.{a.name}" if f"{parent}.{a.name}" in known else parent
                       for a in node.names]
        for t in targets:
            dst = resolve(t, known)
            if dst is not None and dst != mod:
                edges.append(Edge(mod, dst, node.lineno))
    return list(dict.fromkeys(edges))


def third_party(mod: str, path: Path, project: Iterable[str]) -> list[Use]:
    """The top-level package of every absolute import that is not a project package."""
    own = set(project)
    out: list[Use] = []
    for node in ast.walk(parse(path)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        for n in names:
            top = n.split(".")[0]
            if top and top not in own:
                out.append(Use(mod, top, top, node.lineno))
    return list(dict.fromkeys(out))


def is_private(name: str) -> bool:
    """``_name`` is private; ``__dunder__`` is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def private_uses(mod: str, path: Path, known: dict[str, Path]) -> list[Use]:
    """Every private name of a project module this module reaches: ``from X import _y``,
    ``import X._y`` and ``X._y`` on a name bound to a project module by an import."""
    tops = {m.split(".")[0] for m in known}
    tree = parse(path)
    aliases: dict[str, str] = {}  # local name → the project module it is bound to
    out: list[Use] = []

    def private_path(dotted: str, line: int) -> None:
        parts = dotted.split(".")
        for i, p in enumerate(parts[1:], start=1):
            if is_private(p):
                out.append(Use(mod, ".".join(parts[: i + 1]), ".".join(parts[:i]), line))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in tops:
                    continue
                private_path(a.name, node.lineno)
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            parent = _parent(mod, path, node)
            if parent.split(".")[0] not in tops:
                continue
            private_path(parent, node.lineno)
            for a in node.names:
                full = f"{parent}.{a.name}"
                if is_private(a.name):
                    out.append(Use(mod, full, parent, node.lineno))
                if full in known:
                    aliases[a.asname or a.name] = full
    for node in ast.walk(tree):  # after every import is seen: a lazy import binds a name too
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            dotted = _dotted(node.value)
            if dotted is None:
                continue
            root, _, rest = dotted.partition(".")
            if root in aliases:
                owner = aliases[root] + (f".{rest}" if rest else "")
                if owner in known:
                    out.append(Use(mod, f"{owner}.{node.attr}", owner, node.lineno))
    return list(dict.fromkeys(out))


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


def reach(edges: Iterable[Edge], starts: Iterable[str], known: dict[str, Path]) -> dict[str, list[str]]:
    """Every module loaded by importing any of ``starts`` → one shortest import chain to it.

    Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so those count as imports."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
    for m in known:
        parent = m.rpartition(".")[0]
        while parent:
            if parent in known:
                graph.setdefault(m, set()).add(parent)
            parent = parent.rpartition(".")[0]
    came: dict[str, str | None] = dict.fromkeys(sorted(starts))
    todo = deque(came)
    while todo:
        v = todo.popleft()
        for w in sorted(graph.get(v, ())):
            if w not in came:
                came[w] = v
                todo.append(w)
    chains: dict[str, list[str]] = {}
    for v in came:
        chain, w = [v], came[v]
        while w is not None:
            chain.append(w)
            w = came[w]
        chains[v] = chain[::-1]
    return chains


def exception_classes(known: dict[str, Path]) -> dict[str, list[str]]:
    """Exception class name → the modules that define it (bases followed by name)."""
    exc_names = {n for n in dir(builtins)
                 if isinstance(getattr(builtins, n), type) and issubclass(getattr(builtins, n), BaseException)}
    defs: list[tuple[str, str, list[str]]] = []
    for mod, path in known.items():
        for node in ast.walk(parse(path)):
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


def size(path: Path) -> tuple[int, str]:
    """A module's line count and its docstring with whitespace folded (a wrapped sentence reads whole)."""
    text = path.read_text()
    doc = ast.get_docstring(_parse(text)) or ""
    return len(text.splitlines()), " ".join(doc.split())
