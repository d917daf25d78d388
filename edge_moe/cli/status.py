"""``edge-moe status``: a deployed fleet's nodes, liveness and work so far."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from edge_moe.cli.common import (
    FLEET_NAME_HELP,
    JSON_HELP,
    app,
    console,
    deprecated,
    handles_errors,
    print_json,
)


@app.command()
@handles_errors
def status(
    fleet: Annotated[str | None, typer.Option(metavar="NAME", help=FLEET_NAME_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": the full status")] = False,
    old_name: Annotated[str | None, typer.Option("--name", hidden=True, callback=deprecated("status --name", "--fleet"))] = None,
) -> None:
    """Show a deployed fleet's nodes, liveness and work so far. The tables give each node's experts, liveness and last heartbeat, the ms and J spent so far, and Ray's view. Exits 3 when the Ray cluster does not answer.

    Example: edge-moe status --fleet demo --json
    """
    from edge_moe import fleet as fleet_mod

    st = fleet_mod.status(old_name if old_name is not None else fleet)
    fleet_mod.disconnect()
    if as_json:
        print_json(st)
        return
    for t in status_tables(st):
        console.print(t)
    coord = st["coordinator"]
    if "error" in coord:
        console.print(f"[bold red]coordinator[/]: {coord['error']}", highlight=False)
    else:
        console.print(f"coordinator: pid {coord['pid']}, in flight {coord['in_flight']}, stats {coord['stats']}",
                      highlight=False)
    if st.get("http"):
        console.print(f"OpenAI-compatible front: {st['http']}/v1", highlight=False)
    if st.get("metrics"):
        console.print(f"Prometheus metrics: {st['metrics']}", highlight=False)
    ray_view = st["ray"]
    console.print(f"Ray: {ray_view['nodes_alive']} node(s) alive; resources {ray_view['cluster_resources']}",
                  highlight=False)


def status_tables(st: dict[str, Any]) -> list[Table]:
    """The status as two tables that fit an 80-column terminal: each node's liveness and
    load, then each node's experts and their work so far (long cells wrap, never truncate)."""
    coord = st["coordinator"]
    so_far = coord.get("experts_so_far", {})
    live_t = Table(title=f"fleet '{st['fleet']}' at {st['frontend']} (Ray {st['address']})")
    work_t = Table(title="work so far")
    for col in ("node", "class", "ready", "live", "beat s", "queue", "batch", "pid"):
        live_t.add_column(col, overflow="fold", min_width=11 if col == "live" else None)
    for col in ("node", "experts", "answers", "ms", "J (source)"):  # an expert name is never split
        work_t.add_column(col, overflow="fold", no_wrap=col == "experts")
    for n, e in st["nodes"].items():
        experts = e.get("experts", [])
        ans = sum(so_far.get(x, {}).get("answers", 0) for x in experts)
        ms = sum(so_far.get(x, {}).get("compute_ms", 0.0) for x in experts)
        joules = sum(so_far.get(x, {}).get("energy_j", 0.0) for x in experts)
        actor = e["actor"]
        live = "yes" if e.get("live") else "NO"
        if e.get("quarantined_s_left") is not None:
            live = f"NO\nquarantined\n{e['quarantined_s_left']:g} s left"
        queue = (f"{e['queued']} ({e.get('predicted_wait_ms', 0):.0f} ms)" if "queued" in e else "-")
        live_t.add_row(n, e.get("device_class", "-"), "yes" if e["ready"] else "NO", live,
                       f"{e['last_heartbeat_s_ago']:.2f}" if "last_heartbeat_s_ago" in e else "-", queue,
                       f"{e['batch']:.1f}/{e.get('max_batch', '-')}" if e.get("batch") else "-",
                       str(actor.get("pid", actor.get("error", "-"))))
        # the runners' threads, and for llama.cpp experts their spin count (nodes[].threads, .spin)
        threads = ([f"({e['threads']} threads" + (f", spin {e['spin']})" if e.get("spin") is not None else ")")]
                   if e.get("threads") else [])
        if e.get("prefix"):  # llama.cpp experts' prompt reuse (nodes[].prefix_reuse): mode, share reused
            p = e["prefix"]
            threads.append(f"(prefix {p['mode']}: {p['reused_tokens'] / max(p['prompt_tokens'], 1):.0%} "
                           f"of {p['prompt_tokens']} prompt tokens reused)")
            if p.get("max_context"):  # KV cache allocated / its cap (nodes[].context)
                streams = f" × {p['streams']} streams" if p.get("streams", 1) > 1 else ""
                threads.append(f"(context {p['context']}{streams} of ≤ {p['max_context']} tokens)")
        work_t.add_row(n, "\n".join([*experts, *threads]) or "-", str(ans), f"{ms:.0f}",
                       f"{joules:.3g} ({e.get('energy_source', '-')})")
    return [live_t, work_t]
