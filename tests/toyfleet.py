"""The one toy fleet every test tier builds on: synthetic planner inputs (a calibration table,
profiles and a fitted linear gate, :func:`gating.offline.synthetic.write_toy_inputs`) and a
fleet YAML placing the four toy experts on three loopback nodes with random ports.

Unit tests use the files alone (routers, coordinators in-process); integration tests start
real processes or a Ray fleet over the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from gating.offline.synthetic import write_toy_inputs

DIM = 16  # the toy encoder's embedding width
HEARTBEAT_S = 0.2
LIVENESS = 3
NODES: dict[str, list[int]] = {"node-a": [0, 1], "node-b": [2], "node-c": [3]}  # node -> experts
# idle, busy W; "cpu" is every node's class unless a fleet names three (THREE_CLASSES)
CLASSES = {"cpu": (5.0, 15.0), "cpu-fast": (5.0, 15.0), "cpu-slow": (3.0, 8.0), "edge": (2.0, 6.0)}
THREE_CLASSES = {"node-a": "cpu-fast", "node-b": "cpu-slow", "node-c": "edge"}


@dataclass(frozen=True)
class Assets:
    dir: Path
    calibration: Path
    profiles: Path
    gate: Path
    fleet: Path
    experts: tuple[str, ...]
    categories: tuple[str, ...]

    def kwargs(self) -> dict[str, object]:
        """:func:`edge_moe.fleet.deploy` keyword arguments for a toy fleet on 2 CPUs."""
        return {"gate": self.gate, "calibration": self.calibration, "profiles": self.profiles,
                "toy_encoder_dim": DIM, "toy": True, "num_cpus": 2, "object_store_mb": 80,
                "ready_timeout_s": 60}


def write_fleet(path: Path, experts: tuple[str, ...], categories: tuple[str, ...], name: str,
                nodes: dict[str, list[int]] = NODES, classes: dict[str, str] | None = None,
                artifacts: dict[str, str] | None = None, http: str | None = None,
                **coordinator: object) -> Path:
    """Write the toy fleet YAML.

    Args:
        nodes: node name → the indices of the experts placed on it.
        classes: node name → device class (:data:`CLASSES`); None puts every node on "cpu".
        artifacts: expert → artifact path, in place of ``toy/<expert>``.
        http: the coordinator's OpenAI front address, or None for no front.
        coordinator: other ``coordinator`` settings (e.g. ``heartbeat_s``, ``liveness``).
    """
    class_of = {n: (classes or {}).get(n, "cpu") for n in nodes}
    coord = {"node": next(iter(nodes)), "frontend": "tcp://127.0.0.1:0",
             "backend": "tcp://127.0.0.1:0", "heartbeat_s": HEARTBEAT_S,
             "liveness": LIVENESS, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4, "top_k": 2,
             **coordinator}
    if http is not None:
        coord["http"] = http
    fleet = {
        "name": name,
        "device_classes": {k: {"power_idle_w": CLASSES[k][0], "power_busy_w": CLASSES[k][1],
                               "source": "test"} for k in dict.fromkeys(class_of.values())},
        "nodes": [{"name": n, "device_class": class_of[n]} for n in nodes],
        "experts": [{"name": experts[i], "node": n,
                     "artifact": (artifacts or {}).get(experts[i], f"toy/{experts[i]}")}
                    for n, idx in nodes.items() for i in idx],
        "categories": list(categories),
        "coordinator": coord,
    }
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def make_assets(d: Path, name: str, seed: int, n_samples: int | None = None,
                classes: dict[str, str] | None = None, http: str | None = None,
                **coordinator: object) -> Assets:
    """Toy inputs and the fleet YAML under ``d`` (``coordinator``: as :func:`write_fleet`)."""
    kw = {} if n_samples is None else {"n_samples": n_samples}
    table, cal, prof, gate = write_toy_inputs(d, n_experts=4, embedding_dim=DIM, seed=seed, **kw)
    fleet = write_fleet(d / "fleet.yaml", table.experts, table.category_names, name,
                        classes=classes, http=http, **coordinator)
    return Assets(d, Path(cal), Path(prof), Path(gate), fleet, table.experts, table.category_names)
