"""The exported gate at serving time: onnxruntime + numpy, no torch.

:class:`OnnxGate` loads a ``gate.onnx`` written by :func:`gating.planning.gate.export_gate_onnx`,
rebuilds the gate's record from the ONNX ``metadata_props`` (experts, option prior,
per-expert temperatures, embedding dim) and computes gate logits and masked weights for
the coordinator::

    gate = OnnxGate.load("artifacts/gate.onnx")
    w = gate.weights(embeddings, mask)                     # (M, N), zeros outside S
    lp = apply_temperature(apply_prior_correction(expert_logprobs, gate.prior), gate.temperature)

``edge_moe.temperature`` (a JSON list, one positive T per expert) is optional: a record
written before temperatures existed loads with T = 1 for every expert, which leaves the
prior-corrected log-probs as they were.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_moe.errors import GateError, SelectionError

logger = logging.getLogger(__name__)


def as_mask(mask: np.ndarray | Sequence[bool] | None, n: int) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool or m.shape != (n,):
        raise SelectionError(f"mask must be a bool array of shape ({n},), got {m.dtype} {m.shape}")
    return m


def masked_gate_weights(
    gate_logits: np.ndarray, mask: np.ndarray | Sequence[bool] | None = None
) -> np.ndarray:
    """Softmax of the gate logits over the experts in S, zeros outside S.

    The one implementation: :mod:`gating.planning.mixture` (and so the planner's F(S)) and the
    router's per-query weights (:mod:`gating.coordinator.routing`) call it.

    Args:
        gate_logits: (M, N) gate logits.
        mask: (N,) bool, True for experts in S; None means every expert.

    Returns:
        (M, N) float64 weights; each row sums to 1 over S. An empty S gives all zeros.
    """
    g = np.asarray(gate_logits, dtype=np.float64)
    if g.ndim != 2:
        raise SelectionError(f"gate_logits must be (M, N), got shape {g.shape}")
    if mask is None and g.shape[1]:  # S is every expert: no gather, no scatter
        e = np.exp(g - g.max(axis=1, keepdims=True))  # (M, N)
        return e / e.sum(axis=1, keepdims=True)
    m = as_mask(mask, g.shape[1])
    w = np.zeros(g.shape)  # (M, N) float64
    members = m.nonzero()[0]  # integer indexing: the router calls this once per query
    if not members.size:
        return w
    sub = g[:, members]  # (M, |S|)
    sub = np.exp(sub - sub.max(axis=1, keepdims=True))  # max over S keeps it stable
    w[:, members] = sub / sub.sum(axis=1, keepdims=True)
    return w

# Mirrors gating.planning.gate (which imports torch, so it is not imported here).
GATE_FORMAT_VERSION = 1
META_PREFIX = "edge_moe."
_REQUIRED_KEYS = (
    "format_version",
    "kind",
    "experts",
    "prior",
    "embedding_dim",
    "input_name",
    "output_name",
)


@dataclass
class OnnxGate:
    """A loaded gate: an ORT session plus the record from its manifest."""

    path: Path
    experts: tuple[str, ...]
    prior: np.ndarray  # (N, K) log option prior per expert
    embedding_dim: int
    manifest: dict[str, str]
    session: Any  # ort.InferenceSession
    input_name: str
    output_name: str
    temperature: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(0))  # (N,); ones when the record has none

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    @classmethod
    def load(cls, path: str | os.PathLike[str], intra_op_num_threads: int = 1) -> OnnxGate:
        """Load a gate ONNX file and validate its manifest.

        Args:
            path: the ``.onnx`` file.
            intra_op_num_threads: ORT threads for one request (1 suits a small MLP).

        Raises:
            GateError: the file is missing, not ONNX, lacks a manifest key, has another
                format version, or its manifest disagrees with its graph.
        """
        p = Path(path)
        if not p.is_file():
            raise GateError(f"{p}: gate ONNX file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(p), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises InvalidProtobuf / Fail / RuntimeException
            raise GateError(
                f"{p}: not a loadable ONNX model ({type(exc).__name__}: {exc})"
            ) from exc
        meta = dict(session.get_modelmeta().custom_metadata_map)
        missing = [k for k in _REQUIRED_KEYS if META_PREFIX + k not in meta]
        if missing:
            raise GateError(
                f"{p}: gate manifest lacks metadata_props keys {[META_PREFIX + k for k in missing]}"
                " (was it written by gating.planning.gate.export_gate_onnx?)"
            )

        def field(key: str) -> str:
            return meta[META_PREFIX + key]

        if field("format_version") != str(GATE_FORMAT_VERSION):
            raise GateError(
                f"{p}: {META_PREFIX}format_version={field('format_version')!r}, "
                f"this runtime reads version {GATE_FORMAT_VERSION}"
            )
        if field("kind") != "gate":
            raise GateError(f"{p}: {META_PREFIX}kind={field('kind')!r} is not 'gate'")
        try:
            experts = tuple(str(e) for e in json.loads(field("experts")))
            prior = np.asarray(json.loads(field("prior")), dtype=np.float64)
            embedding_dim = int(field("embedding_dim"))
            raw_t = meta.get(META_PREFIX + "temperature")  # optional: older records have none
            temperature = (np.ones(len(experts)) if raw_t is None
                           else np.asarray(json.loads(raw_t), dtype=np.float64))
        except (ValueError, TypeError) as exc:
            raise GateError(f"{p}: malformed gate manifest ({type(exc).__name__}: {exc})") from exc
        if prior.ndim != 2 or prior.shape[0] != len(experts):
            raise GateError(
                f"{p}: {META_PREFIX}prior has shape {prior.shape}, expected ({len(experts)}, K) for the experts"
            )
        if temperature.shape != (len(experts),) or not (np.isfinite(temperature).all() and (temperature > 0).all()):
            raise GateError(
                f"{p}: {META_PREFIX}temperature must be {len(experts)} positive finite numbers, "
                f"got {temperature.tolist()}"
            )
        inputs, outputs = session.get_inputs(), session.get_outputs()
        input_name, output_name = field("input_name"), field("output_name")
        if [i.name for i in inputs] != [input_name] or output_name not in [o.name for o in outputs]:
            raise GateError(
                f"{p}: graph inputs {[i.name for i in inputs]} / outputs {[o.name for o in outputs]} "
                f"do not match the manifest ({input_name!r} -> {output_name!r})"
            )
        dim = inputs[0].shape[-1]
        if isinstance(dim, int) and dim != embedding_dim:
            raise GateError(
                f"{p}: graph input dim {dim} != {META_PREFIX}embedding_dim {embedding_dim}"
            )
        logger.info("loaded gate %s over %d experts (D=%d)", p, len(experts), embedding_dim)
        return cls(
            path=p,
            experts=experts,
            prior=prior,
            embedding_dim=embedding_dim,
            manifest=meta,
            session=session,
            input_name=input_name,
            output_name=output_name,
            temperature=temperature,
        )

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(M, D) embeddings → (M, N) float32 gate logits.

        Raises:
            GateError: the embeddings are not a (M, embedding_dim) array of finite numbers.
        """
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise GateError(
                f"{self.path}: embeddings must be (M, {self.embedding_dim}), got shape {x.shape}"
            )
        if x.shape[0] == 0:
            return np.zeros((0, self.n_experts), dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)  # (M, N)

    def weights(self, embeddings: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(M, N) gate weights softmaxed over the experts in ``mask`` (all if None), zeros outside.

        Raises:
            GateError: bad embeddings (see :meth:`logits`).
            SelectionError: ``mask`` is not a (N,) bool array.
        """
        return masked_gate_weights(self.logits(embeddings), mask)
