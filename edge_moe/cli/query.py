"""``edge-moe query``: one request to the gating coordinator, answer and breakdown printed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge_moe.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    REFUSAL_ERRORS,
    UNREACHABLE_ERRORS,
    app,
    budget_number,
    check_endpoint,
    console,
    handles_errors,
    print_json,
)

if TYPE_CHECKING:
    from edge_moe.wire import Error, Reply


@app.command()
@handles_errors
def query(
    prompt: Annotated[str, typer.Argument(help="the question or instruction")],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="an answer option (repeat); none = free-form generation")] = None,
    endpoint: Annotated[str, typer.Option(callback=check_endpoint, help="the coordinator's frontend (`edge-moe status` shows it)")] = "tcp://127.0.0.1:5555",
    energy_j: Annotated[str | None, typer.Option("--energy-j", metavar="J", help="energy budget for this request, J; 'inf' for none (default: the coordinator's)")] = None,
    latency_ms: Annotated[str | None, typer.Option("--latency-ms", metavar="MS", help="latency budget for this request, ms; 'inf' for none (default: the coordinator's)")] = None,
    category: Annotated[str | None, typer.Option(help="application category (default: worst case over all)")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="experts active for this request")] = None,
    tau: Annotated[float | None, typer.Option(help="adaptive k: smallest k with gate mass >= tau")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="generation length for free-form prompts")] = 32,
    deadline_ms: Annotated[float | None, typer.Option(help="answer with what arrived by then (degraded)")] = None,
    timeout_s: Annotated[float, typer.Option(help="client timeout per try (Lazy Pirate: 3 tries, then exit 3)")] = 10.0,
    curve_keys: Annotated[Path | None, typer.Option(help="CURVE keys folder (from `edge-moe keys`)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the full REPLY (or ERROR) as JSON on stdout")] = False,
) -> None:
    """Ask the gating coordinator one question and print the answer. The breakdown shows the experts, their weights, ms and J. Exits 2 when the answer is a refusal (an infeasible budget, or an ERROR refused, overloaded or no_experts) and 3 when the coordinator does not answer.

    Example: edge-moe query "2+2=? A. 3 B. 4 Answer:" -o 3 -o 4 --endpoint tcp://127.0.0.1:5555 --energy-j 20
    """
    from edge_moe.client import EdgeMoEClient, format_answer
    from edge_moe.security import load_client_keys
    from edge_moe.wire import to_json

    energy = None if energy_j is None else budget_number("--energy-j", energy_j)
    latency = None if latency_ms is None else budget_number("--latency-ms", latency_ms)
    curve = load_client_keys(curve_keys) if curve_keys else None
    with EdgeMoEClient(endpoint, timeout_s=timeout_s, curve=curve) as client:
        msg = client.query(prompt, option or None, category=category, energy_j=energy, latency_ms=latency,
                           top_k=top_k, tau=tau, max_new_tokens=max_new_tokens, deadline_ms=deadline_ms)
    if as_json:
        print_json(to_json(msg))
    else:
        console.print(format_answer(msg), highlight=False, markup=False)
    raise typer.Exit(answer_code(msg))


def answer_code(msg: Reply | Error) -> int:
    """The exit code of an answer: 0 a REPLY; 2 a refusal (a REPLY whose plan is infeasible,
    an ERROR refused / overloaded / no_experts); 3 an ERROR deadline / expert_error (the
    experts did not answer); 1 any other ERROR (the request was wrong: bad_request, ...)."""
    from edge_moe.wire import Error

    if isinstance(msg, Error):
        if msg.code in REFUSAL_ERRORS:
            return EXIT_REFUSED
        return EXIT_UNREACHABLE if msg.code in UNREACHABLE_ERRORS else EXIT_USAGE
    return EXIT_REFUSED if msg.plan.status == "infeasible" else EXIT_OK
