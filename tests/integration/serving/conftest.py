"""Fixtures for the serving path: synthetic planner inputs, a fitted toy gate, a fleet YAML,
and real processes (coordinator + nodes) on loopback with random ports.

Every process is started with ``python -m`` (the real entry points), killed at teardown,
and every wait has a hard timeout.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.toyfleet import DIM, HEARTBEAT_S, LIVENESS, NODES, Assets

REPO = Path(__file__).resolve().parents[3]
__all__ = ["DIM", "HEARTBEAT_S", "LIVENESS", "NODES", "REPO", "Assets", "Fleet", "Proc", "start_fleet"]


class Proc:
    """A child process whose output lines are read on a thread (so waits can time out)."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.args = args
        self.p = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.log.append(line)
            self.lines.put(line)

    def expect(self, prefix: str, timeout_s: float = 30.0) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        raise AssertionError(f"{self.args[0]} did not print {prefix!r} in {timeout_s} s; "
                             f"alive={self.alive}; output:\n{''.join(self.log)}")

    @property
    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.alive:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=10)

    def terminate(self) -> None:
        if self.alive:
            self.p.terminate()
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Fleet:
    assets: Assets
    coordinator: Proc
    frontend: str
    backend: str
    nodes: dict[str, Proc] = field(default_factory=dict)

    def start_node(self, name: str, delay_ms: float = 0.0) -> Proc:
        proc = Proc(["edge_moe.cli", "node", "--config", str(self.assets.fleet), "--node", name, "--toy",
                     "--toy-delay-ms", str(delay_ms), "--backend", self.backend, "--meter", "modelled"])
        proc.expect(f"node {name} serving")
        self.nodes[name] = proc
        return proc

    def stop(self) -> None:
        for p in [*self.nodes.values(), self.coordinator]:
            p.terminate()


def start_fleet(assets: Assets, delays: dict[str, float] | None = None) -> Fleet:
    coord = Proc(["edge_moe.cli", "coordinator", "--config", str(assets.fleet), "--gate", str(assets.gate),
                  "--calibration", str(assets.calibration), "--profiles", str(assets.profiles),
                  "--toy-encoder", str(DIM), "--frontend", "tcp://127.0.0.1:*",
                  "--backend", "tcp://127.0.0.1:*"])
    line = coord.expect("coordinator frontend").split()
    fleet = Fleet(assets, coord, line[2], line[4])
    try:
        for name in NODES:
            fleet.start_node(name, (delays or {}).get(name, 0.0))
    except BaseException:
        fleet.stop()
        raise
    return fleet


@pytest.fixture(scope="module")
def fleet(assets: Assets):
    f = start_fleet(assets)
    yield f
    f.stop()
