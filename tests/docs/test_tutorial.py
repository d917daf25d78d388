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

import re
from pathlib import Path

import pytest

from tests.docs.blocks import REPO, bash_blocks, run_script, script, total_s

PAGE = REPO / "docs" / "howto" / "experts.md"
TIMEOUT_S = 1500  # the whole script; ~5 min on 2 quiet cores with the exports cached


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


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(TIMEOUT_S + 120)
def test_the_tutorial_runs(tmp_path: Path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    rc, text, steps = run_script(script(bash_blocks(PAGE.read_text()), tmp_path / "times.txt"),
                                 tmp_path, work, TIMEOUT_S)
    print("\n".join([*steps, f"total: {total_s(steps):.1f} s"]))
    assert rc == 0, (f"the tutorial {'ran past ' + str(TIMEOUT_S) + ' s' if rc is None else f'exited {rc}'} "
                     f"after {len(steps)} steps:\n{text[-8000:]}")
    n_run = sum(why is None for _, why in bash_blocks(PAGE.read_text()))
    assert len(steps) == n_run, steps
    assert re.search(r"^edge_moe_requests_total\{", text, re.M), "no request counted in /metrics"
    assert (work / "out" / "tutorial" / "plans" / "plan.json").is_file()
