"""``edge-moe check-config``: every problem of a fleet YAML at once, and with ``--deep``
what would stop a deploy of a valid one from this machine.

Exit codes: 0 the file is valid (and with ``--deep`` deployable as far as this machine
can tell); 1 any error (:mod:`edge_moe.cli.common`). Warnings never change the exit code.

``--deep`` checks, all at once:

- each expert's artifact exists (relative to ``--artifacts`` / ``$EDGE_MOE_CACHE/artifacts``,
  as deploy's own precheck finds it), an ONNX artifact has its manifest (read as the
  runner reads it) and that manifest's precision is the expert's; a ``tensorrt`` expert
  has a built engine file;
- every node hosts an expert (a node server without experts refuses to start);
- ``coordinator.top_k`` is at most the number of experts;
- the coordinator's ``frontend``, ``backend`` and ``http`` can be bound here (a socket is
  bound briefly and closed: the host is an address of this machine, the port is free;
  ``*`` and port 0 always are) and differ, and a non-loopback ZeroMQ address has
  ``curve: true`` (the coordinator refuses plaintext there). When the coordinator node's
  ``host`` is not this machine, these are left to a run there (a warning says so);
- with ``--gate``, ``--calibration`` and ``--profiles``: each knows every expert of the
  fleet (more is fine: the gate is masked to the deployed ones;
  :func:`edge_moe.fleet.launch.inputs_mismatch`, as deploy checks).
"""

from __future__ import annotations

import dataclasses
import errno
import re
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edge_moe.cli.common import (
    EXIT_USAGE,
    JSON_HELP,
    app,
    console,
    err_console,
    handles_errors,
    print_json,
)
from edge_moe.config import FleetConfig
from edge_moe.errors import ArtifactError, ConfigError
from edge_moe.runtime.gguf import DEFAULT_CONTEXT
from nodes.build import node_spin

_TCP = re.compile(r"tcp://(?P<host>.+):(?P<port>\*|\d+)")
_WILDCARDS = ("*", "0.0.0.0", "::", "[::]")


@app.command("check-config")
@handles_errors
def check_config(
    path: Annotated[Path, typer.Argument(help="fleet YAML")],
    deep: Annotated[bool, typer.Option("--deep", help="also report what would stop a deploy from this "
                                       "machine: artifacts, engines, manifests, addresses, top_k, "
                                       "nodes without experts")] = False,
    artifacts: Annotated[Path | None, typer.Option(help="root for relative artifact paths (with --deep; "
                                                   "default $EDGE_MOE_CACHE/artifacts)")] = None,
    gate: Annotated[Path | None, typer.Option(help="with --deep: the gate ONNX to deploy with")] = None,
    calibration: Annotated[Path | None, typer.Option(help="with --deep: the calibration table")] = None,
    profiles: Annotated[Path | None, typer.Option(help="with --deep: the profiles JSON")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": {ok, errors, warnings, fleet}")] = False,
) -> None:
    """Validate a fleet YAML, listing every problem at once. Prints its nodes and experts; with --deep, also what would stop a deploy from this machine. Exits 0 when valid and 1 on any error; warnings never change the code. Every key is in docs/reference/fleet-yaml.md.

    Example: edge-moe check-config configs/fleet.example.yaml --deep
    """
    from edge_moe.config import check_fleet

    inputs = {"--gate": gate, "--calibration": calibration, "--profiles": profiles}
    given = [k for k, v in inputs.items() if v is not None]
    if given and (not deep or len(given) < len(inputs)):
        raise ConfigError(f"{', '.join(given)}: give --gate, --calibration and --profiles together, with --deep")
    fleet, errors = check_fleet(path)
    warnings: list[str] = []
    if fleet is not None and deep:
        more, warnings = undeployable(fleet, artifacts, (gate, calibration, profiles) if given else None)
        errors += more
    if as_json:
        out = {"ok": not errors, "errors": errors, "warnings": warnings,
               "fleet": summary(fleet) if fleet is not None else None}
        print_json(out)
    else:
        if fleet is not None:
            _print_table(fleet, path)
        for w in warnings:
            err_console.print(f"warning: {w}", highlight=False, markup=False)
        if len(errors) > 1:
            err_console.print(f"[bold red]ConfigError[/]: {len(errors)} problems", highlight=False)
        for e in errors:
            prefix = "  " if len(errors) > 1 else "[bold red]ConfigError[/]: "
            err_console.print(prefix + e.replace("[", "\\["), highlight=False)
    if errors:
        raise typer.Exit(EXIT_USAGE)


