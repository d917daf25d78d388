"""The planner's inputs, loaded and aligned: calibration table, profiles and gate.

:func:`load_inputs` reads the calibration table and the profiles, gets the gate (loads a
given ``gate.onnx``, or trains one and exports it), restricts and orders the table by the
gate's experts, calibrates the experts' option log-probs with the gate's record (the
option-prior correction, then the per-expert temperatures; T = 1 for a record without them),
and checks that the three files agree. The profiles give the scoring costs ``latency_ms`` / ``energy_j`` and, where
every expert has one, the generation cost model ``generation``
(:class:`edge_moe.profiles.GenerationCosts`), all in the gate's expert order x the table's
category order; ``generation_missing`` names the experts without one (``generation`` is
then None and ``generation_message`` says so). :func:`make_objective` builds F(S) from
them (:class:`gating.planning.mixture.MixtureObjective`), by name (:data:`OBJECTIVES`):

- ``loglik`` (the default): the mean log-likelihood of the label under the gate-masked,
  renormalised top-k (or adaptive-τ) mixture of the calibrated experts restricted to S;
- ``accuracy``: the same mixture's accuracy;

measured on the validation split, or, with ``folds`` ≥ 2, on k-fold cross-validation over
train + validation (:mod:`gating.planning.crossval`).

Both the offline planner (:mod:`gating.planning.planner`) and the live router
(:mod:`gating.coordinator.routing`) use them, so the router does not import the planner.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.calibration import VALIDATION, CalibrationTable, load_calibration
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.profiles import GenerationCosts, Profiles, load_profiles
from edge_moe.progress import ProgressCallback
from edge_moe.runtime.gate import OnnxGate
from gating.planning.crossval import cross_validated_rows
from gating.planning.mixture import Metric, MixtureObjective, apply_prior_correction
from gating.planning.temperature import apply_temperature

logger = logging.getLogger(__name__)

OBJECTIVES: dict[str, Metric] = {"loglik": "neg_nll", "accuracy": "accuracy"}  # name -> mixture metric
DEFAULT_OBJECTIVE = "loglik"


@dataclass(frozen=True)
class PlanInputs:
    """Everything a plan needs, aligned: arrays are in ``experts`` x ``categories`` order."""

    table: CalibrationTable  # calibrated log-probs (prior, then temperature), experts in the gate's order
    profiles: Profiles
    gate: OnnxGate
    gate_logits: np.ndarray  # (M, N) for every row of the table
    latency_ms: np.ndarray  # (N, C)
    energy_j: np.ndarray  # (N, C)
    calibration_path: str
    calibration_sha256: str
    profiles_path: str
    trained_gate: Any = None  # the TrainedGate when this run trained it (for the retrain check)
    generation: GenerationCosts | None = None  # (N, C) generation costs; None: some expert lacks them
    generation_missing: tuple[str, ...] = ()  # the experts without a generation model
    prior_corrected: np.ndarray | None = None  # (M, N, K) log-probs before the temperatures (for CV refits)

    @property
    def experts(self) -> tuple[str, ...]:
        return self.table.experts

    @property
    def generation_message(self) -> str:
        """Why ``generation`` is None ("" when it is not)."""
        if not self.generation_missing:
            return ""
        return (f"{self.profiles_path}: experts {list(self.generation_missing)} lack a generation cost model "
                f"for some or all of the categories {list(self.categories)} (profiles written before it existed, "
                "or calibrated without timing generation; rerun `edge-moe calibrate` and `edge-moe profile`)")

    @property
    def categories(self) -> tuple[str, ...]:
        return self.table.category_names


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_inputs(
    calibration: str | os.PathLike[str],
    profiles: str | os.PathLike[str],
    gate_path: str | os.PathLike[str] | None,
    out_dir: Path | None = None,
    gate_config: Any = None,
    progress: ProgressCallback | None = None,
) -> PlanInputs:
    """Load and align the inputs; with no ``gate_path``, train the gate and export it to
    ``out_dir/gate.onnx``. The table is restricted to (and ordered by) the gate's experts
    and prior-corrected with the gate's prior. ``progress`` hears the gate's training
    (:func:`gating.planning.gate.train_gate`).

    Raises:
        DataFormatError: a file is missing/malformed, or table, gate and profiles disagree.
        GateError: the gate cannot be trained, exported or loaded.
    """
    table = load_calibration(calibration)
    prof = load_profiles(profiles)
    trained = None
    if gate_path is None:
        if out_dir is None:
            raise DataFormatError("no gate given and no output folder to train one into")
        from gating.planning.gate import (  # torch: training only
            GateConfig,
            export_gate_onnx,
            train_gate,
        )

        trained = train_gate(table, gate_config or GateConfig(), progress=progress)
        gate_path = export_gate_onnx(trained, out_dir / "gate.onnx")
    gate = OnnxGate.load(gate_path)
    missing = [e for e in gate.experts if e not in table.experts]
    if missing:
        raise DataFormatError(f"{calibration}: no calibration for the gate's experts {missing} "
                              f"(gate {gate_path}; table has {list(table.experts)})")
    table = table.select_experts(gate.experts)
    if gate.prior.shape != (table.n_experts, table.n_options):
        raise DataFormatError(f"{gate_path}: prior shape {gate.prior.shape} does not match the "
                              f"table's (N, K) = ({table.n_experts}, {table.n_options})")
    missing = [e for e in table.experts if e not in prof.names]
    if missing:
        raise DataFormatError(f"{profiles}: no profile for experts {missing} of {calibration} "
                              f"(profiled: {list(prof.names)})")
    missing_c = [c for c in table.category_names if c not in prof.categories]
    if missing_c:
        raise DataFormatError(f"{profiles}: no figures for categories {missing_c} of {calibration} "
                              f"(profiled: {list(prof.categories)})")
    if gate.temperature.shape != (table.n_experts,):
        raise DataFormatError(f"{gate_path}: temperature shape {gate.temperature.shape} does not match the "
                              f"gate's {table.n_experts} experts")
    corrected = apply_prior_correction(table.logprobs, gate.prior).astype(np.float32)
    calibrated = apply_temperature(corrected, gate.temperature).astype(np.float32)
    table = CalibrationTable(logprobs=calibrated, labels=table.labels, categories=table.categories,
                             category_names=table.category_names, experts=table.experts,
                             embeddings=table.embeddings, split=table.split)
    lat, en = prof.arrays(table.experts, table.category_names)
    gen_missing = tuple(prof.generation_missing(table.experts, table.category_names))
    inputs = PlanInputs(table=table, profiles=prof, gate=gate, gate_logits=gate.logits(table.embeddings),
                        latency_ms=lat, energy_j=en, calibration_path=str(calibration),
                        calibration_sha256=sha256_file(calibration), profiles_path=str(profiles),
                        trained_gate=trained, generation=prof.generation_arrays(table.experts, table.category_names),
                        generation_missing=gen_missing, prior_corrected=corrected)
    if gen_missing:
        logger.info("%s", inputs.generation_message)
    return inputs


def split_rows(inputs: PlanInputs, split: int) -> tuple[np.ndarray, CalibrationTable]:
    """One split's ((M', N) gate logits, table rows)."""
    idx = inputs.table.split == split
    return inputs.gate_logits[idx], inputs.table.rows(idx)


def make_objective(inputs: PlanInputs, top_k: int | None, tau: float | None,
                   uniform: bool = False, objective: str = DEFAULT_OBJECTIVE, folds: int = 0,
                   seed: int = 0) -> MixtureObjective:
    """F(S) of the gate-masked top-k (or adaptive-tau) mixture, by name, on the selection data.

    Args:
        inputs: from :func:`load_inputs`.
        top_k / tau: the fine level inside S (give at most one).
        uniform: uniform weights over S instead of the gate's (the "uniform" baseline).
        objective: ``"loglik"`` (mean log p(label)) or ``"accuracy"`` (:data:`OBJECTIVES`).
        folds: 0 selects on the validation split; k >= 2 on k-fold cross-validation over
            train + validation, the temperatures refitted out of fold
            (:func:`gating.planning.crossval.cross_validated_rows`).
        seed: the fold assignment's seed (with ``folds``).

    Raises:
        ConfigError: an unknown objective, or folds is 1 or negative.
        DataFormatError: the validation split is empty (or train + validation for CV).
        SelectionError: a bad top_k or tau.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{objective}'; choose one of {sorted(OBJECTIVES)}")
    if folds:
        logits, logprobs, labels = cross_validated_rows(inputs.gate_logits, inputs.prior_corrected, inputs.table.labels,
                                                        inputs.table.split, folds, seed, inputs.calibration_path)
    else:
        logits, val = split_rows(inputs, VALIDATION)
        if len(val.labels) == 0:
            raise DataFormatError(f"{inputs.calibration_path}: the validation split (split == 1) is empty")
        logprobs, labels = val.logprobs, val.labels
    if uniform:
        logits = np.zeros_like(logits)
    return MixtureObjective(logits, logprobs, labels, top_k=top_k, tau=tau, metric=OBJECTIVES[objective])
