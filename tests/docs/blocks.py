"""Running a page's ``bash`` blocks as one script, as a reader would type them: shared by the
tutorial test and the README-path test.

A block right after ``<!-- not run: why -->`` is left out, and says why. The script is
``set -euo pipefail`` with a ``trap`` that takes any fleet down however it ends; each step
prints its wall time into a file, and :func:`run_script` takes the fleet down once more after
the script (a killed script runs no trap), so no Ray head is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$", re.S)


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


def venv_bin() -> Path:
    """The venv whose ``edge-moe`` the scripts run: the checkout's ``.venv``, else this Python's."""
    own = REPO / ".venv" / "bin"
    return own if (own / "edge-moe").exists() else Path(sys.executable).parent


def run_script(text: str, folder: Path, work: Path, timeout_s: float) -> tuple[int | None, str, list[str]]:
    """Run ``text`` (from :func:`script`, timing into ``folder/times.txt``) with bash in ``work``,
    with the real model cache (``$EDGE_MOE_CACHE``, else ``~/.cache/edge-moe``: exports are
    reused), a private ``$EDGE_MOE_STATE`` and the venv first on ``PATH``.

    Returns (the exit code, or None when it ran past ``timeout_s``; its output; the step times).
    """
    (folder / "script.sh").write_text(text)
    cache = os.environ.get("EDGE_MOE_CACHE") or str(Path.home() / ".cache" / "edge-moe")
    env = {**os.environ, "EDGE_MOE_CACHE": cache, "EDGE_MOE_STATE": str(folder / "state"),
           "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    for var in ("VIRTUAL_ENV", "PYTEST_CURRENT_TEST", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(var, None)  # a make run inside `make test` is a make of its own
    log = folder / "script.log"
    rc: int | None
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(folder / "script.sh")], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
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
    times = folder / "times.txt"
    steps = times.read_text().splitlines() if times.exists() else []
    return rc, log.read_text(errors="replace"), steps


def total_s(steps: list[str]) -> float:
    """The sum of the step times :func:`script` wrote."""
    return sum(float(s.rsplit(": ", 1)[1].split()[0]) for s in steps)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _dq(s: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", s)