def summary(fleet: FleetConfig) -> dict[str, Any]:
    """The fleet as ``--json`` shows it: its nodes with their experts, and the coordinator."""
    c = fleet.coordinator
    return {
        "name": fleet.name, "path": fleet.path, "categories": list(fleet.categories),
        "nodes": [{"name": n.name, "device_class": n.device_class, "host": n.host,
                   "power_busy_w": fleet.device_classes[n.device_class].power_busy_w,
                   "max_batch": n.max_batch, "batch_wait_ms": n.batch_wait_ms,
                   "threads": n.threads, "spin": node_spin(fleet, n.name), "prefix_reuse": n.prefix_reuse,
                   "context": n.context, "llama_cpp_batch": n.llama_cpp_batch,
                   "experts": [dataclasses.asdict(e) for e in fleet.experts_on(n.name)]} for n in fleet.nodes],
        "coordinator": {"node": c.node, "frontend": c.frontend, "backend": c.backend, "http": c.http,
                        "top_k": c.top_k, "curve": c.curve},
    }


def _print_table(fleet: FleetConfig, path: Path) -> None:
    """Nodes and their experts, at most the console's width (the experts column wraps)."""
    t = Table(title=f"fleet '{fleet.name}' ({path})")
    for col in ("node", "device class", "busy W", "batch (wait)\nthreads"):
        t.add_column(col, overflow="fold")
    t.add_column("experts", overflow="fold", ratio=1)
    for n in fleet.nodes:
        dc = fleet.device_classes[n.device_class]
        experts = "\n".join(f"{e.name} ({e.precision}{'' if e.runner == 'onnxruntime' else ', ' + e.runner})"
                            for e in fleet.experts_on(n.name))
        gguf = any(e.runner == "llama.cpp" for e in fleet.experts_on(n.name))
        threads = f"{n.threads} threads" if n.threads else "all cores"
        if gguf:  # llama.cpp's threads poll this long at a barrier (nodes[].spin); prompt reuse
            threads += (f"\nspin {node_spin(fleet, n.name)}\nprefix {n.prefix_reuse}"
                        f"\ncontext ≤ {n.context or DEFAULT_CONTEXT}"
                        + (f"\nbatch {n.llama_cpp_batch}" if n.llama_cpp_batch != "off" else ""))
        t.add_row(n.name, n.device_class, f"{dc.power_busy_w:g}",
                  f"{n.max_batch} ({n.batch_wait_ms:g} ms)\n{threads}", experts or "-")
    console.print(t, soft_wrap=False)  # fit the console: the experts column (and a long title) wrap
    c = fleet.coordinator
    lines = [f"categories: {', '.join(fleet.categories)}", f"coordinator: node {c.node}, top_k {c.top_k}",
             f"  frontend {c.frontend}", f"  backend  {c.backend}"] + ([f"  http     {c.http}"] if c.http else [])
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=False)


# ---------------------------------------------------------------- --deep


def undeployable(fleet: FleetConfig, artifacts: Path | None,
                 inputs: tuple[Any, Any, Any] | None = None) -> tuple[list[str], list[str]]:
    """What would stop a deploy of a valid ``fleet`` from this machine: ``(errors, warnings)``.

    Args:
        artifacts: root of relative artifact paths (None: ``$EDGE_MOE_CACHE/artifacts``).
        inputs: the gate, calibration table and profiles to check against the experts.
    """
    from edge_moe.fleet.launch import inputs_mismatch

    errors, warnings = _artifact_problems(fleet, artifacts)
    src = fleet.path
    for i, n in enumerate(fleet.nodes):
        if not fleet.experts_on(n.name):
            errors.append(f"{src}: nodes[{i}] '{n.name}' hosts no experts (deploy starts a node server "
                          "on every node, and one without experts refuses to start)")
    c = fleet.coordinator
    if c.top_k is not None and c.top_k > len(fleet.experts):
        errors.append(f"{src}: coordinator.top_k={c.top_k} is more than the fleet's {len(fleet.experts)} "
                      "experts")
    more, notes = _address_problems(fleet)
    errors += more
    warnings += notes
    if inputs is not None:
        errors += inputs_mismatch(fleet, *inputs)
    return errors, warnings


