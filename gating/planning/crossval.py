"""k-fold cross-validated selection data: every train + validation row, scored out of fold.

F(S) measured on the 251 validation rows alone is noisy (docs/design.md §2.8). With ``folds`` = k,
the train and validation rows are shuffled (seeded) and dealt into k folds; for fold f the
per-expert temperatures are refitted on the other k − 1 folds
(:func:`gating.planning.temperature.fit_temperature`, over the prior-corrected log-probs) and applied
to fold f's rows. F(S) is then the mean, over all train + validation rows, of the mixture's
score with each row calibrated out of its own fold: a per-row mean, so it is the
size-weighted mean of the k per-fold scores and a :class:`gating.planning.mixture.MixtureObjective`
over the stacked rows computes it (and its per-row scores, for the paired guard).

What is *not* refitted per fold: the gate (trained once on train, early-stopped on
validation, so on train rows its weights are in-sample) and the option prior (fitted on
train). The folds cross-validate the calibration and average the selection noise down; they
do not make the gate's weights out of sample.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_moe.calibration import TRAIN, VALIDATION
from edge_moe.errors import ConfigError, DataFormatError
from gating.planning.temperature import apply_temperature, fit_temperature

logger = logging.getLogger(__name__)


def fold_ids(n_rows: int, folds: int, seed: int) -> np.ndarray:
    """(n_rows,) fold index of each row: a seeded shuffle dealt round-robin (sizes differ by ≤ 1).

    Raises:
        ConfigError: folds < 2 or more folds than rows.
    """
    if folds < 2 or folds > n_rows:
        raise ConfigError(f"folds={folds} must be >= 2 and <= the {n_rows} train + validation rows")
    order = np.random.default_rng(seed).permutation(n_rows)  # (n_rows,)
    ids = np.empty(n_rows, dtype=np.int64)
    ids[order] = np.arange(n_rows) % folds
    return ids


def cross_validated_rows(gate_logits: np.ndarray, prior_corrected: np.ndarray | None, labels: np.ndarray,
                         split: np.ndarray, folds: int, seed: int = 0,
                         source: str = "the table") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train + validation rows, each calibrated with temperatures fitted out of its fold.

    Args:
        gate_logits: (M, N) gate logits of every table row.
        prior_corrected: (M, N, K) log-probs after the prior correction, before temperatures
            (``gating.planning.inputs.PlanInputs.prior_corrected``).
        labels: (M,) correct options; split: (M,) split of each row.
        folds: k >= 2.
        seed: the fold assignment's seed.
        source: the table's name, for messages.

    Returns:
        ((M', N) gate logits, (M', N, K) calibrated log-probs, (M',) labels) over the M' train +
        validation rows, in table order.

    Raises:
        ConfigError: a bad fold count.
        DataFormatError: no prior-corrected log-probs, or no train / validation rows.
    """
    if prior_corrected is None:
        raise DataFormatError("cross-validation needs PlanInputs.prior_corrected (use gating.planning.inputs.load_inputs)")
    rows = np.flatnonzero((split == TRAIN) | (split == VALIDATION))
    if rows.size == 0:
        raise DataFormatError(f"{source}: no train or validation rows to cross-validate on")
    lp = prior_corrected[rows].astype(np.float64)  # (M', N, K)
    y = labels[rows]
    ids = fold_ids(rows.size, folds, seed)
    out = np.empty_like(lp)
    for f in range(folds):
        held = ids == f
        t = fit_temperature(lp[~held], y[~held])  # (N,) out of fold
        out[held] = apply_temperature(lp[held], t)
    logger.debug("cross-validated %d rows in %d folds (seed %d)", rows.size, folds, seed)
    return gate_logits[rows], out.astype(np.float32), y
