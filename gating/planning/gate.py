"""The gate network g(x; θ): an MLP from a prompt embedding to one logit per expert.

Training (docs/design.md §2.1) minimises the cross-entropy of the gated mixture of the
experts' calibrated option probabilities on the TRAIN split::

    min_θ  −mean_i log Σ_{n∈S} softmax_S(g(x_i; θ))_n · p'_n(y_i | x_i)

computed in log space (``logsumexp(log_softmax(g) + log p')``). S is every expert, or the
``experts_mask`` subset (the retrain-gap check trains on S alone). Early stopping watches
the same loss on the VALIDATION split and restores the best weights.

*Calibrated* means: each expert's option prior divided out
(:func:`gating.planning.mixture.fit_prior_correction`), then each expert's temperature applied
(:func:`gating.planning.temperature.fit_temperature`), both fitted on TRAIN before the gate is trained.

The trained gate is exported to one ONNX file whose ``metadata_props`` carry its record
(experts, prior, temperatures, embedding dim, config, versions); :mod:`edge_moe.runtime.gate` serves it
without torch. This module is the only one in ``gating/`` that imports torch, and it is
used at training time only.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_moe.atomic import atomic_path
from edge_moe.calibration import SPLIT_NAMES, TRAIN, VALIDATION, CalibrationTable
from edge_moe.errors import GateError
from edge_moe.progress import ProgressCallback, reporter
from gating.planning.mixture import apply_prior_correction, fit_prior_correction
from gating.planning.temperature import apply_temperature, fit_temperature

logger = logging.getLogger(__name__)

GATE_FORMAT_VERSION = 1
PROGRESS_TASK = "training gate"  # the label train_gate reports progress under
INPUT_NAME = "embeddings"
OUTPUT_NAME = "gate_logits"
META_PREFIX = "edge_moe."  # every manifest key in metadata_props starts with this


@dataclass(frozen=True)
class GateConfig:
    """Gate architecture and training settings.

    ``n_layers`` counts hidden layers (0 gives a linear gate); ``patience`` is in epochs.
    ``subset_dropout`` is the fraction of training samples whose mixture is computed over a
    random expert subset instead of the full set (each expert kept with probability 1/2, at
    least one kept). The gate is still trained once, on all experts, but it also learns to
    rank the experts it would otherwise suppress, which is what masked reuse for a subset
    S needs (docs/design.md §2.2). 0 gives the plain full-set objective.
    """

    hidden_dim: int = 128
    n_layers: int = 2
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 300
    patience: int = 20
    seed: int = 0
    subset_dropout: float = 0.5

    def __post_init__(self) -> None:
        rules = [
            ("hidden_dim", self.hidden_dim >= 1, ">= 1"),
            ("n_layers", self.n_layers >= 0, ">= 0"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("subset_dropout", 0.0 <= self.subset_dropout <= 1.0, "in [0, 1]"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise GateError(f"GateConfig.{name}={getattr(self, name)!r} must be {rule}")


class GateMLP(nn.Module):
    """Embedding (B, D) → gate logits (B, N).

    The output layer starts at zero, so an untrained gate is the uniform gate and training
    can only move away from it where the data says so.
    """

    def __init__(self, embedding_dim: int, n_experts: int, config: GateConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = embedding_dim
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_experts)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(embeddings))  # (B, N)


class EpochLoss(NamedTuple):
    """Mixture NLL (nats) of one epoch: mean train batch loss, then validation loss."""

    epoch: int
    train_nll: float
    val_nll: float


@dataclass
class TrainedGate:
    """A trained gate over ``experts`` with the calibration (prior, temperatures) it was trained with."""

    module: GateMLP
    experts: tuple[str, ...]
    prior: np.ndarray  # (N, K) log option prior per expert, fitted on TRAIN
    embedding_dim: int
    config: GateConfig
    temperature: np.ndarray | None = None  # (N,) per-expert temperature, fitted on TRAIN; None: all 1
    history: list[EpochLoss] = field(default_factory=list)
    best_epoch: int = 0
    best_val_nll: float = math.nan
    train_seconds: float = 0.0

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """(M, D) float embeddings → (M, N) float32 gate logits (eval mode, no dropout).

        Raises:
            GateError: the embeddings are not (M, embedding_dim).
        """
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise GateError(
                f"embeddings must be (M, {self.embedding_dim}) for this gate, got shape {x.shape}"
            )
        self.module.eval()
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()  # (M, N)


def _label_logprobs(table: CalibrationTable, prior: np.ndarray,
                    temperature: np.ndarray | None = None) -> torch.Tensor:
    """(M, N) calibrated log p'_n(y_i | x_i) for every row of ``table`` (prior, then T)."""
    corrected = apply_prior_correction(table.logprobs, prior)  # (M, N, K)
    if temperature is not None:
        corrected = apply_temperature(corrected, temperature).astype(np.float32)  # (M, N, K)
    rows = np.arange(table.n_samples)
    return torch.from_numpy(np.ascontiguousarray(corrected[rows, :, table.labels]))  # (M, N)


