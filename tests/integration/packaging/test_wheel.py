"""The built wheel works outside the repository: installed into a fresh venv and run from an
empty folder, `edge-moe --version`, `edge-moe plan --example` (the synthetic example table
the wheel carries) and the small demo (`edge-moe demo --demo-fleet smollm2`: export or cache,
plan, deploy on embedded Ray, query, down) work, and the packaged configs are the repository's.

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

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(1800)]


def _run(cmd: list[str], cwd: Path, timeout: float = 900, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel and the extras the small demo needs; its folder."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(dist)], tmp_path)
    (wheel,) = dist.glob("edge_moe-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], tmp_path)  # the local CPU wheel first
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[train,plan,export,http]"], tmp_path)
    return env_dir


def test_the_wheel_runs_plan_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    env_dir = installed
    py = env_dir / "bin" / "python"
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


def test_the_wheel_runs_the_small_demo_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = os.environ.get("EDGE_MOE_CACHE") or str(Path.home() / ".cache" / "edge-moe")
    out = _run([str(installed / "bin" / "edge-moe"), "demo", "--demo-fleet", "smollm2"], elsewhere, timeout=1500,
               EDGE_MOE_CACHE=cache, EDGE_MOE_STATE=str(tmp_path / "state"))
    text = out.stdout + out.stderr
    assert "accuracy" in text.lower(), text[-3000:]
    # its plans and plot go where it was run from (--plan-dir, default out/demo), not into the package
    assert (elsewhere / "out" / "demo" / "plans.json").is_file() and (elsewhere / "out" / "demo" / "tradeoffs.png").is_file()
