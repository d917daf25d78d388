"""The layer table of docs/design.md §1, held by a test instead of prose.

Every ``import`` and ``from ... import`` in the project (``edge_moe``, ``exporters``,
``nodes``, ``gating``) and in ``benchmarks/`` is read from the AST (lazy imports inside
functions included) and checked against the table:

| package                                          | may import (besides third-party) |
|--------------------------------------------------|----------------------------------|
| ``edge_moe`` top-level modules, ``edge_moe.runtime``, ``edge_moe.wire`` | the base only |
| ``exporters``                                    | the base, ``exporters``          |
| ``nodes``                                        | the base, ``nodes``              |
| ``gating``                                       | the base, ``gating``             |
| ``edge_moe.cli``, ``edge_moe.fleet``, ``edge_moe.jobs``, ``benchmarks`` | anything (the apex) |

``benchmarks/`` holds top-level scripts, named ``benchmarks.<file>``; an import that names
no project module (``from conftest import ...`` after a ``sys.path`` trick) is ignored.

The same walk holds these rules too:

- no import cycle among project modules (a lazy import that dodges a cycle at run time is
  still a cycle here);
- each exception class is defined once, in ``edge_moe/errors.py`` (private ``_Names``
  local to one module aside);
- serving never imports offline evaluation: no serving module (``gating.coordinator``,
  ``gating.http``, ``nodes``, the base) imports ``gating.offline``, directly or through
  any chain of project imports (a package's ``__init__`` runs too);
- node and coordinator meet only over the wire: ``nodes`` never imports ``gating`` and
  ``gating`` never imports ``nodes``;
- the third-party packages in ``THIRD_PARTY`` are imported only by the modules it names
  (``ray`` only in ``edge_moe.fleet``; ``torch`` only in ``exporters`` and gate training;
  ``starlette``/``uvicorn`` only in ``gating.http``; ``typer``/``rich`` only in the apex;
  ``transformers`` only in ``exporters``); ``benchmarks`` are exempt;
- ``edge_moe.fleet`` uses no private name of another package (``from X import _y``,
  ``import X._y``, ``X._y`` on an imported project module);
- no project module is over ``MAX_LINES`` (450) lines unless its module docstring says why
  it must be one module, in a sentence with the marker ``One module because``.

The checker itself is tested on small made-up trees, one planted breach per rule, so a
broken checker cannot pass silently. The walk's mechanics are in :mod:`tests.layer_walk`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.layer_walk import (
    Edge,
    Use,
    cycles,
    exception_classes,
    imports,
    modules,
    private_uses,
    reach,
    size,
    third_party,
)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("edge_moe", "exporters", "nodes", "gating")
PACKAGES = (*PROJECT, "benchmarks")  # the walk
APEX = ("edge_moe.cli", "edge_moe.fleet", "edge_moe.jobs", "benchmarks")
ERRORS_MODULE = "edge_moe.errors"

OFFLINE = ("gating.offline",)
SERVING_ROLES = ("gating.coordinator", "gating.http", "nodes")  # and the base

# the modules that train gates, and so need torch (gating/planning/gate.py: the MLP and its
# training loop; the offline retrain-gap study reaches torch only through it)
GATE_TRAINING = ("gating.planning.gate",)
# third-party package → the module prefixes that may import it; benchmarks are exempt
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "ray": ("edge_moe.fleet",),
    "torch": ("exporters", *GATE_TRAINING),
    "transformers": ("exporters",),
    "starlette": ("gating.http",),
    "uvicorn": ("gating.http",),
    "typer": ("edge_moe.cli", "edge_moe.fleet", "edge_moe.jobs"),
    "rich": ("edge_moe.cli", "edge_moe.fleet", "edge_moe.jobs"),
}
THIRD_PARTY_EXEMPT = ("benchmarks",)

PRIVATE_CHECKED = ("edge_moe.fleet",)  # packages that may use no other package's private name

MAX_LINES = 450
ONE_MODULE_MARKER = "One module because"


def under(mod: str, prefixes: Iterable[str]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def layer(mod: str) -> str:
    """'apex', 'base', or the role package's name."""
    if under(mod, APEX):
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


