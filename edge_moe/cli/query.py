"""``edge-moe query``: one request to the gating coordinator, answer and breakdown printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_moe.cli.common import app, budget_number, console, handles_errors


@app.command()
@handles_errors
def query(
    prompt: Annotated[str, typer.Argument(help="the question or instruction")],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="an answer option (repeat); none = free-form generation")] = None,
    endpoint: Annotated[str, typer.Option(help="the coordinator's frontend")] = "tcp://127.0.0.1:5555",
    energy_j: Annotated[float | None, typer.Option("--energy-j", help="energy budget for this request, J")] = None,
    latency_ms: Annotated[float | None, typer.Option("--latency-ms", help="latency budget for this request, ms")] = None,
    category: Annotated[str | None, typer.Option(help="application category (default: worst case over all)")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="experts active for this request")] = None,
    tau: Annotated[float | None, typer.Option(help="adaptive k: smallest k with gate mass >= tau")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="generation length for free-form prompts")] = 32,
    deadline_ms: Annotated[float | None, typer.Option(help="answer with what arrived by then (degraded)")] = None,
    timeout_s: Annotated[float, typer.Option(help="client timeout per try (Lazy Pirate retries)")] = 10.0,
    curve_keys: Annotated[Path | None, typer.Option(help="CURVE keys folder (from `edge-moe keys`)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full REPLY as JSON")] = False,
) -> None:
    """Ask the gating coordinator: prints the answer, the experts, weights, ms and J."""
    from edge_moe.client import query_command
    from edge_moe.security import load_client_keys

    for name, value in (("--energy-j", energy_j), ("--latency-ms", latency_ms)):
        if value is not None:
            budget_number(name, value)
    curve = load_client_keys(curve_keys) if curve_keys else None
    code, text = query_command(prompt, option, endpoint=endpoint, energy_j=energy_j, latency_ms=latency_ms,
                               category=category, top_k=top_k, tau=tau, max_new_tokens=max_new_tokens,
                               deadline_ms=deadline_ms, timeout_s=timeout_s, as_json=as_json, curve=curve)
    console.print(text, highlight=False, markup=False)
    raise typer.Exit(code)
