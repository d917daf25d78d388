"""The README's path, as a new user walks it: install, ``make demo``, the commands the README
gives right after the demo (deploy the demo fleet, status, query by ZeroMQ, down), the "your
own experts" block, then the tutorial (``docs/howto/experts.md``), in that order, as one bash
script (:mod:`tests.docs.blocks`).

Each README ``bash`` block is run as written, with two rules, both stated in the script:
``make test`` and ``make test-fast`` lines are left out (this test is part of the suite they
run), and a command line the README already gave (the Install section repeats the opening
``make demo``) is not run twice.

The script runs in a folder of links to the checkout's top-level entries (so the README's
relative paths, ``.venv/bin/edge-moe`` and ``configs/``, resolve as in the repo root, and what
the commands write, ``cal/``, ``plans/``, stays out of the checkout). In CI that checkout is a
fresh clone; ``bash .ci/readme-path`` does the same from a fresh clone of HEAD by hand.
Cold (empty model cache), ``make demo`` exports for about 20 minutes; warm, the whole path
takes about 12. Slow: ``SKIP_SLOW=1`` skips it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.docs.blocks import REPO, bash_blocks, run_script, script, total_s

README = REPO / "README.md"
TUTORIAL = REPO / "docs" / "howto" / "experts.md"
TIMEOUT_S = 3000  # cold: ~20 min of exports for make demo, then ~15 min of steps
SUITE = re.compile(r"^\s*make\s+test(-fast)?\b")


def readme_path(readme: str, tutorial: str) -> list[tuple[str, str | None]]:
    """The blocks the path runs, in order: ``make install``, the README's bash blocks under the
    two rules of the module docstring, then the tutorial's."""
    seen: set[str] = set()
    blocks: list[tuple[str, str | None]] = [("make install\n", None)]
    for code, why in bash_blocks(readme):
        kept = []
        for line in code.splitlines():
            command = line.split("#", 1)[0].strip() if line.lstrip().startswith("make ") else line.strip()
            if SUITE.match(line) or (command and command in seen):
                continue
            if command:
                seen.add(command)
            kept.append(line)
        if any(ln.strip() and not ln.lstrip().startswith("#") for ln in kept):
            blocks.append(("\n".join(kept) + "\n", why))
    return blocks + bash_blocks(tutorial)


def test_the_path_keeps_the_readme_order_and_runs_the_demo_once() -> None:
    blocks = [code for code, why in readme_path(README.read_text(), TUTORIAL.read_text()) if why is None]
    text = "\n".join(blocks)
    assert text.count("make demo") == 1
    assert not any(SUITE.match(ln) for ln in text.splitlines())
    order = [text.index(s) for s in ("make install", "make demo", "edge-moe deploy configs/fleet.demo",
                                     "edge-moe query", "edge-moe export", "edge-moe plan")]
    assert order == sorted(order), order
    tutorial_first = bash_blocks(TUTORIAL.read_text())[0][0]
    assert text.index(tutorial_first) > order[-1]  # the tutorial comes after the README's own steps


def test_the_rules_on_a_planted_readme() -> None:
    readme = ("```bash\nmake demo   # main job\nmake test   # tests\n```\n"
              "```bash\nmake demo        # again\nmake test-fast\n```\n"
              "```bash\nedge-moe status\n```\n")
    got = [c for c, _ in readme_path(readme, "```bash\necho tutorial\n```\n")]
    assert got == ["make install\n", "make demo   # main job\n", "edge-moe status\n", "echo tutorial\n"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(TIMEOUT_S + 180)
def test_the_readme_path_runs(tmp_path: Path) -> None:
    # install in the checkout itself first, so the script's `make install` finds it current: pip run
    # through the links would write the links' path into the venv's scripts (their #! line)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV")}
    done = subprocess.run(["make", "install"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"make install failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    work = tmp_path / "repo"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".pytest_cache"):
            (work / entry.name).symlink_to(entry)
    blocks = readme_path(README.read_text(), TUTORIAL.read_text())
    rc, text, steps = run_script(script(blocks, tmp_path / "times.txt"), tmp_path, work, TIMEOUT_S)
    print("\n".join([*steps, f"total: {total_s(steps):.1f} s"]))
    assert rc == 0, (f"the README path {'ran past ' + str(TIMEOUT_S) + ' s' if rc is None else f'exited {rc}'} "
                     f"after {len(steps)} steps:\n{text[-8000:]}")
    assert len(steps) == sum(why is None for _, why in blocks), steps
    assert (REPO / ".venv" / "bin" / "edge-moe").read_text().startswith(f"#!{REPO}") or not (REPO / ".venv").exists()
    assert (work / "plans" / "plan.json").is_file() and (work / "cal" / "mmlu.npz").is_file()
    assert re.search(r"^edge_moe_requests_total\{", text, re.M), "the tutorial counted no request in /metrics"
