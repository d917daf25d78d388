"""What a node reports in its HEARTBEATs (:class:`nodes.load.NodeLoad`), by hand."""

from __future__ import annotations

import threading

import pytest

from edge_moe.errors import ConfigError
from edge_moe.wire import Heartbeat, Result, Task
from nodes.load import NodeLoad


def test_node_load_moving_averages_by_hand():
    load = NodeLoad(alpha=0.5)
    opt, gen = Task("a", "e", "p", 1.0, ("x", "y")), Task("b", "e", "p", 1.0, None)
    assert load.heartbeat("n") == Heartbeat("n", 0, {}, {})
    load.observe(opt, Result("a", "e", 100.0, 0.0, "modelled", (0.0,)))
    load.observe(opt, Result("a", "e", 200.0, 0.0, "modelled", (0.0,)))
    load.observe(gen, Result("b", "e", 90.0, 0.0, "modelled", None, "t", 3))
    load.observe(gen, Result("b", "e", 10.0, 0.0, "modelled", None, "", 0))  # 0 tokens: ms / 1
    hb = load.heartbeat("n")
    assert hb.service_ms == {"e": 150.0} and hb.token_ms == {"e": 20.0}
    hb.service_ms["e"] = -1.0  # a snapshot: the node's figures are not shared
    assert load.heartbeat("n").service_ms == {"e": 150.0}
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="alpha"):
            NodeLoad(bad)


def test_node_load_counts_across_threads():
    load = NodeLoad()
    n = 20_000

    def accept() -> None:
        for _ in range(n):
            load.accepted()

    def answer() -> None:
        for _ in range(n):
            load.answered()

    threads = [threading.Thread(target=f) for f in (accept, answer, accept, answer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert load.heartbeat("n").queued == 0
    accept()
    assert load.heartbeat("n").queued == n


