"""Energy meters: joules per request, measured where counters exist, modelled elsewhere.

docs/design.md §4. Every reading says where it came from:

- ``"modelled"``: :class:`ModelledMeter`, the node's device-class busy power (W) times the
  measured busy time (s). This machine has no RAPL, NVML or GPU, so this is what runs here.
- ``"measured:<counter>"``: :class:`ZeusMeter`, a zeus (ml-energy) ``ZeusMonitor`` window
  over NVML GPUs, RAPL CPUs or Jetson rails, e.g. ``"measured:nvml"``.

:func:`make_meter` picks one: zeus only when the device class lists energy counters, zeus
imports and its monitor starts; any failure (``NVMLError_LibraryNotFound`` here) is
caught, logged, and the modelled meter is used with the reason kept in
``meter.fallback_reason``.

Usage (one window at a time per meter; the node serves tasks one by one)::

    meter = make_meter(device_class)
    window = meter.begin()
    ...compute...
    reading = meter.end(window)      # EnergyReading(energy_j, busy_s, source)
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from edge_moe.config import DeviceClass
from edge_moe.errors import ConfigError

logger = logging.getLogger(__name__)

MODELLED = "modelled"
MEASURED_PREFIX = "measured:"


@dataclass(frozen=True)
class EnergyReading:
    """Energy of one busy window: ``energy_j`` joules over ``busy_s`` seconds."""

    energy_j: float
    busy_s: float
    source: str


class EnergyMeter(Protocol):
    """What a node needs from a meter."""

    source: str

    def begin(self) -> Any:
        """Start a window; return its handle."""

    def end(self, window: Any) -> EnergyReading:
        """Close the window and return its reading."""


class ModelledMeter:
    """Busy power × busy time, labelled "modelled".

    Args:
        device_class: its ``power_busy_w`` is the modelled draw while computing.
        clock: seconds, monotonic (tests pass a fake one).
    """

    source = MODELLED

    def __init__(self, device_class: DeviceClass, clock: Any = time.perf_counter) -> None:
        if not device_class.power_busy_w > 0:
            raise ConfigError(f"device class '{device_class.name}': power_busy_w="
                              f"{device_class.power_busy_w} must be > 0 to model energy")
        self.power_busy_w = float(device_class.power_busy_w)
        self.device_class = device_class.name
        self.fallback_reason = ""
        self._clock = clock

    def begin(self) -> float:
        return float(self._clock())

    def end(self, window: float) -> EnergyReading:
        busy_s = max(0.0, float(self._clock()) - window)
        return EnergyReading(self.power_busy_w * busy_s, busy_s, MODELLED)


class ZeusMeter:
    """A zeus ``ZeusMonitor`` window per request, labelled ``"measured:<counter>"``.

    Args:
        counter: "nvml", "rapl" or "jetson" (the device class's first energy counter).
        monitor: a started ``zeus.monitor.ZeusMonitor`` (see :func:`make_meter`).
    """

    def __init__(self, counter: str, monitor: Any) -> None:
        self.counter = counter
        self.source = MEASURED_PREFIX + counter
        self.fallback_reason = ""
        self._monitor = monitor
        self._names = itertools.count()

    def begin(self) -> str:
        name = f"edge-moe-{next(self._names)}"
        self._monitor.begin_window(name)
        return name

    def end(self, window: str) -> EnergyReading:
        m = self._monitor.end_window(window)
        return EnergyReading(float(m.total_energy), float(m.time), self.source)


def _zeus_monitor(counter: str) -> Any:
    """A ZeusMonitor for ``counter``; raises whatever zeus raises when it cannot."""
    from zeus.monitor import ZeusMonitor  # optional dependency: the `energy` extra

    if counter == "rapl":
        return ZeusMonitor(gpu_indices=[], cpu_indices=None)
    return ZeusMonitor()  # nvml / jetson: every visible device


def make_meter(device_class: DeviceClass, prefer: str = "auto") -> EnergyMeter:
    """The best meter this node can have.

    Args:
        device_class: the node's class; its ``energy_counters`` say what zeus may read.
        prefer: "auto" (zeus when possible), or "modelled" (never try zeus).

    Returns:
        A ZeusMeter when the class lists a counter and zeus starts; else a ModelledMeter
        whose ``fallback_reason`` says why zeus was not used ("" when none was wanted).

    Raises:
        ConfigError: ``prefer`` is unknown, or the class cannot be modelled.
    """
    if prefer not in ("auto", "modelled"):
        raise ConfigError(f"unknown energy meter preference {prefer!r}; choose 'auto' or 'modelled'")
    modelled = ModelledMeter(device_class)
    if prefer == "modelled" or not device_class.energy_counters:
        return modelled
    counter = device_class.energy_counters[0]
    try:
        monitor = _zeus_monitor(counter)
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, zeus's own errors
        modelled.fallback_reason = (f"zeus cannot read '{counter}' here "
                                    f"({type(exc).__name__}: {exc}); energy is modelled")
        logger.warning("%s", modelled.fallback_reason)
        return modelled
    logger.info("energy measured by zeus (%s) for device class %s", counter, device_class.name)
    return ZeusMeter(counter, monitor)
