"""The SmolLM2 demo's questions: which are asked, at which budgets, and the printed answers.

:func:`load_questions` picks seeded MMLU questions per category (as letter prompts);
:func:`budgets` derives the tight, medium and loose (energy, latency) budgets from the
profiles; :func:`ask` asks each held-out question and one free-form question at every budget
through the fleet's coordinator; :func:`print_table` prints the rows and each budget's
accuracy, ms and modelled J. The job that runs them is :func:`edge_moe.jobs.demo.run_demo`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_moe.calibration import letter_prompt
from edge_moe.paths import CONFIGS

CATEGORY_MAP = CONFIGS / "mmlu_categories.yaml"
LETTERS = "ABCD"
FREE_FORM = "What is the capital of France? Answer in one word."
FREE_FORM_TOKENS = 8  # the free-form query's max_new_tokens, and the longer timed generation


@dataclass(frozen=True)
class Question:
    prompt: str  # the letter prompt every expert sees (edge_moe.calibration.letter_prompt)
    question: str  # the question alone, for the printed table
    options: tuple[str, ...]
    label: int
    category: str
    topic: str


def load_questions(seed: int, per_category: int, skip: int = 0) -> list[Question]:
    """``per_category`` MMLU questions per category, seeded; ``skip`` leaves out the first
    ``skip`` of each category's shuffled list (so held-out questions never overlap)."""
    from exporters.assets import mmlu_rows

    groups = yaml.safe_load(CATEGORY_MAP.read_text())
    topic_cat = {t: c for c, topics in groups.items() for t in topics}
    by_cat: dict[str, list[dict[str, Any]]] = {c: [] for c in groups}
    for row in mmlu_rows():
        if row["topic"] in topic_cat and len(row["question"]) < 400:
            by_cat[topic_cat[row["topic"]]].append(row)
    rng = random.Random(seed)
    out = []
    for cat, rows in by_cat.items():
        rng.shuffle(rows)
        for row in rows[skip: skip + per_category]:
            options = tuple(row["answer_" + L.lower()] for L in LETTERS)
            out.append(Question(letter_prompt(row["question"], options, row["topic"]), row["question"].strip(), options,
                                LETTERS.index(row["correct_answer"]), cat, row["topic"]))
    return out


def _say(msg: str) -> None:
    print(msg, flush=True)


def budgets(profiles_path: Path) -> dict[str, tuple[float, float]]:
    """(energy J, latency ms) for tight, medium and loose, from the profiles.

    tight: only the cheapest expert fits; medium: the two cheapest together (with a
    latency budget wide enough for the slowest expert on 2 shared cores); loose: none.
    The latency budget is also the query's deadline, so a slow answer past it is an
    ERROR deadline row, not a hidden wait.
    """
    from edge_moe.profiles import load_profiles

    prof = load_profiles(profiles_path)
    worst_j = sorted(max(f.value for f in e.energy_j.values()) for e in prof.experts)
    worst_ms = sorted(max(f.value for f in e.latency_ms.values()) for e in prof.experts)
    return {"tight": (round(worst_j[0] * 1.05, 4), round(worst_ms[0] * 1.5 + prof.aggregation_ms + 50)),
            "medium": (round((worst_j[0] + worst_j[1]) * 1.05, 4), round(worst_ms[-1] * 3 + 200)),
            "loose": (math.inf, math.inf)}


def ask(endpoint: str, questions: Sequence[Question], budget_set: dict[str, tuple[float, float]]
        ) -> list[dict[str, Any]]:
    from edge_moe.client import EdgeMoEClient
    from edge_moe.wire import Error

    rows = []
    with EdgeMoEClient(endpoint, timeout_s=60, retries=0) as client:
        for level, (energy, latency) in budget_set.items():
            for q in [*questions, None]:
                free = q is None
                r = client.query(FREE_FORM if q is None else q.prompt, None if q is None else q.options,
                                 category=None if q is None else q.category,
                                 energy_j=None if math.isinf(energy) else energy,
                                 latency_ms=None if math.isinf(latency) else latency,
                                 max_new_tokens=FREE_FORM_TOKENS, deadline_ms=60_000 if free else None)
                row: dict[str, Any] = {"budget": level, "energy_budget_j": energy, "latency_budget_ms": latency,
                                       "question": FREE_FORM if q is None else q.question,
                                       "category": "free-form" if q is None else q.category}
                if isinstance(r, Error):
                    row.update(answer=f"ERROR {r.code}: {r.message}", ok=None, experts="", ms=0.0, j=0.0,
                               source="")
                elif r.plan.status == "infeasible":
                    row.update(answer="(infeasible budget)", ok=None, experts=r.plan.message[:60], ms=r.total_ms,
                               j=0.0, source="")
                else:
                    ans = repr(r.text) if free else LETTERS[r.answer_index or 0]
                    row.update(answer=ans, ok=None if q is None else (r.answer_index == q.label),
                               experts=", ".join(f"{u.name.removeprefix('smollm2-135m-')}={u.weight:.2f}"
                                                 + ("" if u.status == "ok" else f" ({u.status})")
                                                 for u in r.experts),
                               ms=r.total_ms, j=r.energy_j, source=r.energy_source,
                               degraded=r.degraded)
                rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edge-moe demo: MMLU + free-form at three budgets "
                    "(ms measured end to end; J MODELLED from device-class power)")
    for col in ("budget", "E / T budget", "category", "question", "answer", "right", "experts (weights)",
                "ms", "J (modelled)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        eb = "inf" if math.isinf(r["energy_budget_j"]) else f"{r['energy_budget_j']:.3g} J"
        lb = "inf" if math.isinf(r["latency_budget_ms"]) else f"{r['latency_budget_ms']:.0f} ms"
        right = "-" if r["ok"] is None else ("yes" if r["ok"] else "no")
        t.add_row(r["budget"], f"{eb} / {lb}", r["category"], r["question"][:48], r["answer"], right,
                  r["experts"], f"{r['ms']:.0f}", f"{r['j']:.3g}")
    Console(soft_wrap=False, width=200).print(t)
    for level in ("tight", "medium", "loose"):
        mine = [r for r in rows if r["budget"] == level and r["ok"] is not None]
        if mine:
            acc = sum(r["ok"] for r in mine) / len(mine)
            _say(f"[demo] {level}: {len(mine)} MMLU questions, accuracy {acc:.2f}, "
                 f"mean {np.mean([r['ms'] for r in mine]):.0f} ms, "
                 f"mean {np.mean([r['j'] for r in mine]):.3g} J (modelled)")
