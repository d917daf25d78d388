"""Shared inputs for the tests of the report's library modules (``gating.offline.evaluation`` ...).

- ``toy_inputs``: the planner's aligned inputs over a small SYNTHETIC table with a linear
  gate (``gating.offline.synthetic.write_toy_inputs``; no torch, no training), loaded the way the
  report loads them (``gating.planning.planner.load_inputs``);
- ``weights_of``: the fine level's weights from their definition, one sample at a time;
- ``toy``: a small selection problem with a random, non-monotone F (:class:`ToySelection`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from gating.offline.synthetic import write_toy_inputs
from gating.planning import planner
from gating.planning.selector import Budget, SelectionProblem

N_EXPERTS = 4


@pytest.fixture(scope="session")
def toy_inputs(tmp_path_factory: pytest.TempPathFactory) -> planner.PlanInputs:
    out: Path = tmp_path_factory.mktemp("toy")
    _, cal, prof, gate = write_toy_inputs(out, n_experts=N_EXPERTS, embedding_dim=8, seed=3, n_samples=400,
                                          n_categories=3)
    return planner.load_inputs(cal, prof, gate)


@pytest.fixture(scope="session")
def weights_of():  # the helper below, as a fixture: conftest is not importable
    return reference_weights


def reference_weights(logits: np.ndarray, mask: np.ndarray, top_k: int | None, tau: float | None) -> np.ndarray:
    """(M, N) fine-level weights from their definition, one sample at a time: the softmax of
    the gate over S, then the k largest (ties: lower index) or the fewest reaching mass τ,
    renormalised; neither: all of S."""
    out = np.zeros(logits.shape)
    members = np.flatnonzero(mask)
    for i, row in enumerate(logits):
        z = np.exp(row[members] - row[members].max())
        w = z / z.sum()  # softmax over S
        order = sorted(range(len(members)), key=lambda j: (-w[j], members[j]))
        if top_k is not None:
            keep = order[:top_k]
        elif tau is not None:
            keep, mass = [], 0.0
            for j in order:
                keep.append(j)
                mass += w[j]
                if mass >= tau - 1e-9:
                    break
        else:
            keep = order
        total = sum(w[j] for j in keep)
        for j in keep:
            out[i, members[j]] = w[j] / total
    return out


class ToySelection:
    """A 5-expert, 2-category selection problem with a random (far from monotone) F by subset id."""

    n, aggregation_ms = 5, 1.0

    def __init__(self) -> None:
        rng = np.random.default_rng(11)
        self.energy = rng.uniform(1.0, 10.0, size=(self.n, 2))  # (N, C) J
        self.latency = rng.uniform(10.0, 100.0, size=(self.n, 2))  # (N, C) ms
        self.values = rng.uniform(0.0, 1.0, size=1 << self.n)  # F of subset id (bit j = expert j)
        self.subsets = [s for r in range(1, self.n + 1) for s in itertools.combinations(range(self.n), r)]

    def value(self, members: tuple[int, ...]) -> float:
        return float(self.values[sum(1 << j for j in members)])

    def objective(self, mask: np.ndarray) -> float:
        return self.value(tuple(int(j) for j in np.flatnonzero(mask)))

    def problem(self, top_k: int | None) -> SelectionProblem:
        return SelectionProblem(experts=[f"e{j}" for j in range(self.n)], energy_j=self.energy,
                                latency_ms=self.latency, objective=self.objective, top_k=top_k,
                                aggregation_ms=self.aggregation_ms)

    def fits(self, members: tuple[int, ...], budget: Budget, top_k: int | None) -> bool:
        """The budget from its definition: the k costliest members' J per category, the slowest ms."""
        if not members:
            return True
        chosen = -np.sort(-self.energy[list(members)], axis=0)[:top_k]  # (≤k, C) costliest first
        lat = np.asarray(budget.latency_ms)
        return bool((chosen.sum(axis=0) <= budget.energy_j * (1 + 1e-9)).all()
                    and (self.latency[list(members)].max(axis=0) + self.aggregation_ms <= lat * (1 + 1e-9)).all())


@pytest.fixture(scope="session")
def toy() -> ToySelection:
    return ToySelection()
