"""`calibrate --fleet` without Ray: runners that time themselves on their node.

The fake remote runners answer like :class:`edge_moe.fleet.remote.FleetRunner` (node-side
ms, node, device class); the test checks that the table and latency sidecar carry the
node's figures (not the wall time here), where each expert was timed, and that
``build_profiles`` then calls them measured on the expert's own device class rather than
projecting from this machine's. The real path through Ray and namespaces is in
``tests/integration/multihost``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_moe.config import load_device_classes
from edge_moe.errors import ConfigError
from edge_moe.jobs.calibrate import calibrate, load_latency
from edge_moe.jobs.generation import GenerationCall
from edge_moe.jobs.profile import Placement, build_profiles
from edge_moe.paths import CONFIGS
from edge_moe.runtime.toy import ToyEncoder, ToyExpert

NODE_MS = {"fast": 7.0, "slow": 41.0}


class NodeRunner:
    """Scores like a toy expert; reports a fixed node-side ms, as a node actor would."""

    def __init__(self, name: str, node: str, device_class: str) -> None:
        self.toy, self.node, self.device_class = ToyExpert(name), node, device_class
        self.scored = 0

    def score_timed(self, prompt: str, options: list[str], mode: str = "letter") -> tuple[list[float], float, int]:
        self.scored += 1
        return list(self.toy.score_options(prompt, options, mode)), NODE_MS[self.node], 11

    def measure_generation(self, plan: list[Any]) -> list[GenerationCall]:
        return [GenerationCall(p.category, p.max_new_tokens, p.max_new_tokens, NODE_MS[self.node] * (1 + p.max_new_tokens))
                for p in plan]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "q.jsonl"
    with p.open("w") as fh:
        for i in range(12):
            fh.write(json.dumps({"question": f"Q{i}: which?", "options": ["a", "b", "c", "d"], "label": i % 4,
                                 "category": ["stem", "humanities"][i % 2], "id": f"q{i}"}) + "\n")
    return p


def test_fleet_calibration_records_node_figures_and_profiles_measure_them(tmp_path: Path, data: Path) -> None:
    remote = {"e-fast": NodeRunner("e-fast", "fast", "jetson-agx-orin"), "e-slow": NodeRunner("e-slow", "slow", "cpu")}
    table, lat_p = calibrate(tmp_path / "work", [], out=tmp_path / "t.npz", dataset=str(data), per_topic=None,
                             progress=False, remote=remote, embedder=ToyEncoder(16), generation_prompts=1,
                             generation_tokens=4)
    lat = load_latency(lat_p)
    assert lat["measured_on"] == {"e-fast": {"node": "fast", "device_class": "jetson-agx-orin"},
                                  "e-slow": {"node": "slow", "device_class": "cpu"}}
    for e, r in remote.items():
        assert r.scored == 12
        for c in lat["experts"][e]["categories"].values():
            assert c["p50_ms"] == c["p95_ms"] == NODE_MS[r.node]  # the node's ms, not the wall time here
            assert c["mean_tokens"] == 11
        assert {call["ms"] for call in lat["experts"][e]["generation"]["calls"]} <= \
            {NODE_MS[r.node] * 2, NODE_MS[r.node] * 5}
    assert np.load(table)["logprobs"].shape[:2] == (12, 2)
    classes = load_device_classes(CONFIGS / "device_classes.yaml")
    places = {"e-fast": Placement("fast", classes["jetson-agx-orin"]), "e-slow": Placement("slow", classes["cpu"])}
    prof = build_profiles(lat, places, classes["cpu"], latency_file=str(lat_p))
    fast = next(p for p in prof.experts if p.name == "e-fast")
    assert {f.source for f in fast.latency_ms.values()} == {"measured"}  # not projected from this CPU
    assert {f.value for f in fast.latency_ms.values()} == {NODE_MS["fast"]}
    # the expert moved to another class since it was timed: say so, do not project silently
    with pytest.raises(ConfigError, match=r"e-fast was timed on node fast \(jetson-agx-orin\), but is placed on"):
        build_profiles(lat, {**places, "e-fast": Placement("fast", classes["cpu"])}, classes["cpu"])
    # resumable: a rerun scores nothing again
    calibrate(tmp_path / "work", [], out=tmp_path / "t.npz", dataset=str(data), per_topic=None, progress=False,
              remote=remote, embedder=ToyEncoder(16), generation_prompts=1, generation_tokens=4)
    assert all(r.scored == 12 for r in remote.values())
