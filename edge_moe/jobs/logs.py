"""The one logging setup (APEX): a stderr handler, a level from ``-v``, and the
third-party noise filter.

The ``edge-moe`` callback (:mod:`edge_moe.cli.common`) calls :func:`configure_logging`
once per run, before any command; scripts under ``benchmarks/`` call it from their
``main``. Library code only ever does ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOG_FORMAT", "THIRD_PARTY_LOGGERS", "configure_logging", "level_for", "quiet_loggers"]

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

# third-party loggers that are noise at our default levels (ray's start-up lines, the
# quantizer's line per MatMul, urllib3's retries)
THIRD_PARTY_LOGGERS = ("ray", "transformers", "torch", "onnxruntime", "onnxscript", "onnx_ir", "urllib3")


def level_for(verbosity: int) -> int:
    """0 → WARNING, 1 (``-v``) → INFO, 2 or more (``-vv``) → DEBUG."""
    return (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG


def configure_logging(verbosity: int = 0) -> None:
    """Root logger at :func:`level_for` ``(verbosity)``, writing :data:`LOG_FORMAT` lines to
    stderr; below ``-vv`` the :data:`THIRD_PARTY_LOGGERS` are quieted to ERROR.

    Like :func:`logging.basicConfig`, the handler is added only when the root logger has
    none (an embedding program or pytest keeps its own); the level is set either way.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level_for(verbosity))
    if verbosity < 2:
        quiet_loggers()
    else:  # -vv lifts the filter, also when an earlier call in this process set it
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def quiet_loggers() -> None:
    """The :data:`THIRD_PARTY_LOGGERS` to ERROR, in this process (a process the demo
    spawns calls it again: it starts with default logging)."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
