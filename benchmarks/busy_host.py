"""A served expert on a host that is busy with other work: the serving actors' niceness.

Ray renices its worker processes to 15; edge-moe runs the node and coordinator actors at
``EDGE_MOE_NICENESS`` (default 0, an ordinary process's priority; ``edge_moe/fleet/launch.py``).
This deploys a one-node, one-expert fleet (``benchmarks/engine_served.py``: runner
``llama.cpp`` on the model's source GGUF, ``nodes[].threads`` = the cores) once per niceness,
and streams the same greedy requests through the HTTP front, first on a quiet host, then with
``--hogs`` busy processes (``python -c "while True: pass"``, nice 0) beside it. A request that
misses the coordinator's deadline is recorded as such.

Linux schedules by niceness only among processes of one autogroup (a session) when
``kernel.sched_autogroup_enabled`` is 1 (desktop kernels); ``--autogroup off`` (root) turns it
off for the run, as on kernels built without it, and restores it after.

Run: ``.venv/bin/python benchmarks/busy_host.py --autogroup off`` (~5 min); writes
``benchmarks/results/busy_host.{json,md}``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "busy_host"
AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
app = typer.Typer(add_completion=False)


def _requests(client: Any, expert: str, prompt: str, n: int, new_tokens: int) -> list[dict[str, Any]]:
    from benchmarks.engine_served import stream_once

    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            r = stream_once(client, expert, prompt, new_tokens)
            out.append({k: r[k] for k in ("ttft_ms", "decode_tok_s", "completion_tokens")}
                       | {"wall_s": time.perf_counter() - t0})
        except Exception as exc:  # a missed deadline is a result here
            out.append({"error": str(exc)[:200], "wall_s": time.perf_counter() - t0})
    return out


def _summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rs if "error" not in r]

    def med(k: str) -> float | None:
        return float(np.median([r[k] for r in ok])) if ok else None

    return {"answered": len(ok), "of": len(rs), "ttft_ms": med("ttft_ms"), "decode_tok_s": med("decode_tok_s"),
            "wall_s": float(np.median([r["wall_s"] for r in rs]))}


def _run(model: str, niceness: int, hogs: int, requests: int, new_tokens: int) -> dict[str, Any]:
    from openai import OpenAI

    from benchmarks.engine_bench import PROMPT, _artifacts, _demo_expert
    from benchmarks.engine_served import FLEET_NAME, NODE, _cli, _down, planner_inputs, write_fleet
    from exporters.gguf_requant import gguf_precision

    _, gguf, why = _artifacts(model)
    if gguf is None:
        raise SystemExit(f"{model}: {why}")
    expert = _demo_expert(model)["name"]
    with tempfile.TemporaryDirectory(prefix="busy-host-") as tmp:
        d = Path(tmp)
        env = {**os.environ, "EDGE_MOE_STATE": str(d / "state"), "EDGE_MOE_NICENESS": str(niceness)}
        gate, cal, prof = planner_inputs(d, expert)
        fleet = write_fleet(d / "fleet.yaml", expert, str(gguf), "llama.cpp", gguf_precision(Path(gguf))[0],
                            os.cpu_count() or 2)
        _cli(["deploy", str(fleet), "--gate", str(gate), "--calibration", str(cal), "--profiles", str(prof)],
             env, 600)
        try:
            st = _cli(["status", "--fleet", FLEET_NAME], env, 120)
            pid = st["nodes"][NODE]["actor"]["pid"]
            client = OpenAI(base_url=f"{st['http']}/v1", api_key="unused", timeout=120, max_retries=0)
            _requests(client, expert, PROMPT, 1, new_tokens)  # warm-up
            quiet = _requests(client, expert, PROMPT, requests, new_tokens)
            procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
            try:
                time.sleep(0.5)
                busy = _requests(client, expert, PROMPT, requests, new_tokens)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            return {"niceness": niceness, "node_nice_seen": os.getpriority(os.PRIO_PROCESS, pid),
                    "quiet": _summary(quiet), "busy": _summary(busy), "quiet_requests": quiet,
                    "busy_requests": busy}
        finally:
            _down(env, failed=False)


def _fmt(x: float | None, spec: str) -> str:
    return "missed" if x is None else format(x, spec)


def _markdown(res: dict[str, Any]) -> str:
    lines = [
        "# A served expert on a busy host: the serving actors' niceness", "",
        f"{res['cpu']}, {res['cpus']} cores, kernel.sched_autogroup_enabled {res['autogroup']} during the run; "
        f"{res['model']} on llama.cpp (its source GGUF), one node, {res['cpus']} threads; {res['requests']} "
        f"streamed greedy requests of {res['new_tokens']} tokens per cell (medians of those answered), quiet "
        f"and then beside {res['hogs']} busy processes at nice 0. Niceness 15 is Ray's own worker default; "
        "0 is edge-moe's (`EDGE_MOE_NICENESS`). A request that missed the coordinator's deadline (30 s) "
        "counts as not answered.", "",
        "| serving niceness (seen) | quiet: answered, TTFT ms, decode tok/s | busy: answered, TTFT ms, decode tok/s, wall s |",
        "|---|---|---|"]
    for r in res["runs"]:
        q, b = r["quiet"], r["busy"]
        lines.append(f"| {r['niceness']} ({r['node_nice_seen']}) | {q['answered']}/{q['of']}, "
                     f"{_fmt(q['ttft_ms'], '.0f')}, {_fmt(q['decode_tok_s'], '.1f')} | {b['answered']}/{b['of']}, "
                     f"{_fmt(b['ttft_ms'], '.0f')}, {_fmt(b['decode_tok_s'], '.1f')}, {b['wall_s']:.1f} |")
    lines += ["", f"Run: `{res['command']}` on {res['date']}."]
    return "\n".join(lines) + "\n"


@app.command()
def main(
    model: Annotated[str, typer.Option(help="asset name of the expert")] = "smollm2-135m-instruct",
    niceness: Annotated[str, typer.Option(help="comma-separated serving niceness values")] = "0,15",
    hogs: Annotated[int, typer.Option(min=0, help="busy processes beside the fleet")] = 2,
    requests: Annotated[int, typer.Option(min=1, help="requests per cell")] = 3,
    new_tokens: Annotated[int, typer.Option(min=1, help="greedy tokens per request")] = 64,
    autogroup: Annotated[str, typer.Option(help="as-is, or off for the run (root; restored after)")] = "as-is",
    out: Annotated[Path, typer.Option(help="writes OUT.json and OUT.md")] = OUT,
) -> None:
    """Served TTFT and decode, quiet and beside busy processes, per serving niceness."""
    from benchmarks.engine_bench import _cpu

    if autogroup not in ("as-is", "off"):
        raise typer.BadParameter(f"--autogroup {autogroup!r}: expected as-is or off")
    before = AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else "absent"
    if autogroup == "off" and before == "1":
        AUTOGROUP.write_text("0\n")
    try:
        res: dict[str, Any] = {
            "command": " ".join([".venv/bin/python benchmarks/busy_host.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"), "cpu": _cpu()["model"], "cpus": os.cpu_count(), "model": model,
            "hogs": hogs, "requests": requests, "new_tokens": new_tokens,
            "autogroup": AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else "absent", "runs": []}
        for n in (int(x) for x in niceness.split(",")):
            r = _run(model, n, hogs, requests, new_tokens)
            res["runs"].append(r)
            print(f"niceness {n}: quiet {r['quiet']}, busy {r['busy']}", flush=True)
    finally:
        if autogroup == "off" and before == "1":
            AUTOGROUP.write_text("1\n")
    from benchmarks.results_io import write_results

    write_results(out, res, _markdown(res))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    app()