def serving(mod: str) -> bool:
    return layer(mod) == "base" or under(mod, SERVING_ROLES)


def offline_reached(edges: list[Edge], known: dict[str, Path]) -> list[str]:
    """Each offline module a serving module imports, with the import chain that gets there."""
    direct = [f"{e} (directly)" for e in edges if serving(e.src) and under(e.dst, OFFLINE)]
    chains = reach(edges, [m for m in known if serving(m)], known)
    return direct + [" -> ".join(c) for m, c in chains.items() if under(m, OFFLINE)]


def wire_crossings(edges: Iterable[Edge]) -> list[str]:
    """Imports between the node (``nodes``) and the coordinator (``gating``), either way."""
    return [f"{e} (nodes and gating meet only over the wire)" for e in edges
            if {e.src.split(".")[0], e.dst.split(".")[0]} == {"nodes", "gating"}]


def third_party_violations(uses: Iterable[Use]) -> list[str]:
    return [f"{u}: {u.name} is allowed only in {', '.join(THIRD_PARTY[u.name])}"
            for u in uses if u.name in THIRD_PARTY
            and not under(u.src, THIRD_PARTY[u.name]) and not under(u.src, THIRD_PARTY_EXEMPT)]


def private_violations(uses: Iterable[Use]) -> list[str]:
    return [f"{u} (private to {u.owner})" for u in uses
            if under(u.src, PRIVATE_CHECKED)
            and not under(u.owner, [p for p in PRIVATE_CHECKED if under(u.src, [p])])]


def oversized(root: Path) -> list[str]:
    out = []
    for mod, path in modules(root, PROJECT).items():
        n, doc = size(path)
        if n > MAX_LINES and ONE_MODULE_MARKER not in doc:
            out.append(f"{path.relative_to(root)} ({mod}): {n} lines")
    return out


