"""The deployment record: what :func:`edge_moe.fleet.deploy` started, as a JSON state file.

One file per fleet, ``$EDGE_MOE_STATE/<fleet>.json`` (default ``$EDGE_MOE_CACHE/fleet``;
:func:`edge_moe.paths.state_dir`), so ``status`` and ``down`` work from another process.
It is written whole to a temporary file and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_moe.atomic import write_text
from edge_moe.errors import FleetError
from edge_moe.paths import state_dir

logger = logging.getLogger(__name__)

STATE_FORMAT = "edge-moe-fleet/1"


@dataclass
class Deployment:
    """What :func:`edge_moe.fleet.deploy` started, as recorded in the state file."""

    name: str
    config: str
    namespace: str
    address: str
    frontend: str
    backend: str
    started_head: bool
    head_pgid: int | None = None
    head_pids: list[int] = field(default_factory=list)
    ray_tmpdir: str = ""
    nodes: list[str] = field(default_factory=list)
    deploy_s: float = 0.0
    created: float = 0.0
    shipped: list[dict[str, Any]] = field(default_factory=list)  # edge_moe.fleet.ship.Shipped, per expert
    format: str = STATE_FORMAT

    @property
    def state_path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def save(self) -> Path:
        return write_text(self.state_path, json.dumps(asdict(self), indent=2))


def load_deployment(name: str | None = None) -> Deployment:
    """The recorded deployment ``name``, or the only one recorded.

    Raises:
        FleetError: none recorded, or several and no name given.
    """
    d = state_dir()
    if name is not None:
        p = d / f"{name}.json"
        if not p.is_file():
            raise FleetError(f"no deployed fleet '{name}' (no {p})")
        paths = [p]
    else:
        paths = sorted(d.glob("*.json")) if d.is_dir() else []
        if not paths:
            raise FleetError(f"no deployed fleet recorded in {d} (run `edge-moe deploy CONFIG`)")
        if len(paths) > 1:
            raise FleetError(f"several fleets are deployed ({', '.join(p.stem for p in paths)}); "
                             "name one with --fleet")
    raw = json.loads(paths[0].read_text())
    if raw.get("format") != STATE_FORMAT:
        raise FleetError(f"{paths[0]}: format {raw.get('format')!r}, expected {STATE_FORMAT!r}")
    return Deployment(**raw)
