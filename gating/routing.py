"""Per-request routing: the plan for a budget over the live experts, then the weights.

This is the decision half of the coordinator, with no sockets and no clock, so it can be
tested and benchmarked alone (``benchmarks/coordinator_bench.py`` counts decisions/s).

**Coarse level (the plan).** ``max F(S)`` under the request's budget, solved by
:func:`gating.selector.select_experts` *online* over the live experts and cached by
(live set, category, budget, k, τ). We chose the online selector over a precomputed plan
table (``edge-moe plan --sweep``) because node loss changes the expert set, and a table
is only valid for the set it was swept on; the exact selector takes well under a
millisecond for a handful of experts, and the cache makes repeats a dict lookup.

- F(S) is the planner's objective: validation accuracy of the gate-masked, renormalised
  top-k (or adaptive-τ) mixture restricted to S (:class:`gating.mixture.MixtureObjective`),
  over the calibration table's validation split with the gate's prior correction applied.
  Restricted to the live set L, F is evaluated on masks that are zero outside L.
- Costs are the profiles' p95 ``latency_ms[n, c]`` and ``energy_j[n, c]`` (N × C).
- Category given: only its column constrains the plan. Not given: every column (the
  worst case over categories).
- With τ (adaptive k) any member of S may be active, so energy is the sum over all of S
  (``top_k=None`` in the problem), as in the planner.

**Fine level.** The gate's logits for the prompt, softmaxed over S, then the top-k (or
smallest-k with mass ≥ τ) renormalised (:func:`gating.mixture.select_top_k`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_moe.config import BudgetConfig
from edge_moe.errors import ConfigError, DataFormatError, SelectionError
from edge_moe.runtime.gate import OnnxGate
from gating.mixture import (
    MixtureObjective,
    masked_gate_weights,
    select_top_k,
)
from gating.planner import load_inputs
from gating.planner import make_objective as planner_objective
from gating.selector import INFEASIBLE, Budget, Selection, SelectionProblem, select_experts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """A routing plan over the live experts.

    ``mask`` is (N,) over the gate's experts. ``min_energy_j`` / ``min_latency_ms`` are
    set when infeasible: the smallest budget of that kind (the other kept) that one live
    expert fits, or None when changing that budget alone does not help.
    """

    selection: Selection
    mask: np.ndarray
    live: tuple[str, ...]
    category: str | None
    energy_budget_j: float
    latency_budget_ms: float  # the binding one: the category's, or the smallest over categories
    top_k: int | None
    tau: float | None
    min_energy_j: float | None = None
    min_latency_ms: float | None = None
    cached: bool = False

    @property
    def feasible(self) -> bool:
        return self.selection.status != INFEASIBLE


class Router:
    """Plans and weights for requests.

    Args:
        gate: the loaded gate; its expert order is the router's.
        categories: C category names (the calibration table's).
        latency_ms, energy_j: (N, C) profiles in gate × category order.
        objectives: F(S) per (top_k, tau), built lazily by ``make_objective(top_k, tau)``.
        aggregation_ms: coordinator cost added to every plan's latency.
        default_budget: used for fields a request leaves out.
        top_k / tau: default fine level (tau wins when both are None-free; give one).
    """

    def __init__(self, gate: OnnxGate, categories: tuple[str, ...], latency_ms: np.ndarray,
                 energy_j: np.ndarray, make_objective: Any, aggregation_ms: float = 0.0,
                 default_budget: BudgetConfig | None = None, top_k: int | None = 2,
                 tau: float | None = None) -> None:
        n, c = len(gate.experts), len(categories)
        if np.shape(latency_ms) != (n, c) or np.shape(energy_j) != (n, c):
            raise DataFormatError(f"profiles must be (N, C) = ({n}, {c}), got latency "
                                  f"{np.shape(latency_ms)}, energy {np.shape(energy_j)}")
        self.gate = gate
        self.experts = tuple(gate.experts)
        self.index = {e: i for i, e in enumerate(self.experts)}
        self.categories = tuple(categories)
        self.latency_ms = np.asarray(latency_ms, np.float64)
        self.energy_j = np.asarray(energy_j, np.float64)
        self.aggregation_ms = float(aggregation_ms)
        self._make_objective = make_objective
        self._objectives: dict[tuple[int | None, float | None], Any] = {}
        self._plans: dict[tuple[Any, ...], Plan] = {}
        budget = default_budget or BudgetConfig()
        self.default_energy_j = float(budget.energy_j)
        lat = budget.latency_ms
        if isinstance(lat, dict):
            self.default_latency_ms = np.array([float(lat.get(c, math.inf)) for c in categories])
        else:
            self.default_latency_ms = np.full(c, float(lat))
        self.top_k, self.tau = top_k, tau

    # ---------------------------------------------------------------- coarse level

    def fine_level(self, top_k: int | None, tau: float | None) -> tuple[int | None, float | None]:
        """The request's (k, τ), falling back to the router's default."""
        if top_k is not None and tau is not None:
            raise SelectionError(f"give top_k or tau, not both (got top_k={top_k}, tau={tau})")
        if top_k is None and tau is None:
            return self.top_k, self.tau
        return top_k, tau

    def objective(self, top_k: int | None, tau: float | None) -> Any:
        key = (top_k, tau)
        if key not in self._objectives:
            self._objectives[key] = self._make_objective(top_k, tau)
        return self._objectives[key]

    def plan(self, live: tuple[str, ...] | list[str], category: str | None = None,
             energy_j: float | None = None, latency_ms: float | None = None,
             top_k: int | None = None, tau: float | None = None) -> Plan:
        """The plan for a budget over the live experts (cached).

        Args:
            live: names of the live experts (others, and names the gate lacks, are ignored).
            category: a category name, or None for the worst case over categories.
            energy_j / latency_ms: the request's budget; None takes the default.
            top_k / tau: the fine level (None, None takes the default).

        Raises:
            SelectionError: an unknown category, or a NaN/negative budget.
        """
        top_k, tau = self.fine_level(top_k, tau)
        live_t = tuple(sorted(e for e in set(live) if e in self.index))
        if category is not None and category not in self.categories:
            raise SelectionError(f"unknown category {category!r} (known: {', '.join(self.categories)})")
        for label, v in (("energy_j", energy_j), ("latency_ms", latency_ms)):
            if v is not None and (math.isnan(v) or v < 0):
                raise SelectionError(f"budget.{label}={v!r} must be a number >= 0 (inf for none)")
        key = (live_t, category, energy_j, latency_ms, top_k, tau)
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        plan = self._solve(live_t, category, energy_j, latency_ms, top_k, tau)
        if len(self._plans) > 4096:  # a stream of distinct budgets must not grow without bound
            self._plans.clear()
        self._plans[key] = replace(plan, cached=True)
        return plan

    def _solve(self, live: tuple[str, ...], category: str | None, energy_j: float | None,
               latency_ms: float | None, top_k: int | None, tau: float | None) -> Plan:
        cols = np.array([self.categories.index(category)] if category is not None
                        else range(len(self.categories)), dtype=np.intp)
        idx = np.array([self.index[e] for e in live], dtype=np.intp)
        e_budget = self.default_energy_j if energy_j is None else float(energy_j)
        l_budget = (self.default_latency_ms[cols] if latency_ms is None
                    else np.full(len(cols), float(latency_ms)))
        full = self.objective(top_k, tau)
        n = len(self.experts)

        def objective(mask: np.ndarray) -> float:
            m = np.zeros(n, dtype=bool)
            m[idx[mask]] = True
            return float(full(m))

        en = self.energy_j[np.ix_(idx, cols)] if idx.size else np.zeros((0, len(cols)))
        lat = self.latency_ms[np.ix_(idx, cols)] if idx.size else np.zeros((0, len(cols)))
        problem = SelectionProblem(experts=list(live), energy_j=en, latency_ms=lat, objective=objective,
                                   top_k=None if tau is not None else top_k,
                                   aggregation_ms=self.aggregation_ms,
                                   categories=[self.categories[c] for c in cols])
        sel = select_experts(problem, Budget(energy_j=e_budget, latency_ms=l_budget))
        mask = np.zeros(n, dtype=bool)
        mask[[self.index[e] for e in sel.experts]] = True
        min_e = min_l = None
        if sel.status == INFEASIBLE and idx.size:
            need_e = en.max(axis=1)  # (L,) J each expert needs alone, worst category
            lat_ok = (lat + self.aggregation_ms <= l_budget[None, :]).all(axis=1)
            en_ok = (en <= e_budget).all(axis=1)
            min_e = float(need_e[lat_ok].min()) if lat_ok.any() else None
            min_l = float((lat + self.aggregation_ms).max(axis=1)[en_ok].min()) if en_ok.any() else None
        return Plan(sel, mask, live, category, e_budget, float(l_budget.min()), top_k, tau,
                    min_e, min_l)

    # ---------------------------------------------------------------- fine level

    def weights(self, logits: np.ndarray, plan: Plan) -> np.ndarray:
        """(N,) weights of the experts that answer: top-k / τ of the gate softmax over S.

        Equals ``select_top_k(masked_gate_weights(logits, S), k, τ, S)``; the fixed-k case
        is computed here on the |S| members only (the same formulas in the same order),
        since it runs once per request.
        """
        n = len(self.experts)
        members = np.flatnonzero(plan.mask)
        if plan.tau is not None or members.size == 0:
            w = masked_gate_weights(np.asarray(logits, np.float64)[None, :], plan.mask)  # (1, N)
            return select_top_k(w, top_k=None, tau=plan.tau, mask=plan.mask)[0]
        g = np.asarray(logits, np.float64)[members]  # (|S|,)
        e = np.exp(g - g.max())
        w = e / e.sum()  # softmax over S
        if plan.top_k is not None and plan.top_k < members.size:
            keep = np.argsort(-w, kind="stable")[: plan.top_k]  # ties: lower expert index
            kept = np.zeros_like(w)
            kept[keep] = w[keep]
            w = kept
        out = np.zeros(n)
        out[members] = w / w.sum()
        return out

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        """(N,) gate logits for one (D,) or (1, D) embedding."""
        return self.gate.logits(np.asarray(embedding, np.float32).reshape(1, -1))[0]


def load_router(gate_path: str | os.PathLike[str], calibration: str | os.PathLike[str],
                profiles: str | os.PathLike[str], default_budget: BudgetConfig | None = None,
                top_k: int | None = 2, tau: float | None = None) -> Router:
    """A Router from the planner's inputs: gate.onnx, calibration table, profiles.

    Uses ``gating.planner.load_inputs`` with the given gate (no torch): the table is
    reordered to the gate's experts, prior-corrected, and its validation split scores F(S).

    Raises:
        GateError / DataFormatError: a file is missing or the three disagree.
        ConfigError: top_k and tau both given.
    """
    if top_k is not None and tau is not None:
        raise ConfigError(f"give top_k or tau, not both (got top_k={top_k}, tau={tau})")
    inputs = load_inputs(calibration, profiles, gate_path)

    def make_objective(k: int | None, t: float | None) -> MixtureObjective:
        return planner_objective(inputs, k, t)

    return Router(inputs.gate, inputs.categories, inputs.latency_ms, inputs.energy_j, make_objective,
                  inputs.profiles.aggregation_ms, default_budget, top_k, tau)
