"""The calibration table: every expert's option log-probabilities on labelled samples.

A calibration table is one ``.npz`` file that users produce (``edge-moe calibrate`` or
their own tooling) and the planner and gate trainer consume. Arrays, with M samples,
N experts, K options (the maximum over samples), C categories and D embedding dims:

=================  =========  ========  ==========================================================
key                dtype      shape     meaning
=================  =========  ========  ==========================================================
``logprobs``       float32    (M,N,K)   expert n's log-probabilities over sample i's options;
                                        options a sample lacks are padded with ``-inf``
``labels``         int64      (M,)      index of the correct option, in ``[0, K)``
``categories``     int64      (M,)      index into ``category_names``
``category_names`` str        (C,)      application category names
``experts``        str        (N,)      expert names, in the order of ``logprobs``' axis 1
``embeddings``     float32    (M,D)     gate input (MiniLM sentence embedding of the prompt)
``split``          int8       (M,)      0 train, 1 validation, 2 test
=================  =========  ========  ==========================================================

Load/save validate shapes, dtypes and NaNs and name the file and key on failure.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_moe.atomic import atomic_path
from edge_moe.errors import DataFormatError

logger = logging.getLogger(__name__)

MMLU_HEADER = "The following are multiple choice questions (with answers) about {topic}.\n\n"


def letter_prompt(question: str, options: Sequence[str], topic: str | None = None) -> str:
    """The zero-shot letter prompt (the MMLU paper's format): header, question, lettered
    options, then "Answer:" so that the next token is the option letter."""
    head = MMLU_HEADER.format(topic=topic) if topic else ""
    opts = "\n".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options))
    return f"{head}{question.strip()}\n{opts}\nAnswer:"

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}
_KEYS = ("logprobs", "labels", "categories", "category_names", "experts", "embeddings", "split")


@dataclass(frozen=True)
class CalibrationTable:
    """In-memory calibration table; see the module docstring for the arrays."""

    logprobs: np.ndarray  # (M, N, K) float32, -inf pads missing options
    labels: np.ndarray  # (M,) int64
    categories: np.ndarray  # (M,) int64
    category_names: tuple[str, ...]  # (C,)
    experts: tuple[str, ...]  # (N,)
    embeddings: np.ndarray  # (M, D) float32
    split: np.ndarray  # (M,) int8

    def __post_init__(self) -> None:
        validate_table(self, source="<in-memory table>")

    @property
    def n_samples(self) -> int:
        return int(self.logprobs.shape[0])

    @property
    def n_experts(self) -> int:
        return int(self.logprobs.shape[1])

    @property
    def n_options(self) -> int:
        return int(self.logprobs.shape[2])

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def rows(self, which: np.ndarray) -> CalibrationTable:
        """The table restricted to the rows selected by a bool mask or index array."""
        return CalibrationTable(
            logprobs=self.logprobs[which],
            labels=self.labels[which],
            categories=self.categories[which],
            category_names=self.category_names,
            experts=self.experts,
            embeddings=self.embeddings[which],
            split=self.split[which],
        )

    def split_rows(self, split: int) -> CalibrationTable:
        """The rows of one split (TRAIN, VALIDATION or TEST)."""
        return self.rows(self.split == split)

    def select_experts(self, names: list[str] | tuple[str, ...]) -> CalibrationTable:
        """The table restricted to (and reordered by) the named experts."""
        index = {n: i for i, n in enumerate(self.experts)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataFormatError(
                f"experts {missing} are not in the calibration table (known: {list(self.experts)})"
            )
        cols = [index[n] for n in names]
        return CalibrationTable(
            logprobs=self.logprobs[:, cols, :],
            labels=self.labels,
            categories=self.categories,
            category_names=self.category_names,
            experts=tuple(names),
            embeddings=self.embeddings,
            split=self.split,
        )


def validate_table(t: CalibrationTable, source: str) -> None:
    """Check shapes, dtypes, ranges and NaNs; raise DataFormatError naming ``source`` and the key."""

    def bad(key: str, rule: str) -> DataFormatError:
        return DataFormatError(f"{source}: '{key}' {rule}")

    lp = t.logprobs
    if not isinstance(lp, np.ndarray) or lp.ndim != 3:
        raise bad("logprobs", f"must be a 3-d (M, N, K) array, got shape {getattr(lp, 'shape', None)}")
    if lp.dtype != np.float32:
        raise bad("logprobs", f"must be float32, got {lp.dtype}")
    m, n, k = lp.shape
    if m < 1 or n < 1 or k < 2:
        raise bad("logprobs", f"needs M>=1 samples, N>=1 experts and K>=2 options, got shape {lp.shape}")
    if np.isnan(lp).any():
        i, j, o = np.argwhere(np.isnan(lp))[0]
        raise bad("logprobs", f"contains NaN (first at sample {i}, expert {j}, option {o})")
    if (lp == np.inf).any():
        raise bad("logprobs", "contains +inf; log-probabilities are <= 0 and -inf marks a missing option")
    for key, arr, dtype in (
        ("labels", t.labels, np.int64),
        ("categories", t.categories, np.int64),
        ("split", t.split, np.int8),
    ):
        if not isinstance(arr, np.ndarray) or arr.shape != (m,):
            raise bad(key, f"must have shape ({m},) to match logprobs, got {getattr(arr, 'shape', None)}")
        if arr.dtype != dtype:
            raise bad(key, f"must be {np.dtype(dtype).name}, got {arr.dtype}")
    if (t.labels < 0).any() or (t.labels >= k).any():
        raise bad("labels", f"values must be in [0, {k}), got range [{t.labels.min()}, {t.labels.max()}]")
    valid = np.isfinite(lp)
    label_ok = valid[np.arange(m), :, t.labels]  # (M, N) is the labelled option present?
    if not label_ok.all():
        i, j = np.argwhere(~label_ok)[0]
        raise bad("logprobs", f"sample {i}: the labelled option {t.labels[i]} is -inf (missing) for expert {j}")
    c = len(t.category_names)
    if c < 1:
        raise bad("category_names", "must name at least one category")
    if (t.categories < 0).any() or (t.categories >= c).any():
        raise bad("categories", f"values must be in [0, {c}), got range [{t.categories.min()}, {t.categories.max()}]")
    if len(t.experts) != n:
        raise bad("experts", f"must name {n} experts to match logprobs, got {len(t.experts)}")
    if len(set(t.experts)) != n:
        raise bad("experts", f"names must be unique, got {list(t.experts)}")
    if len(set(t.category_names)) != c:
        raise bad("category_names", f"names must be unique, got {list(t.category_names)}")
    e = t.embeddings
    if not isinstance(e, np.ndarray) or e.ndim != 2 or e.shape[0] != m:
        raise bad("embeddings", f"must have shape ({m}, D), got {getattr(e, 'shape', None)}")
    if e.dtype != np.float32:
        raise bad("embeddings", f"must be float32, got {e.dtype}")
    if not np.isfinite(e).all():
        raise bad("embeddings", "contains NaN or inf")
    bad_split = ~np.isin(t.split, (TRAIN, VALIDATION, TEST))
    if bad_split.any():
        raise bad("split", f"values must be 0 (train), 1 (validation) or 2 (test), got {t.split[bad_split][0]}")


def load_calibration(path: str | os.PathLike[str]) -> CalibrationTable:
    """Load and validate a calibration ``.npz``.

    Raises:
        DataFormatError: the file is missing, not an npz, lacks a key, or breaks a rule.
    """
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: calibration table not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise DataFormatError(f"{p}: missing keys {missing} (a calibration table has {list(_KEYS)})")
            extra = [k for k in z.files if k not in _KEYS]
            if extra:
                logger.warning("%s: ignoring unknown keys %s", p, extra)
            arrays = {k: z[k] for k in _KEYS}
    except DataFormatError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise DataFormatError(f"{p}: not a readable calibration .npz ({type(exc).__name__}: {exc})") from exc
    for key in ("category_names", "experts"):
        if arrays[key].dtype.kind != "U":
            raise DataFormatError(f"{p}: '{key}' must be an array of str, got dtype {arrays[key].dtype}")
    table = object.__new__(CalibrationTable)
    fields = {
        "logprobs": arrays["logprobs"],
        "labels": arrays["labels"],
        "categories": arrays["categories"],
        "category_names": tuple(str(s) for s in arrays["category_names"]),
        "experts": tuple(str(s) for s in arrays["experts"]),
        "embeddings": arrays["embeddings"],
        "split": arrays["split"],
    }
    for k, v in fields.items():
        object.__setattr__(table, k, v)
    validate_table(table, source=str(p))
    return table


def save_calibration(table: CalibrationTable, path: str | os.PathLike[str]) -> Path:
    """Validate and write atomically (temp file, then rename), so no partial file is left."""
    p = Path(path)
    validate_table(table, source=str(p))
    with atomic_path(p, suffix=".tmp.npz") as tmp:
        np.savez_compressed(
            tmp,
            logprobs=table.logprobs,
            labels=table.labels,
            categories=table.categories,
            category_names=np.array(table.category_names, dtype=str),
            experts=np.array(table.experts, dtype=str),
            embeddings=table.embeddings,
            split=table.split,
        )
    return p
