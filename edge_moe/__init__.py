"""edge-moe: collaborative mixture-of-edge-experts (MoE²) inference."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-moe")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0.0.0+unknown"
