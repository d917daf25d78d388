"""Where edge-moe keeps its files: the one reader of ``EDGE_MOE_CACHE`` and ``EDGE_MOE_STATE``.

::

    $EDGE_MOE_CACHE                 (default ~/.cache/edge-moe)
        assets/<name>/               offline model and data packages, joined and hashed
        artifacts/<name>/<precision>/ exported ONNX / TensorRT artifacts with their manifest
        demo/                        the demo's gate, calibration table and profiles
    $EDGE_MOE_STATE                 (default $EDGE_MOE_CACHE/fleet)
        <fleet>.json                 one record per deployed fleet (status, down)
    configs/                        (in the repository) fleets, device classes, category maps

Every function reads the environment when called, so a test may point it elsewhere with
``monkeypatch.setenv``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGE_MOE_CACHE"
STATE_ENV = "EDGE_MOE_STATE"


def _shipped(name: str, in_checkout: str) -> Path:
    """A data folder the CLI's defaults read: the checkout's when this runs from one (a
    clone, an editable install), else the copy a built wheel carries in ``edge_moe/_data``
    (setup.py puts it there)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / in_checkout
    return checkout if checkout.is_dir() else here / "_data" / name


# configs/: fleets, device classes, category maps, the synthetic example table
CONFIGS = _shipped("configs", "configs")
# the committed MMLU calibration table (and its samples) the real demo plans on
MMLU_TABLES = _shipped("mmlu", "benchmarks/results/mmlu")


def cache_dir() -> Path:
    """The root of every cached download, conversion and export."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-moe"


def artifacts_dir() -> Path:
    """``$EDGE_MOE_CACHE/artifacts``: relative artifact paths in a fleet YAML start here."""
    return cache_dir() / "artifacts"


def demo_dir() -> Path:
    """Where ``make demo`` writes the gate, calibration table and profiles it deploys with."""
    return cache_dir() / "demo"


DEMO_INPUT_DIRS = {"demo": "", "demo-real": "real"}  # demo fleet name → its folder under demo_dir()


def demo_inputs_dir(fleet_name: str) -> Path:
    """The folder holding the demo's planner files for the fleet named ``fleet_name``: the
    heterogeneous demo (``demo-real``, what ``make demo`` runs) writes ``demo/real/``, the
    small SmolLM2 demo ``demo/``; any other fleet has no demo files (``demo/<name>`` is named
    so the error says where they would be)."""
    return demo_dir() / DEMO_INPUT_DIRS.get(fleet_name, fleet_name)


def state_dir() -> Path:
    """``$EDGE_MOE_STATE``, else ``$EDGE_MOE_CACHE/fleet``: deployment records."""
    env = os.environ.get(STATE_ENV)
    return Path(env).expanduser() if env else cache_dir() / "fleet"
