"""Fixtures for the Ray fleet tests: toy planner inputs (synthetic table, fitted linear
gate) and a 3-node fleet YAML whose nodes are of three device classes.

Every test deploys on its own embedded Ray head (started by :func:`edge_moe.fleet.deploy`
under a private ``RAY_TMPDIR``) and removes it with :func:`edge_moe.fleet.down`, which
stops only the processes that deploy recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gating.synthetic import write_toy_inputs

DIM = 16
HEARTBEAT_S = 0.2
LIVENESS = 3
NODES = {"node-a": ("cpu-fast", [0, 1]), "node-b": ("cpu-slow", [2]), "node-c": ("edge", [3])}


@dataclass(frozen=True)
class Assets:
    dir: Path
    calibration: Path
    profiles: Path
    gate: Path
    fleet: Path
    experts: tuple[str, ...]

    def kwargs(self) -> dict[str, object]:
        return {"gate": self.gate, "calibration": self.calibration, "profiles": self.profiles,
                "toy_encoder_dim": DIM, "toy": True, "num_cpus": 2, "object_store_mb": 80,
                "ready_timeout_s": 60}


def write_fleet(path: Path, experts: tuple[str, ...], categories: tuple[str, ...],
                name: str, nodes: dict[str, tuple[str, list[int]]] = NODES,
                artifacts: dict[str, str] | None = None) -> Path:
    classes = {"cpu-fast": (5.0, 15.0), "cpu-slow": (3.0, 8.0), "edge": (2.0, 6.0)}
    fleet = {
        "name": name,
        "device_classes": {k: {"power_idle_w": i, "power_busy_w": b, "source": "test"}
                           for k, (i, b) in classes.items()},
        "nodes": [{"name": n, "device_class": dc} for n, (dc, _) in nodes.items()],
        "experts": [{"name": experts[i], "node": n,
                     "artifact": (artifacts or {}).get(experts[i], f"toy/{experts[i]}")}
                    for n, (_, idx) in nodes.items() for i in idx],
        "categories": list(categories),
        "coordinator": {"node": next(iter(nodes)), "frontend": "tcp://127.0.0.1:0",
                        "backend": "tcp://127.0.0.1:0", "heartbeat_s": HEARTBEAT_S,
                        "liveness": LIVENESS, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4,
                        "top_k": 2, "http": "127.0.0.1:0"},
    }
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    d = tmp_path_factory.mktemp("fleet")
    table, cal, prof, gate = write_toy_inputs(d, n_experts=4, embedding_dim=DIM, seed=5, n_samples=400)
    fleet = write_fleet(d / "fleet.yaml", table.experts, table.category_names, "fleet-test")
    return Assets(d, Path(cal), Path(prof), gate, fleet, table.experts)


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test records its deployments in its own state folder."""
    d = tmp_path / "state"
    monkeypatch.setenv("EDGE_MOE_STATE", str(d))
    return d