def _artifact_problems(fleet: FleetConfig, artifacts: Path | None) -> tuple[list[str], list[str]]:
    """Each expert's artifact: there (deploy's precheck), with a manifest that agrees, or an engine."""
    from edge_moe.fleet.launch import _precheck_artifacts
    from edge_moe.paths import artifacts_dir
    from edge_moe.runtime.manifest import MANIFEST_FILE, load_manifest
    from exporters.tensorrt import ENGINE_FILE

    root = artifacts if artifacts is not None else artifacts_dir()
    errors: list[str] = []
    warnings: list[str] = []
    for i, e in enumerate(fleet.experts):
        where = f"{fleet.path}: experts[{i}].artifact={e.artifact!r}"
        # one expert at a time, so that every missing artifact is named, not one per node
        missing = _precheck_artifacts(dataclasses.replace(fleet, experts=(e,)), str(root))
        p = Path(e.artifact) if Path(e.artifact).is_absolute() else root / e.artifact
        if missing:
            why = missing[e.node]
            if e.runner == "tensorrt" and e.artifact:
                why = (f"runner 'tensorrt' needs a built engine and {p} does not exist (build it offline "
                       "with exporters/tensorrt.py; nodes never build engines)")
            errors.append(f"{where}: {why}")
            continue
        if e.runner == "tensorrt":
            engine = p if p.is_file() else p / ENGINE_FILE
            if not engine.is_file():
                errors.append(f"{where}: runner 'tensorrt' needs a built engine and {engine} is not a file "
                              "(build it offline with exporters/tensorrt.py; nodes never build engines)")
            else:
                warnings.append(f"{where}: runner 'tensorrt' does not execute engines yet "
                                "(edge_moe/runtime/runners.py); use runner 'onnxruntime'")
            continue
        if e.runner == "llama.cpp":  # a GGUF file, served as it is (no manifest)
            if not p.is_file():
                errors.append(f"{where}: runner 'llama.cpp' needs a .gguf file and {p} is not a file")
            elif _magic(p) != b"GGUF":
                errors.append(f"{where}: runner 'llama.cpp' needs a GGUF file and {p} does not start "
                              "with the GGUF magic")
            continue
        try:
            m = load_manifest(p)
        except ArtifactError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if m.precision != e.precision:
            errors.append(f"{fleet.path}: experts[{i}].precision={e.precision!r} but its artifact's "
                          f"{MANIFEST_FILE} ({p}) says {m.precision!r}")
    return errors, warnings


def _magic(path: Path) -> bytes:
    """A file's first four bytes (a GGUF file starts with b"GGUF")."""
    with path.open("rb") as fh:
        return fh.read(4)


def _address_problems(fleet: FleetConfig) -> tuple[list[str], list[str]]:
    """The coordinator's addresses: bindable here, distinct, and CURVE where not loopback."""
    c, src = fleet.coordinator, fleet.path
    host = fleet.node(c.node).host
    if _bind_problem(host, 0) is not None:
        return [], [f"{src}: the coordinator runs on node '{c.node}' at {host}, not this machine: its "
                    "addresses were not checked (run check-config --deep there)"]
    errors: list[str] = []
    taken: dict[int, str] = {}
    addresses = [("frontend", c.frontend), ("backend", c.backend)] + ([("http", f"tcp://{c.http}")] if c.http else [])
    for key, ep in addresses:
        m = _TCP.fullmatch(ep)
        if m is None:  # ipc://
            continue
        shown = c.http if key == "http" else ep
        h, port = m["host"], 0 if m["port"] == "*" else int(m["port"])
        if key != "http" and not c.curve and not _is_loopback(h):
            errors.append(f"{src}: coordinator.{key}={shown!r} is not a loopback address and "
                          "coordinator.curve is false: the coordinator refuses plaintext there "
                          "(set coordinator.curve: true)")
        if port and port in taken:
            errors.append(f"{src}: coordinator.{key}={shown!r} has the port of coordinator.{taken[port]}")
            continue
        if port:
            taken[port] = key
        why = _bind_problem(h, port)
        if why:
            errors.append(f"{src}: coordinator.{key}={shown!r} cannot be bound here: {why}")
    return errors, []


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound on this machine (port 0: any), or None.

    Binds a socket briefly, with SO_REUSEADDR as ZeroMQ does (a port in TIME_WAIT is free).
    """
    name = None if host in _WILDCARDS else host.strip("[]")
    try:
        info = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"host {host!r} does not resolve ({exc.strerror})"
    family, kind, proto, _, addr = info
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is already taken on this machine"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            return f"{type(exc).__name__}: {exc.strerror}"
    return None
