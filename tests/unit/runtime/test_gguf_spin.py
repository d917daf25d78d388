"""How llama.cpp's threads wait at ggml's barrier (:mod:`edge_moe.runtime.gguf_start`): the
runner sets libgomp's spin count before llama.cpp loads, unless the environment chose; each
case in a fresh process, since libgomp reads the variables once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_moe.errors import RunnerError
from edge_moe.runtime.gguf_start import DEFAULT_SPIN, import_llama_cpp

REPO = Path(__file__).resolve().parents[3]
PROBE = """
import json, os, sys
from edge_moe.errors import RunnerError
from edge_moe.runtime.gguf_start import import_llama_cpp, spin_in_effect
try:
    import_llama_cpp(json.loads(sys.argv[1]))
except RunnerError:  # llama-cpp-python not installed: the variables are set before the import
    pass
print(json.dumps([os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"), spin_in_effect()]))
"""


def _probe(spin: int | None, **env: str) -> list:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(spin)], env={**clean, **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.parametrize(("spin", "env", "want"), [
    (None, {}, [str(DEFAULT_SPIN), "PASSIVE", DEFAULT_SPIN]),
    (300, {}, ["300", "PASSIVE", 300]),
    (0, {}, ["0", "PASSIVE", 0]),
    (300, {"OMP_WAIT_POLICY": "ACTIVE"}, [None, "ACTIVE", "ACTIVE"]),  # the environment wins
    (300, {"GOMP_SPINCOUNT": "5000"}, ["5000", None, 5000]),
], ids=["default", "set", "zero", "env-policy", "env-count"])
def test_the_spin_count_reaches_libgomp_unless_the_environment_chose(spin, env, want) -> None:
    assert _probe(spin, **env) == want


def test_a_negative_spin_is_refused_with_its_value() -> None:
    with pytest.raises(RunnerError, match="spin must be >= 0 \\(got -3\\)"):
        import_llama_cpp(-3)
