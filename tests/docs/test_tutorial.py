"""The tutorial runs: every ``bash`` block of ``docs/howto/experts.md`` (your first fleet from
your own models: export, calibrate, profile, plan, deploy, query by ZeroMQ, curl and the
``openai`` client, /metrics, down), in the page's order, as one bash script
(``set -euo pipefail``) in a fresh folder. A block right after ``<!-- not run: why -->`` is
left out, and says why.

The script runs with ``$EDGE_MOE_CACHE`` at the real cache (``~/.cache/edge-moe`` unless set,
so exports are reused; an empty cache exports SmolLM2 first, about a minute), a private
``$EDGE_MOE_STATE`` (its own deployment records) and the venv's ``bin`` first on ``PATH``.
A ``trap`` takes the fleet down however the script ends, and the test runs ``edge-moe down``
once more after it (a killed script runs no trap), so no Ray head is left behind. Each block
prints its wall time; the test prints them all and the total (``pytest -s``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "howto" / "experts.md"
FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$", re.S)
TIMEOUT_S = 1500  # the whole script; ~5 min on 2 quiet cores with the exports cached


def bash_blocks(text: str) -> list[tuple[str, str | None]]:
    """Each ```bash block of ``text`` in order: (its code, why it is not run, or None)."""
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n")
        last = before.rsplit("\n", 1)[-1]
        why = NOT_RUN.search(last)
        out.append((m.group(1), why.group(1) if why else None))
    return out


def script(blocks: list[tuple[str, str | None]], times: Path) -> str:
    """One bash script of the blocks to run, each timed (``step N <first line>: S s`` into
    ``times``), with a trap that takes the fleet down however it ends."""
    parts = ["set -euo pipefail",
             "trap 'edge-moe down >/dev/null 2>&1 || true' EXIT",
             f"__times={_q(str(times))}",
             '__elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" \'BEGIN { printf "%.1f", b - a }\'; }']
    step = 0
    for code, why in blocks:
        if why is not None:
            continue
        step += 1
        first = next((ln.strip() for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
        label = f"step {step} {first[:70]}"
        parts += [f"echo {_q('=== ' + label)}", "__t=$EPOCHREALTIME", code.rstrip("\n"),
                  f'echo "{_dq(label)}: $(__elapsed "$__t") s" | tee -a "$__times"']
    return "\n".join(parts) + "\n"


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _dq(s: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", s)


def test_the_page_has_bash_blocks_and_few_that_are_not_run() -> None:
    blocks = bash_blocks(PAGE.read_text())
    run = [c for c, why in blocks if why is None]
    skipped = [why for _, why in blocks if why is not None]
    assert len(run) >= 9, f"the tutorial's steps are bash blocks; found {len(run)}"
    assert len(skipped) <= 2 and all(skipped), skipped
    steps = "\n".join(run)
    for command in ("edge-moe export", "edge-moe calibrate", "edge-moe profile", "edge-moe plan",
                    "edge-moe deploy", "edge-moe query", "curl", "from openai import OpenAI", "/metrics",
                    "edge-moe down"):
        assert command in steps, f"the tutorial runs no {command!r}"
    # every not-run comment sits right before a bash block (else it skips nothing)
    assert PAGE.read_text().count("<!-- not run:") == len(skipped)


def test_the_extractor_keeps_order_and_reads_the_reasons() -> None:
    text = ("intro\n```bash\necho one\n```\n\n<!-- not run: needs a GPU -->\n```bash\nnvidia-smi\n```\n"
            "```python\nprint(2)\n```\n```bash\necho three\n```\n")
    assert bash_blocks(text) == [("echo one\n", None), ("nvidia-smi\n", "needs a GPU"), ("echo three\n", None)]
    s = script(bash_blocks(text), Path("/tmp/t"))
    assert "nvidia-smi" not in s and s.index("echo one") < s.index("echo three")


def _venv_bin() -> Path:
    own = REPO / ".venv" / "bin"
    return own if (own / "edge-moe").exists() else Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(TIMEOUT_S + 120)
def test_the_tutorial_runs(tmp_path: Path) -> None:
    times = tmp_path / "times.txt"
    work = tmp_path / "run"
    work.mkdir()
    (tmp_path / "tutorial.sh").write_text(script(bash_blocks(PAGE.read_text()), times))
    cache = os.environ.get("EDGE_MOE_CACHE") or str(Path.home() / ".cache" / "edge-moe")
    env = {**os.environ, "EDGE_MOE_CACHE": cache, "EDGE_MOE_STATE": str(tmp_path / "state"),
           "PATH": f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    log = tmp_path / "tutorial.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(tmp_path / "tutorial.sh")], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
        finally:
            # a killed script runs no trap: take down whatever it deployed (by its recorded PIDs)
            subprocess.run(["edge-moe", "down"], cwd=work, env=env, capture_output=True, timeout=120)
    text = log.read_text(errors="replace")
    steps = times.read_text().splitlines() if times.exists() else []
    total = sum(float(s.rsplit(": ", 1)[1].split()[0]) for s in steps)
    print("\n".join([*steps, f"total: {total:.1f} s"]))
    assert rc == 0, (f"the tutorial {'ran past ' + str(TIMEOUT_S) + ' s' if rc is None else f'exited {rc}'} "
                     f"after {len(steps)} steps:\n{text[-8000:]}")
    n_run = sum(why is None for _, why in bash_blocks(PAGE.read_text()))
    assert len(steps) == n_run, steps
    assert re.search(r"^edge_moe_requests_total\{", text, re.M), "no request counted in /metrics"
    assert (work / "out" / "tutorial" / "plans" / "plan.json").is_file()
