"""The sandbox that scores HumanEval completions in benchmarks/freetext_mixture.py (no models).

A passing completion passes, a failing one fails, an infinite loop is killed by the wall-clock
limit, a missing module fails, a memory hog hits RLIMIT_AS, and the guard disables os.system.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "freetext_mixture.py"

PROBLEM = {
    "task_id": "Toy/0",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


@pytest.fixture(scope="module")
def fm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("freetext_mixture", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["freetext_mixture"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_a_correct_completion_passes(fm: ModuleType) -> None:
    r = fm.run_check(fm.check_program(PROBLEM, "    return a + b\n"))
    assert r.passed and r.outcome == "passed"


def test_a_wrong_completion_fails(fm: ModuleType) -> None:
    r = fm.run_check(fm.check_program(PROBLEM, "    return a - b\n"))
    assert not r.passed and r.outcome.startswith("failed")


def test_a_syntax_error_fails(fm: ModuleType) -> None:
    assert not fm.run_check(fm.check_program(PROBLEM, "    return a +\n")).passed


def test_an_infinite_loop_is_killed_by_the_time_limit(fm: ModuleType) -> None:
    t0 = time.perf_counter()
    r = fm.run_check(fm.check_program(PROBLEM, "    while True:\n        pass\n"), timeout_s=1.0)
    assert not r.passed and r.outcome == "timeout"
    assert time.perf_counter() - t0 < 10


def test_a_missing_module_fails(fm: ModuleType) -> None:
    r = fm.run_check(fm.check_program(PROBLEM, "    import no_such_module_xyz\n    return a + b\n"))
    assert not r.passed and r.outcome.startswith("failed")


def test_a_memory_hog_fails(fm: ModuleType) -> None:
    r = fm.run_check(fm.check_program(PROBLEM, "    x = bytearray(1 << 31)\n    return a + b\n"),
                     memory_bytes=256 << 20)
    assert not r.passed


def test_the_guard_disables_os_system(fm: ModuleType) -> None:
    r = fm.run_check(fm.check_program(PROBLEM, "    import os\n    os.system('true')\n    return a + b\n"))
    assert not r.passed


def test_stdout_is_discarded_and_a_print_still_passes(fm: ModuleType) -> None:
    r = fm.run_check(fm.check_program(PROBLEM, "    print('x' * 100000)\n    return a + b\n"))
    assert r.passed
