"""Fixtures for the Ray fleet tests: toy planner inputs (synthetic table, fitted linear
gate) and a 3-node fleet YAML whose nodes are of three device classes.

Every test deploys on its own embedded Ray head (started by :func:`edge_moe.fleet.deploy`
under a private ``RAY_TMPDIR``) and removes it with :func:`edge_moe.fleet.down`, which
stops only the processes that deploy recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import toyfleet
from tests.toyfleet import DIM, HEARTBEAT_S, LIVENESS, THREE_CLASSES, Assets, make_assets

__all__ = ["DIM", "HEARTBEAT_S", "LIVENESS", "NODES", "Assets", "write_fleet"]

NODES = toyfleet.NODES


def write_fleet(path: Path, experts: tuple[str, ...], categories: tuple[str, ...], name: str,
                nodes: dict[str, tuple[str, list[int]]] | None = None,
                artifacts: dict[str, str] | None = None) -> Path:
    """The toy fleet on three device classes with an HTTP front; ``nodes``: name → (class,
    expert indices), default :data:`tests.toyfleet.NODES` on :data:`THREE_CLASSES`."""
    if nodes is None:
        nodes = {n: (THREE_CLASSES[n], idx) for n, idx in toyfleet.NODES.items()}
    return toyfleet.write_fleet(path, experts, categories, name,
                                nodes={n: idx for n, (_, idx) in nodes.items()},
                                classes={n: dc for n, (dc, _) in nodes.items()},
                                artifacts=artifacts, http="127.0.0.1:0", metrics="127.0.0.1:0")


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return make_assets(tmp_path_factory.mktemp("fleet"), "fleet-test", seed=5, n_samples=400,
                       classes=THREE_CLASSES, http="127.0.0.1:0", metrics="127.0.0.1:0")


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test records its deployments in its own state folder."""
    d = tmp_path / "state"
    monkeypatch.setenv("EDGE_MOE_STATE", str(d))
    return d
