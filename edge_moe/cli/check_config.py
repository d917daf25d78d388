"""``edge-moe check-config``: validate a fleet YAML and show what it places where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edge_moe.cli.common import app, console, handles_errors


@app.command("check-config")
@handles_errors
def check_config(path: Annotated[Path, typer.Argument(help="fleet YAML")]) -> None:
    """Validate a fleet YAML and print its nodes and experts."""
    from edge_moe.config import load_fleet

    fleet = load_fleet(path)
    t = Table(title=f"fleet '{fleet.name}' ({path})")
    for col in ("node", "device class", "busy W", "max batch (wait ms)", "experts"):
        t.add_column(col)
    for n in fleet.nodes:
        dc = fleet.device_classes[n.device_class]
        t.add_row(n.name, n.device_class, f"{dc.power_busy_w:g}", f"{n.max_batch} ({n.batch_wait_ms:g})",
                  ", ".join(f"{e.name} ({e.precision}, {e.runner})" for e in fleet.experts_on(n.name)))
    console.print(t)
    console.print(json.dumps({"categories": list(fleet.categories), "coordinator": fleet.coordinator.node}))
