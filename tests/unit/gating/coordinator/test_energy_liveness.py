"""Energy meters (modelled maths, zeus fallback) and Paranoid Pirate bookkeeping with a
hand-stepped clock."""

from __future__ import annotations

import sys
import types

import pytest

from edge_moe.config import CoordinatorConfig, DeviceClass
from edge_moe.energy import ModelledMeter, ZeusMeter, make_meter
from edge_moe.errors import ConfigError
from edge_moe.runtime.liveness import Backoff, HeartbeatTimer, Liveness, from_config
from edge_moe.wire import ExpertInfo, Ready
from gating.coordinator.registry import Registry

CPU = DeviceClass("cpu", 5.0, 15.0, "test")
GPU = DeviceClass("rtx", 25.0, 450.0, "test", energy_counters=("nvml",))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_modelled_meter_is_busy_power_times_busy_time():
    clock = Clock()
    meter = ModelledMeter(CPU, clock=clock)
    w = meter.begin()
    clock.t += 0.250
    r = meter.end(w)
    assert r.energy_j == pytest.approx(15.0 * 0.250) and r.busy_s == pytest.approx(0.25)
    assert r.source == meter.source == "modelled"


def test_modelled_meter_refuses_a_class_without_busy_power():
    with pytest.raises(ConfigError, match="power_busy_w=0"):
        ModelledMeter(DeviceClass("off", 0.0, 0.0, "x"))


def test_no_counters_means_modelled_without_trying_zeus():
    m = make_meter(CPU)
    assert isinstance(m, ModelledMeter) and m.fallback_reason == ""


def test_zeus_missing_falls_back_to_modelled(monkeypatch):
    monkeypatch.setitem(sys.modules, "zeus", None)  # import zeus raises ImportError
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    m = make_meter(GPU)
    assert isinstance(m, ModelledMeter) and m.source == "modelled"
    assert "zeus cannot read 'nvml'" in m.fallback_reason and "ModuleNotFoundError" in m.fallback_reason


def _fake_zeus(monkeypatch, monitor_cls):
    zeus = types.ModuleType("zeus")
    mon = types.ModuleType("zeus.monitor")
    mon.ZeusMonitor = monitor_cls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", mon)


def test_nvml_library_not_found_falls_back(monkeypatch):
    class NVMLError_LibraryNotFound(Exception):  # noqa: N801  (pynvml's name)
        pass

    class Monitor:
        def __init__(self, **_):
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    _fake_zeus(monkeypatch, Monitor)
    m = make_meter(GPU)
    assert isinstance(m, ModelledMeter)
    assert "NVMLError_LibraryNotFound" in m.fallback_reason


def test_working_zeus_is_measured_with_its_counter(monkeypatch):
    class Measurement:
        total_energy = 12.5
        time = 0.1

    class Monitor:
        def __init__(self, **_):
            self.open: set[str] = set()

        def begin_window(self, name):
            self.open.add(name)

        def end_window(self, name):
            self.open.remove(name)
            return Measurement()

    _fake_zeus(monkeypatch, Monitor)
    m = make_meter(GPU)
    assert isinstance(m, ZeusMeter) and m.source == "measured:nvml"
    r = m.end(m.begin())
    assert (r.energy_j, r.busy_s, r.source) == (12.5, 0.1, "measured:nvml")
    assert isinstance(make_meter(GPU, prefer="modelled"), ModelledMeter)
    with pytest.raises(ConfigError, match="unknown energy meter preference"):
        make_meter(GPU, prefer="psychic")


def test_liveness_expires_after_the_window_and_beats_extend_it():
    live = Liveness(heartbeat_s=1.0, liveness=3, now=0.0)
    assert not live.expired(3.0) and live.expired(3.01)
    live.beat(2.0)
    assert not live.expired(4.9) and live.expired(5.1)
    live.beat(1.0)  # an old timestamp never moves it back
    assert live.expires_at == 5.0


def test_heartbeat_timer():
    hb = HeartbeatTimer(0.5, now=10.0)
    assert not hb.due(10.49) and hb.due(10.5)
    hb.sent(10.6)
    assert not hb.due(11.0) and hb.due(11.1)


def test_backoff_doubles_to_the_cap_and_resets():
    b = Backoff(0.5, 8.0)
    assert [b.delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.delay() == 0.5


def test_from_config_and_bad_settings():
    cfg = CoordinatorConfig(node="x", heartbeat_s=0.25, liveness=4, reconnect_min_s=0.1, reconnect_max_s=0.3)
    live, hb, back = from_config(cfg, now=0.0)
    assert live.window_s == 1.0 and hb.interval_s == 0.25 and [back.delay() for _ in range(3)] == [0.1, 0.2, 0.3]
    with pytest.raises(ConfigError):
        Liveness(0.0, 3, 0.0)
    with pytest.raises(ConfigError):
        Backoff(2.0, 1.0)


def _ready(node: str, *experts: str) -> Ready:
    return Ready(node, tuple(ExpertInfo(e, "onnxruntime", "fp32") for e in experts), "cpu", "modelled")


def test_registry_joins_expires_and_replaces_on_reconnect():
    reg = Registry(heartbeat_s=1.0, liveness=3)
    reg.ready(b"id-a", _ready("a", "e1", "e2"), now=0.0)
    reg.ready(b"id-b", _ready("b", "e3"), now=0.0)
    assert reg.live_experts == ("e1", "e2", "e3")
    assert reg.beat(b"id-a", 2.5) is not None and reg.beat(b"stranger", 2.5) is None
    assert reg.expire(3.0) == [] and reg.next_expiry() == 3.0
    dead = reg.expire(3.1)
    assert [d.name for d in dead] == ["b"] and reg.live_experts == ("e1", "e2")
    reg.ready(b"id-a2", _ready("a", "e1"), now=4.0)  # node a reconnected with a new identity
    assert b"id-a" not in reg and b"id-a2" in reg and reg.live_experts == ("e1",)
    assert reg.node_of("e1").identity == b"id-a2" and reg.node_of("e2") is None