def all_edges(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    known = modules(root, packages)
    return [e for mod, path in known.items() for e in imports(mod, path, known)]


def all_third_party(root: Path = ROOT) -> list[Use]:
    return [u for mod, path in modules(root, PACKAGES).items() for u in third_party(mod, path, PACKAGES)]


def all_private(root: Path = ROOT) -> list[Use]:
    known = modules(root, PACKAGES)
    return [u for mod, path in known.items() for u in private_uses(mod, path, known)]


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


# ---------------------------------------------------------------- the project


def test_the_walk_sees_the_project() -> None:
    known = modules(ROOT, PACKAGES)
    edges = all_edges()
    assert {"edge_moe.wire", "edge_moe.runtime.runners", "nodes.server", "gating.coordinator",
            "exporters.llm", "edge_moe.cli", "edge_moe.fleet", "edge_moe.jobs.demo",
            "benchmarks.reproduce_moe2"} <= set(known)
    # lazy imports inside functions are seen: the apex's demo reaches the exporters lazily
    assert any(e.src == "edge_moe.jobs.demo" and e.dst.startswith("exporters.") for e in edges)
    # benchmarks are scripts named benchmarks.<file>, and they import each other by that name
    assert any(e.src == "benchmarks.reproduce_moe2" and e.dst == "benchmarks.moe2_report" for e in edges)
    assert len(edges) > 100
    assert any(u.name == "ray" for u in all_third_party())


def test_every_import_follows_the_layer_table() -> None:
    bad = violations(all_edges())
    assert not bad, _report("imports that break the layer table (docs/design.md §1)", bad)


def test_no_import_cycles() -> None:
    found = cycles(all_edges())
    assert not found, _report("import cycles (lazy imports count)", [" <-> ".join(c) for c in found])


def test_each_exception_class_is_defined_once_in_errors() -> None:
    found = exception_classes(modules(ROOT, PACKAGES))
    twice = {n: m for n, m in found.items() if len(m) > 1}
    # a private class (leading underscore) may stay inside the one module that raises and catches it
    elsewhere = {n: m for n, m in found.items()
                 if m != [ERRORS_MODULE] and n not in twice and not n.startswith("_")}
    assert not twice, f"exception classes defined more than once: {twice}"
    assert not elsewhere, f"exception classes outside {ERRORS_MODULE}: {elsewhere}"


def test_serving_never_imports_offline_evaluation() -> None:
    bad = offline_reached(all_edges(), modules(ROOT, PACKAGES))
    assert not bad, _report("serving modules that load gating.offline", bad)


def test_node_and_coordinator_meet_only_over_the_wire() -> None:
    bad = wire_crossings(all_edges())
    assert not bad, _report("imports between nodes and gating", bad)


def test_third_party_packages_stay_in_their_layers() -> None:
    bad = third_party_violations(all_third_party())
    assert not bad, _report("third-party imports outside their layers (THIRD_PARTY)", bad)


def test_fleet_uses_no_private_name_of_another_package() -> None:
    bad = private_violations(all_private())
    assert not bad, _report("private names reached from outside their package", bad)


def test_no_module_is_too_long_without_a_reason() -> None:
    bad = oversized(ROOT)
    assert not bad, _report(f"modules over {MAX_LINES} lines whose docstring lacks "
                            f"{ONE_MODULE_MARKER!r} (split them, or say why they are one)", bad)


# ---------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for pkg in PROJECT:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    (tmp_path / "benchmarks").mkdir(exist_ok=True)  # scripts, no __init__.py
    return tmp_path


MODULES = ["nodes/server.py", "nodes/loop.py", "gating/coordinator/routing.py",
           "gating/coordinator/loop.py", "gating/planning/selector.py", "gating/planning/gate.py",
           "gating/offline/evaluation.py", "gating/http/server.py", "exporters/llm.py",
           "edge_moe/jobs/demo.py", "edge_moe/jobs/plan.py", "edge_moe/fleet/__init__.py",
           "edge_moe/fleet/ops.py", "edge_moe/fleet/state.py", "edge_moe/cli/__init__.py",
           "edge_moe/wire/__init__.py", "edge_moe/wire/codec.py", "edge_moe/config.py",
           "edge_moe/runtime/__init__.py", "edge_moe/runtime/_impl.py", "benchmarks/bench.py"]


def _planted(tmp_path: Path, src: str, code: str) -> Path:
    """A made-up tree of empty modules, with ``code`` planted in ``src``."""
    files = dict.fromkeys(MODULES, "")
    files[src] = code
    return _tree(tmp_path, files)


@pytest.mark.parametrize(("src", "code", "why"), [
    ("gating/coordinator/routing.py", "from nodes.server import X\n", "gating may not import nodes"),
    ("gating/coordinator/routing.py", "def f():\n    import exporters.llm\n", "a lazy import counts"),
    ("exporters/llm.py", "from nodes import server\n", "exporters may not import nodes"),
    ("edge_moe/wire/codec.py", "from gating.coordinator.routing import Router\n", "the base imports no role"),
    ("edge_moe/runtime/__init__.py", "from edge_moe.jobs import demo\n", "the base imports no apex"),
    ("nodes/server.py", "from edge_moe.fleet import deploy\n", "a role imports no apex"),
    ("nodes/server.py", "from ..gating.coordinator import routing\n", "relative imports resolve"),
    ("gating/planning/selector.py", "from benchmarks.bench import X\n", "benchmarks are apex"),
    ("edge_moe/config.py", "def f():\n    import benchmarks.bench\n", "the base imports no benchmark"),
])
def test_checker_flags_a_forbidden_import(tmp_path: Path, src: str, code: str, why: str) -> None:
    assert violations(all_edges(_planted(tmp_path, src, code))), why


def test_checker_allows_the_table(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "edge_moe/wire.py": "from edge_moe.errors import E\nfrom edge_moe.runtime import gate\n",
        "edge_moe/errors.py": "", "edge_moe/runtime/__init__.py": "", "edge_moe/runtime/gate.py": "",
        "gating/coordinator/routing.py": "from edge_moe.runtime.gate import G\nfrom . import mixture\n",
        "gating/planning/mixture.py": "import numpy\n",
        "edge_moe/cli/__init__.py": "from gating.coordinator.routing import R\nfrom nodes import server\n",
        "nodes/server.py": "from edge_moe.wire import encode\n",
        # a benchmark script: sys.path tricks, a sibling by its benchmarks.<file> name, anything
        "benchmarks/bench.py": "import sys\nsys.path.insert(0, 'x')\nfrom conftest import DIM\n"
                               "from benchmarks.other import X\nfrom nodes.server import S\n"
                               "from edge_moe.jobs import demo\n",
        "benchmarks/other.py": "", "edge_moe/jobs/demo.py": "",
    })
    edges = all_edges(root)
    assert violations(edges) == []
    assert [e.dst for e in edges if e.src == "benchmarks.bench"] == \
        ["benchmarks.other", "nodes.server", "edge_moe.jobs.demo"]


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
    found = exception_classes(modules(root, PACKAGES))
    assert found["FleetError"] == ["edge_moe.errors", "edge_moe.fleet"]
    assert "Helper" not in found