def mixture_nll(
    logits: torch.Tensor, label_logprobs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean −log Σ_{n∈S} softmax_S(logits)_n · exp(label_logprobs_n), computed in log space.

    Args:
        logits: (B, N) gate logits.
        label_logprobs: (B, N) each expert's log-probability of the correct option.
        mask: optional (B, N) bool subset per sample (softmax restricted to it); None = all.
    """
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))  # (B, N) experts outside S get weight 0
        label_logprobs = label_logprobs.masked_fill(~mask, 0.0)  # (B, N) avoid -inf + -inf = nan
    return -torch.logsumexp(F.log_softmax(logits, dim=1) + label_logprobs, dim=1).mean()


def _random_subsets(batch: int, n: int, rate: float, gen: torch.Generator) -> torch.Tensor | None:
    """(B, N) bool: a random subset (each expert kept w.p. 1/2, >= 1 kept) for a ``rate``
    fraction of the rows, the full set for the others; None when ``rate`` is 0."""
    if rate <= 0.0:
        return None
    keep = torch.rand(batch, n, generator=gen) < 0.5  # (B, N)
    forced = torch.randint(0, n, (batch,), generator=gen)  # (B,) one expert always kept
    keep[torch.arange(batch), forced] = True
    full = torch.rand(batch, generator=gen) >= rate  # (B,) rows that keep every expert
    keep[full] = True
    return keep


def _validate_inputs(table: CalibrationTable, experts_mask: np.ndarray | None) -> np.ndarray:
    if not isinstance(table, CalibrationTable):
        raise GateError(f"train_gate needs a CalibrationTable, got {type(table).__name__}")
    for split in (TRAIN, VALIDATION):
        if not (table.split == split).any():
            raise GateError(
                f"calibration table has no {SPLIT_NAMES[split]} rows "
                f"(split value {split}); the gate trains on train and early-stops on validation"
            )
    if experts_mask is None:
        return np.ones(table.n_experts, dtype=bool)
    mask = np.asarray(experts_mask)
    if mask.dtype != bool or mask.shape != (table.n_experts,):
        raise GateError(
            f"experts_mask must be a bool array of shape ({table.n_experts},), got {mask.dtype} {mask.shape}"
        )
    if not mask.any():
        raise GateError("experts_mask selects no expert; a gate needs at least one")
    return mask


def train_gate(
    table: CalibrationTable,
    config: GateConfig | None = None,
    experts_mask: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> TrainedGate:
    """Train the gate on TRAIN by the mixture cross-entropy, early-stopping on VALIDATION.

    Args:
        table: calibration table with train and validation rows.
        config: architecture and optimiser settings (defaults: ``GateConfig()``).
        experts_mask: (N,) bool subset S; the gate is then a gate over S alone (its
            ``experts``, ``prior`` and outputs cover S only). None trains over every expert.
        progress: hears ``("training gate", epochs done, config.max_epochs)``; on early
            stopping the last call's total is the epochs run. Each epoch's losses are
            logged at DEBUG.

    Returns:
        The TrainedGate with the best-validation weights restored.

    Raises:
        GateError: no train or validation rows, a bad mask or config.
    """
    config = config or GateConfig()
    mask = _validate_inputs(table, experts_mask)
    cols = np.flatnonzero(mask)
    sub = table.select_experts([table.experts[j] for j in cols]) if not mask.all() else table
    train, val = sub.split_rows(TRAIN), sub.split_rows(VALIDATION)
    prior = fit_prior_correction(train.logprobs)  # (N, K) on train only
    temperature = fit_temperature(apply_prior_correction(train.logprobs, prior), train.labels)  # (N,) train only
    x_train = torch.from_numpy(train.embeddings)  # (Mt, D)
    x_val = torch.from_numpy(val.embeddings)  # (Mv, D)
    lp_train = _label_logprobs(train, prior, temperature)  # (Mt, N)
    lp_val = _label_logprobs(val, prior, temperature)  # (Mv, N)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: one thread is fastest and deterministic
    start = time.perf_counter()
    try:
        torch.manual_seed(config.seed)
        module = GateMLP(table.embedding_dim, len(cols), config)
        optimiser = torch.optim.AdamW(
            module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        shuffle = torch.Generator().manual_seed(config.seed)
        history: list[EpochLoss] = []
        best_state = copy.deepcopy(module.state_dict())
        best_val, best_epoch = math.inf, 0
        tell = reporter(progress)
        tell(PROGRESS_TASK, 0, config.max_epochs)
        for epoch in range(1, config.max_epochs + 1):
            module.train()
            order = torch.randperm(x_train.shape[0], generator=shuffle)  # (Mt,)
            total = 0.0
            for batch in order.split(config.batch_size):
                subsets = _random_subsets(batch.numel(), len(cols), config.subset_dropout, shuffle)
                loss = mixture_nll(module(x_train[batch]), lp_train[batch], subsets)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.item() * batch.numel()
            module.eval()
            with torch.no_grad():
                val_nll = float(mixture_nll(module(x_val), lp_val))
            history.append(EpochLoss(epoch, total / x_train.shape[0], val_nll))
            if val_nll < best_val - 1e-7:
                best_val, best_epoch = val_nll, epoch
                best_state = copy.deepcopy(module.state_dict())
            logger.debug("gate epoch %d: val NLL %.4f (best %.4f)", epoch, val_nll, best_val)
            if epoch - best_epoch >= config.patience:
                tell(PROGRESS_TASK, epoch, epoch)  # early stopping: done at this epoch
                break
            tell(PROGRESS_TASK, epoch, config.max_epochs)
        module.load_state_dict(best_state)
        module.eval()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    logger.info(
        "gate over %d experts: best val NLL %.4f at epoch %d of %d (%.1f s)",
        len(cols),
        best_val,
        best_epoch,
        len(history),
        seconds,
    )
    return TrainedGate(
        module=module,
        experts=sub.experts,
        prior=prior,
        temperature=temperature,
        embedding_dim=table.embedding_dim,
        config=config,
        history=history,
        best_epoch=best_epoch,
        best_val_nll=best_val,
        train_seconds=seconds,
    )


# --------------------------------------------------------------------------- export


def gate_manifest(gate: TrainedGate) -> dict[str, str]:
    """The record stored in the ONNX ``metadata_props`` (all values are strings)."""
    import onnx

    return {
        f"{META_PREFIX}format_version": str(GATE_FORMAT_VERSION),
        f"{META_PREFIX}kind": "gate",
        f"{META_PREFIX}experts": json.dumps(list(gate.experts)),
        f"{META_PREFIX}prior": json.dumps(np.asarray(gate.prior, dtype=np.float64).tolist()),
        f"{META_PREFIX}temperature": json.dumps(_temperatures(gate).tolist()),
        f"{META_PREFIX}embedding_dim": str(gate.embedding_dim),
        f"{META_PREFIX}input_name": INPUT_NAME,
        f"{META_PREFIX}output_name": OUTPUT_NAME,
        f"{META_PREFIX}gate_config": json.dumps(asdict(gate.config)),
        f"{META_PREFIX}best_val_nll": repr(float(gate.best_val_nll)),
        f"{META_PREFIX}best_epoch": str(gate.best_epoch),
        f"{META_PREFIX}torch_version": torch.__version__,
        f"{META_PREFIX}onnx_version": onnx.__version__,
    }


def _temperatures(gate: TrainedGate) -> np.ndarray:
    """(N,) float64 temperatures; all 1 for a gate trained without them."""
    if gate.temperature is None:
        return np.ones(len(gate.experts))
    return np.asarray(gate.temperature, dtype=np.float64)


def export_gate_onnx(gate: TrainedGate, path: str | os.PathLike[str]) -> Path:
    """Export the gate to one ONNX file with a dynamic batch and its manifest.

    Input ``embeddings`` float32 (batch, D); output ``gate_logits`` float32 (batch, N).
    The file is written to a temp name beside ``path`` and renamed, so a reader never
    sees a partial file.

    Raises:
        GateError: the export failed (the torch/onnx error is chained).
    """
    import onnx

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    module = gate.module.eval()
    # Batch >= 2: torch.export specialises a batch of 1 and the exported batch dim freezes.
    example = torch.zeros(2, gate.embedding_dim, dtype=torch.float32)  # (2, D)
    batch = torch.export.Dim("batch", min=1)
    # torch.onnx logs "torchvision is not installed. Skipping torchvision::nms" per op; a gate needs none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export internals, not ours
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"embeddings": {0: batch}},
                verbose=False,
            )
    except Exception as exc:
        raise GateError(
            f"{p}: ONNX export of the gate failed ({type(exc).__name__}: {exc})"
        ) from exc
    if program is None:
        raise GateError(f"{p}: torch.onnx.export returned no program")
    model = program.model_proto
    del model.metadata_props[:]
    for key, value in gate_manifest(gate).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    with atomic_path(p, suffix=".tmp.onnx") as tmp:
        # save_model keeps the weights inline (one file, like external_data=False): a gate is KBs.
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    logger.info("exported gate over %d experts to %s", len(gate.experts), p)
    return p
