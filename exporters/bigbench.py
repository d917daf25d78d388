"""BIG-bench's JSON multiple-choice tasks, read from the ``bigbench==1.0.0`` sdist with tarfile.

The sdist (358 MB) is never installed or imported: its ``task.json`` files are read straight
out of the tarball. Fetch it once with::

    pip download bigbench==1.0.0 --no-deps --no-binary :all: -d $EDGE_MOE_CACHE/assets/bigbench

A task is one ``.../benchmark_tasks/<task>[/<subtask>]/task.json`` holding ``examples``. An
example is kept when it passes :class:`Rule` (the rule is written down and justified in
``benchmarks/bigbench/RULE.md``); a task is kept when at least ``min_examples`` of its
examples are kept. Each kept example becomes one row of the calibrate JSONL::

    {"question", "options", "label", "category", "topic", "id"}

with ``topic`` the task's name (``task`` or ``task/subtask``) and ``category`` its family, the
first entry of :data:`FAMILIES` whose keywords the task lists (else ``"other"``). The per-task
cap and the train/validation/test split are ``edge-moe calibrate --per-topic CAP --seed S``'s.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_moe.atomic import write_text
from edge_moe.errors import DataFormatError
from edge_moe.paths import cache_dir

SDIST_NAME = "bigbench-1.0.0.tar.gz"
TASKS_DIR = "bigbench/benchmark_tasks/"

# Task families (the categories), tried in this order; a task goes to the first family any of
# whose keywords it lists. Keywords are BIG-bench's own (keywords_to_tasks.md).
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("math", ("mathematics", "arithmetic", "algebra", "mathematical proof", "probability",
              "statistics", "geometry", "decomposition", "numerical response")),
    ("logic", ("logical reasoning", "deductive reasoning", "inductive reasoning",
               "algorithms", "computer code", "out of distribution")),
    ("commonsense", ("common sense", "causal reasoning", "physical reasoning",
                     "social reasoning", "emotional understanding", "theory of mind")),
    ("language", ("reading comprehension", "linguistics", "contextual question-answering",
                  "non-English", "multilingual", "figurative language", "translation")),
)
OTHER = "other"


@dataclass(frozen=True)
class Rule:
    """Which examples and tasks are kept (see ``benchmarks/bigbench/RULE.md``)."""

    min_examples: int = 200  # kept examples a task needs
    min_options: int = 2
    max_options: int = 8
    max_question_chars: int = 1000  # task_prefix + input, after stripping
    max_option_chars: int = 200


def default_sdist() -> Path:
    """Where ``pip download`` puts the sdist under the cache."""
    return cache_dir() / "assets" / "bigbench" / SDIST_NAME


def task_name(member: str) -> str | None:
    """``.../benchmark_tasks/a/b/task.json`` -> ``a/b``; None for any other path."""
    i = member.find(TASKS_DIR)
    if i < 0 or not member.endswith("/task.json"):
        return None
    return member[i + len(TASKS_DIR):-len("/task.json")] or None


def iter_tasks(sdist: str | os.PathLike[str], *, with_examples: bool = True
               ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(task name, task.json)`` in the tarball, in tar order; with ``with_examples``
    only those that hold an ``examples`` list.

    Raises:
        DataFormatError: the file is missing or not a tarball, or a task.json is not JSON.
    """
    p = Path(sdist)
    if not p.is_file():
        raise DataFormatError(
            f"{p}: BIG-bench sdist not found; fetch it with `pip download bigbench==1.0.0 --no-deps "
            f"--no-binary :all: -d {p.parent}`")
    try:
        tf = tarfile.open(p, "r:*")
    except tarfile.TarError as exc:
        raise DataFormatError(f"{p}: not a tarball ({exc})") from exc
    with tf:
        for m in tf:
            name = task_name(m.name)
            if name is None or not m.isfile():
                continue
            fh = tf.extractfile(m)
            if fh is None:
                continue
            try:
                doc = json.loads(fh.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataFormatError(f"{p}:{m.name}: not a JSON task ({exc})") from exc
            if isinstance(doc, dict) and (not with_examples or isinstance(doc.get("examples"), list)):
                yield name, doc


def family(keywords: Sequence[str]) -> str:
    """The task's category: the first of :data:`FAMILIES` it has a keyword of, else "other"."""
    have = {str(k).strip().lower() for k in keywords}
    for fam, kws in FAMILIES:
        if any(k.lower() in have for k in kws):
            return fam
    return OTHER


def example_row(task: dict[str, Any], ex: Any, rule: Rule) -> dict[str, Any] | None:
    """The calibrate row of one example, or None when the rule drops it: not a dict with a
    string input and ``target_scores``; fewer or more options than allowed; an empty,
    duplicate or over-long option; not exactly one option at the top score, or that score
    not positive; an over-long question."""
    if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
        return None
    scores = ex.get("target_scores")
    if not isinstance(scores, dict) or not rule.min_options <= len(scores) <= rule.max_options:
        return None
    options = [str(k).strip() for k in scores]
    if (any(not o or len(o) > rule.max_option_chars for o in options)
            or len(set(options)) != len(options)):
        return None
    try:
        vals = [float(v) for v in scores.values()]
    except (TypeError, ValueError):
        return None
    top = max(vals)
    if top <= 0 or vals.count(top) != 1:
        return None
    prefix = task.get("task_prefix")
    prefix = prefix.strip() if isinstance(prefix, str) else ""
    question = (prefix + "\n" if prefix else "") + ex["input"].strip()
    if not ex["input"].strip() or len(question) > rule.max_question_chars:
        return None
    return {"question": question, "options": options, "label": vals.index(top)}


def top_task(name: str) -> str:
    """``a/b`` -> ``a``: a subtask counts towards its top-level task."""
    return name.split("/", 1)[0]


def select_rows(sdist: str | os.PathLike[str], rule: Rule = Rule()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply the rule to every task of the sdist.

    The unit is the top-level task: its subtasks' examples are pooled, its family comes
    from the top-level ``task.json``'s keywords (else from the union of its subtasks').

    Returns the rows of the kept tasks (sorted by task, then subtask; examples in file
    order) and a summary per top-level task: examples, kept examples, kept, family, keywords.
    """
    docs = sorted(iter_tasks(sdist, with_examples=False), key=lambda t: t[0])
    own: dict[str, list[str]] = {}  # the top-level task.json's keywords
    union: dict[str, list[str]] = {}  # its subtasks' keywords, first seen first
    for name, doc in docs:
        kws = doc.get("keywords")
        kws = [str(k) for k in kws] if isinstance(kws, list) else []
        top = top_task(name)
        if name == top:
            own[top] = kws
        else:
            have = union.setdefault(top, [])
            have.extend(k for k in kws if k not in have)
    keywords = {top: own.get(top) or union.get(top, []) for top in {top_task(n) for n, _ in docs}}
    pooled: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, int] = {}
    for name, doc in docs:
        if not isinstance(doc.get("examples"), list):
            continue
        top = top_task(name)
        fam = family(keywords.get(top, []))
        totals[top] = totals.get(top, 0) + len(doc["examples"])
        kept = pooled.setdefault(top, [])
        for n, ex in enumerate(doc["examples"]):
            r = example_row(doc, ex, rule)
            if r is not None:
                kept.append({**r, "category": fam, "topic": top, "id": f"bigbench:{name}:{n}"})
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for top in sorted(pooled):
        ok = len(pooled[top]) >= rule.min_examples
        summary[top] = {"examples": totals[top], "kept_examples": len(pooled[top]), "kept": ok,
                        "family": family(keywords.get(top, [])), "keywords": keywords.get(top, [])}
        if ok:
            rows.extend(pooled[top])
    return rows, summary


def cap_rows(rows: Sequence[dict[str, Any]], cap: int, seed: int) -> list[dict[str, Any]]:
    """At most ``cap`` rows of each task (``topic``): a seeded shuffle of the task's rows in
    their given order, tasks taken in sorted order with one ``random.Random(seed)``."""
    rng = random.Random(seed)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["topic"], []).append(r)
    out: list[dict[str, Any]] = []
    for t in sorted(by_task):
        mine = list(by_task[t])
        rng.shuffle(mine)
        out.extend(mine[:cap])
    return out


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """The rows as calibrate's JSONL (one object per line), written atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text(p, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    return p