@pytest.mark.parametrize(("src", "code", "chain"), [
    ("gating/coordinator/loop.py", "from gating.offline.evaluation import f\n",
     ["gating.coordinator.loop", "gating.offline.evaluation"]),
    ("edge_moe/wire/codec.py", "def f():\n    import gating.offline.evaluation\n",
     ["edge_moe.wire.codec", "gating.offline.evaluation"]),
    # through planning, which serving reaches: coordinator -> selector -> offline
    ("gating/planning/selector.py", "def f():\n    from gating.offline import evaluation\n",
     ["gating.coordinator.routing", "gating.planning.selector", "gating.offline.evaluation"]),
    # a package's __init__ runs when any module under it is imported
    ("gating/planning/__init__.py", "from gating.offline.evaluation import f\n",
     ["gating.coordinator.routing", "gating.planning.selector", "gating.planning",
      "gating.offline.evaluation"]),
])
def test_checker_flags_serving_reaching_offline(tmp_path: Path, src: str, code: str,
                                                chain: list[str]) -> None:
    files = dict.fromkeys(MODULES, "")
    files["gating/coordinator/routing.py"] = "from gating.planning.selector import select\n"
    files[src] = code
    root = _tree(tmp_path, files)
    bad = offline_reached(all_edges(root), modules(root, PACKAGES))
    assert " -> ".join(chain) in bad


def test_checker_lets_the_apex_and_planning_alone_use_offline(tmp_path: Path) -> None:
    files = dict.fromkeys(MODULES, "")
    files["edge_moe/jobs/plan.py"] = "from gating.offline import evaluation\n"
    files["gating/planning/gate.py"] = "from gating.offline.evaluation import f\n"  # no server reaches it
    files["nodes/loop.py"] = "from edge_moe.wire import codec\n"
    root = _tree(tmp_path, files)
    assert offline_reached(all_edges(root), modules(root, PACKAGES)) == []


@pytest.mark.parametrize(("src", "code"), [
    ("gating/coordinator/loop.py", "def f():\n    from nodes import server\n"),
    ("gating/planning/selector.py", "import nodes.loop\n"),
    ("nodes/loop.py", "from gating.coordinator.routing import Router\n"),
])
def test_checker_flags_nodes_and_gating_meeting_off_the_wire(tmp_path: Path, src: str, code: str) -> None:
    assert wire_crossings(all_edges(_planted(tmp_path, src, code)))


@pytest.mark.parametrize(("src", "code"), [
    ("edge_moe/cli/__init__.py", "def f():\n    import ray\n"),
    ("edge_moe/jobs/demo.py", "from ray.util import state\n"),
    ("gating/coordinator/routing.py", "import torch\n"),
    ("gating/planning/selector.py", "def f():\n    import torch.nn as nn\n"),
    ("nodes/server.py", "from transformers import AutoTokenizer\n"),
    ("edge_moe/jobs/plan.py", "import transformers\n"),
    ("edge_moe/runtime/__init__.py", "import starlette.routing\n"),
    ("gating/coordinator/loop.py", "import uvicorn\n"),
    ("gating/coordinator/loop.py", "from rich.console import Console\n"),
    ("nodes/loop.py", "import os, typer\n"),
])
def test_checker_flags_a_third_party_import_out_of_its_layer(tmp_path: Path, src: str, code: str) -> None:
    bad = third_party_violations(all_third_party(_planted(tmp_path, src, code)))
    assert len(bad) == 1 and "is allowed only in" in bad[0], bad


