"""The built wheel works outside the repository: installed into a fresh venv and run from an
empty folder, `edge-moe --version` and `edge-moe plan --example` (the synthetic example table
the wheel carries) work, and the packaged configs are the repository's.

Slow (a venv and its dependencies: torch from the local wheel file, the rest from pip's
cache after `make install`); SKIP_SLOW=1 skips it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_runs_plan_from_an_empty_folder(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(dist)], tmp_path)
    (wheel,) = dist.glob("edge_moe-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], tmp_path)  # the local CPU wheel first
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[train,plan]"], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exe = str(env_dir / "bin" / "edge-moe")
    version = _run([exe, "--version"], elsewhere).stdout.strip()
    assert version.startswith("edge-moe ") and "unknown" not in version
    out = _run([exe, "plan", "--example", "--energy-j", "2", "--out-dir", "plans"], elsewhere)
    plan = json.loads((elsewhere / "plans" / "plan.json").read_text())
    assert plan and "wrote" in out.stdout
    where = _run([str(py), "-c", "import edge_moe.paths as p; print(p.CONFIGS); print(p.MMLU_TABLES)"], elsewhere)
    configs, mmlu = (Path(x) for x in where.stdout.split())
    assert "_data" in configs.parts and str(REPO) not in str(configs)  # the wheel's copy, not the checkout
    assert (configs / "fleet.demo.yaml").read_text() == (REPO / "configs" / "fleet.demo.yaml").read_text()
    assert (mmlu / "calibration.npz").stat().st_size == (REPO / "benchmarks/results/mmlu/calibration.npz").stat().st_size
