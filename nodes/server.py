"""The expert node server, by its public names: a ZeroMQ worker that hosts experts and
answers TASKs. The parts live in one module per concept:

- :mod:`nodes.loop`: :class:`NodeServer`, the Paranoid Pirate I/O loop and its worker;
- :mod:`nodes.scheduler`: the bounded queue and dynamic batching;
- :mod:`nodes.execution`: running TASKs on runners, and the one error policy;
- :mod:`nodes.load`: what the node reports in HEARTBEATs;
- :mod:`nodes.build`: building the experts and the node from a fleet config.

Run one with ``edge-moe node --config configs/fleet.local.yaml --node cpu-a``.
"""

from __future__ import annotations

from nodes.build import backend_endpoint, build_experts, build_server
from nodes.error_policy import error_for
from nodes.execution import Executor, HostedExpert
from nodes.load import LOAD_ALPHA, NodeLoad
from nodes.loop import NodeServer
from nodes.scheduler import MAX_QUEUE, Scheduler

__all__ = ["LOAD_ALPHA", "MAX_QUEUE", "Executor", "HostedExpert", "NodeLoad", "NodeServer", "Scheduler",
           "backend_endpoint", "build_experts", "build_server", "error_for"]