def test_checker_allows_third_party_where_the_table_says(tmp_path: Path) -> None:
    files = dict.fromkeys(MODULES, "")
    files.update({
        "edge_moe/fleet/ops.py": "def f():\n    import ray\nimport typer, rich\n",
        "gating/planning/gate.py": "import torch\nimport torch.nn.functional as F\n",
        "exporters/llm.py": "import torch\nfrom transformers import AutoModel\n",
        "gating/http/server.py": "import uvicorn\nfrom starlette.routing import Route\n",
        "edge_moe/cli/__init__.py": "import typer\nfrom rich.table import Table\n",
        "benchmarks/bench.py": "import ray, torch, transformers, typer\n",
        "nodes/server.py": "import numpy, zmq\nfrom . import loop\n",
    })
    assert third_party_violations(all_third_party(_tree(tmp_path, files))) == []


@pytest.mark.parametrize(("code", "name"), [
    ("from edge_moe.config import _parse\n", "edge_moe.config._parse"),
    ("def f():\n    from ..config import _parse\n", "edge_moe.config._parse"),
    ("import edge_moe.runtime._impl\n", "edge_moe.runtime._impl"),
    ("from edge_moe.runtime._impl import run\n", "edge_moe.runtime._impl"),
    ("from edge_moe import config\nconfig._parse('x')\n", "edge_moe.config._parse"),
    ("import edge_moe.config as c\nx = c._DEFAULT\n", "edge_moe.config._DEFAULT"),
    ("import edge_moe.config\nedge_moe.config._parse('x')\n", "edge_moe.config._parse"),
    ("def f():\n    from gating.coordinator import routing\n    return routing._pick\n",
     "gating.coordinator.routing._pick"),
])
def test_checker_flags_fleet_reaching_a_private_name(tmp_path: Path, code: str, name: str) -> None:
    bad = private_violations(all_private(_planted(tmp_path, "edge_moe/fleet/ops.py", code)))
    assert [b.split(" imports ")[1].split(" ")[0] for b in bad] == [name], bad


def test_checker_allows_fleet_privates_dunders_and_other_packages(tmp_path: Path) -> None:
    files = dict.fromkeys(MODULES, "")
    files.update({
        "edge_moe/fleet/ops.py": "from edge_moe.fleet.state import _load\nfrom . import state\n"
                                 "import edge_moe.config\nstate._x\nself._y\nedge_moe.config.__file__\n"
                                 "from edge_moe.config import __version__\nimport os\nos._exit(0)\n",
        "nodes/server.py": "from edge_moe.config import _parse\n",  # the rule is fleet's alone
    })
    root = _tree(tmp_path, files)
    assert all_private(root)  # seen, but allowed
    assert private_violations(all_private(root)) == []


@pytest.mark.parametrize(("lines", "doc", "flagged"), [
    (MAX_LINES + 1, "A long module.", True),
    (MAX_LINES + 1, "A long module. One module\n because the loop owns one socket.", False),
    (MAX_LINES, "Just short enough.", False),
])
def test_checker_flags_a_long_module(tmp_path: Path, lines: int, doc: str, flagged: bool) -> None:
    text = f'"""{doc}"""\n' + "x = 1\n" * (lines - 1 - doc.count("\n"))
    root = _tree(tmp_path, {"gating/coordinator/loop.py": text, "benchmarks/bench.py": "x = 1\n" * 999})
    bad = oversized(root)
    assert bad == ([f"gating/coordinator/loop.py (gating.coordinator.loop): {lines} lines"] if flagged else [])
