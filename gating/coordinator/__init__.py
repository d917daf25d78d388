"""The serving coordinator (see :mod:`gating.coordinator.loop`)."""

from gating.coordinator.loop import DEFAULT_DEADLINE_MS, Coordinator, _encoder, main

__all__ = ["DEFAULT_DEADLINE_MS", "Coordinator", "_encoder", "main"]
