"""`edge-moe status` fits an 80-column terminal: every node name, expert name and figure is
shown whole (wrapped where needed, never cut to "…")."""

from __future__ import annotations

import io

from rich.console import Console

from edge_moe.cli.status import status_tables

EXPERTS = {"server-1": ["smollm2-135m-instruct-fp32"], "minipc-1": ["gemma-3-270m-fp32"],
           "pi-1": ["qwen2.5-coder-1.5b-instruct-int4", "qwen2.5-coder-0.5b-int8"]}


def _status() -> dict:
    nodes = {}
    for i, (n, experts) in enumerate(EXPERTS.items()):
        nodes[n] = {"experts": experts, "device_class": ["cpu", "mini-pc", "raspberry-pi-5"][i],
                    "ready": True, "live": i != 2, "quarantined_s_left": 12.5 if i == 2 else None,
                    "last_heartbeat_s_ago": 0.31, "queued": 3, "predicted_wait_ms": 1234.0,
                    "batch": 2.5, "max_batch": 8, "actor": {"pid": 123456 + i}, "energy_source": "modelled",
                    "threads": 2, **({"spin": 300, "prefix": {"mode": "exact", "prompt_tokens": 1200,
                                                               "reused_tokens": 768, "context": 512,
                                                               "max_context": 4096, "streams": 8}}
                                                   if i == 2 else {})}
    so_far = {e: {"answers": 1234, "compute_ms": 98765.4, "energy_j": 123.456} for v in EXPERTS.values() for e in v}
    return {"fleet": "demo-real", "frontend": "tcp://127.0.0.1:5555", "address": "127.0.0.1:6379",
            "nodes": nodes, "coordinator": {"experts_so_far": so_far}}


def test_status_fits_80_columns_without_cutting_a_cell():
    buf = io.StringIO()
    console = Console(file=buf, width=80, color_system=None)
    for t in status_tables(_status()):
        console.print(t)
    out = buf.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    for n, experts in EXPERTS.items():
        assert n in out
        for e in experts:  # whole, on one line
            assert any(e in line for line in out.splitlines()), e
    assert "quarantined" in out and "1234" in out
    assert "spin 300" in out and out.count("spin") == 1  # only the llama.cpp node has a spin count
    assert "prefix exact: 64%" in " ".join(out.split()) and out.count("prefix") == 1  # and prompt reuse
    assert "context 512 × 8 streams of ≤ 4096 tokens" in " ".join(out.split())  # its KV cache and cap
