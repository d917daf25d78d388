"""Per-query routing: one pure call from a query and the live experts to a :class:`Decision`.

:meth:`Router.route` is the decision half of the coordinator, with no sockets and no
bookkeeping, so it can be tested and benchmarked alone (``benchmarks/coordinator_bench.py``
counts decisions/s). It reads a clock only to report its stage ms. In order:

1. **Checks.** The protocol's value limits (:func:`edge_moe.wire.check_query`), then the
   category against the calibration table's. A bad request raises ``SelectionError``;
   each check runs once per query, here.
2. **Embed** the prompt (the router's embedder: MiniLM ONNX, or anything with
   ``embed(list[str]) -> (M, D)``) and compute the **gate** logits (``gate.onnx``).
3. **Fine level.** The query's ``top_k`` or ``tau``; neither given: the router's default.
4. **Coarse level (the plan).** ``max F(S)`` under the query's budget, solved by
   :func:`gating.selector.select_experts` *online* over the live experts and cached by
   (live set, category, budget, k, τ). We chose the online selector over a precomputed
   plan table (``edge-moe plan --sweep``) because node loss changes the expert set, and a
   table is only valid for the set it was swept on; the exact selector takes well under a
   millisecond for a handful of experts, and the cache makes repeats a dict lookup.

   - F(S) is the planner's objective: validation accuracy of the gate-masked, renormalised
     top-k (or adaptive-τ) mixture restricted to S (:func:`gating.inputs.make_objective`),
     over the calibration table's validation split with the gate's prior correction applied.
     Restricted to the live set L, F is evaluated on masks that are zero outside L.
   - Costs are the profiles' p95 ``latency_ms[n, c]`` and ``energy_j[n, c]`` (N × C).
   - Category given: only its column constrains the plan. Not given: every column (the
     worst case over categories).
   - With τ (adaptive k) any member of S may be active, so energy is the sum over all of S
     (``top_k=None`` in the problem), as in the planner.
5. **Weights.** The gate's logits softmaxed over S
   (:func:`edge_moe.runtime.gate.masked_gate_weights`), then the top-k (or smallest k with
   mass ≥ τ) renormalised (:func:`gating.mixture.select_top_k`; ties: lower gate index).

The outcome is a status: ``ok`` (the weights of the experts that answer), ``infeasible``
(no plan fits the budget: an answer, not an error) or ``no_experts`` (no live expert the
gate knows). The inputs come from :mod:`gating.inputs`, as the offline planner's do.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from edge_moe.config import BudgetConfig
from edge_moe.errors import ConfigError, DataFormatError, SelectionError
from edge_moe.runtime.gate import OnnxGate, masked_gate_weights
from edge_moe.wire import Query, check_query
from gating.inputs import load_inputs, make_objective
from gating.mixture import MixtureObjective, select_top_k
from gating.selector import INFEASIBLE, Budget, Selection, SelectionProblem, select_experts

logger = logging.getLogger(__name__)

MAX_CACHED_PLANS = 4096  # a stream of distinct budgets must not grow the cache without bound


class Embedder(Protocol):
    """Anything that embeds prompts: ``embed(texts) -> (M, D)`` (EncoderRunner, ToyEncoder)."""

    def embed(self, texts: list[str]) -> Any: ...


class Status(StrEnum):
    """What a :class:`Decision` says."""

    OK = "ok"  # the weights say who answers
    INFEASIBLE = "infeasible"  # no plan fits the budget; ``message`` says which constraint binds
    NO_EXPERTS = "no_experts"  # no live expert the gate knows


@dataclass(frozen=True)
class RoutePlan:
    """The coarse level of a decision: the selector's plan over the live experts.

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


@dataclass(frozen=True)
class Decision:
    """What :meth:`Router.route` decided for one query.

    Attributes:
        status: ok / infeasible / no_experts.
        message: why, when not ok (the selector's message, or the ERROR ``no_experts`` text).
        plan: the coarse level; None only when ``status`` is no_experts.
        weights: expert name → weight of the experts that answer, in gate order, summing
            to 1; empty unless ok.
        top_k / tau: the fine level used (the query's, or the router's default).
        logits: (N,) float32 gate logits for the prompt, in gate order.
        stage_ms: "embed", "gate" and "select" (plan and weights), in ms.
    """

    status: Status
    message: str
    plan: RoutePlan | None
    weights: dict[str, float]
    top_k: int | None
    tau: float | None
    logits: np.ndarray
    stage_ms: dict[str, float]

    @property
    def active(self) -> tuple[str, ...]:
        """The experts that answer, in gate order."""
        return tuple(self.weights)


class Router:
    """Decides each query: :meth:`route`.

    Args:
        gate: the loaded gate; its expert order is the router's.
        categories: C category names (the calibration table's).
        latency_ms, energy_j: (N, C) profiles in gate × category order.
        make_objective: ``make_objective(top_k, tau) -> F`` with ``F((N,) bool mask) -> float``;
            called once per fine level, lazily.
        aggregation_ms: coordinator cost added to every plan's latency.
        default_budget: used for the fields a query leaves out.
        top_k / tau: the default fine level (give at most one).
        embedder: embeds prompts (see :meth:`with_embedder`); needed by :meth:`route`.

    Raises:
        DataFormatError: the profiles are not (N, C).
        ConfigError: top_k and tau both given.
    """

    def __init__(self, gate: OnnxGate, categories: Sequence[str], latency_ms: np.ndarray,
                 energy_j: np.ndarray, make_objective: Callable[[int | None, float | None], Any],
                 aggregation_ms: float = 0.0, default_budget: BudgetConfig | None = None,
                 top_k: int | None = 2, tau: float | None = None,
                 embedder: Embedder | None = None) -> None:
        n, c = len(gate.experts), len(categories)
        if np.shape(latency_ms) != (n, c) or np.shape(energy_j) != (n, c):
            raise DataFormatError(f"profiles must be (N, C) = ({n}, {c}), got latency "
                                  f"{np.shape(latency_ms)}, energy {np.shape(energy_j)}")
        if top_k is not None and tau is not None:
            raise ConfigError(f"give top_k or tau, not both (got top_k={top_k}, tau={tau})")
        self.gate = gate
        self.embedder = embedder
        self.experts = tuple(gate.experts)
        self.index = {e: i for i, e in enumerate(self.experts)}
        self.prior = {e: gate.prior[i] for i, e in enumerate(self.experts)}  # (K,) each, for aggregation
        self.categories = tuple(categories)
        self.latency_ms = np.asarray(latency_ms, np.float64)
        self.energy_j = np.asarray(energy_j, np.float64)
        self.aggregation_ms = float(aggregation_ms)
        self._make_objective = make_objective
        self._objectives: dict[tuple[int | None, float | None], Any] = {}
        self._plans: dict[tuple[Any, ...], RoutePlan] = {}
        self._known_live: dict[tuple[str, ...], tuple[str, ...]] = {}
        budget = default_budget or BudgetConfig()
        self.default_energy_j = float(budget.energy_j)
        lat = budget.latency_ms
        if isinstance(lat, dict):
            self.default_latency_ms = np.array([float(lat.get(c, math.inf)) for c in categories])
        else:
            self.default_latency_ms = np.full(c, float(lat))
        self.top_k, self.tau = top_k, tau

    def with_embedder(self, embedder: Embedder) -> Router:
        """This router with another embedder; the plan cache and objectives are shared."""
        other = copy.copy(self)
        other.embedder = embedder
        return other

    def objective(self, top_k: int | None, tau: float | None) -> Any:
        """F(S) for a fine level (built on first use)."""
        key = (top_k, tau)
        if key not in self._objectives:
            self._objectives[key] = self._make_objective(top_k, tau)
        return self._objectives[key]

    # ---------------------------------------------------------------- the call

    def route(self, query: Query, live: Iterable[str], nodes: Sequence[str] = ()) -> Decision:
        """Decide one query over the live experts.

        Args:
            query: a decoded QUERY (its values are checked here).
            live: names of the live experts (names the gate lacks are ignored).
            nodes: names of the live nodes, quoted in the no_experts message.

        Returns:
            The Decision; infeasible budgets and an empty live set are statuses, not errors.

        Raises:
            SelectionError: the query breaks a value limit (:func:`edge_moe.wire.check_query`)
                or names an unknown category.
            ConfigError: the router has no embedder.
            GateError / RunnerError: the embedder or the gate failed on this prompt.
        """
        t0 = time.perf_counter()
        problem = check_query(query)
        if problem is not None:
            raise SelectionError(problem)
        if query.category is not None and query.category not in self.categories:
            raise SelectionError(f"unknown category {query.category!r} "
                                 f"(known: {', '.join(self.categories)})")
        if self.embedder is None:
            raise ConfigError("this router has no embedder: pass one to load_router or the Coordinator")
        if query.top_k is None and query.tau is None:
            top_k, tau = self.top_k, self.tau
        else:
            top_k, tau = query.top_k, query.tau
        embedding = self.embedder.embed([query.prompt])  # (1, D)
        t1 = time.perf_counter()
        logits = self.gate.logits(embedding)[0]  # (N,)
        t2 = time.perf_counter()
        live_t = self._known(live)
        if not live_t:
            return Decision(Status.NO_EXPERTS, f"no live expert (live nodes: {list(nodes)}; "
                            f"the gate knows {list(self.experts)})", None, {}, top_k, tau, logits,
                            _stages(t0, t1, t2, time.perf_counter()))
        budget = query.budget
        plan = self._plan(live_t, query.category, budget.energy_j if budget else None,
                          budget.latency_ms if budget else None, top_k, tau)
        if not plan.feasible:
            return Decision(Status.INFEASIBLE, plan.selection.message, plan, {}, top_k, tau, logits,
                            _stages(t0, t1, t2, time.perf_counter()))
        w = self._weights(logits, plan).tolist()  # (N,) zeros outside the experts that answer
        weights = {e: x for e, x in zip(self.experts, w, strict=True) if x > 0}
        return Decision(Status.OK, "", plan, weights, top_k, tau, logits,
                        _stages(t0, t1, t2, time.perf_counter()))

    # ---------------------------------------------------------------- fine level

    @staticmethod
    def _weights(logits: np.ndarray, plan: RoutePlan) -> np.ndarray:
        """(N,) weights of the experts that answer: top-k / τ of the gate softmax over S.

        Equals ``select_top_k(masked_gate_weights(logits, S), k, τ, S)``, and the softmax is
        that function's (a 1-row call). Fixed k keeps the k largest here, in select_top_k's
        order (descending weight, ties to the lower gate index), because select_top_k's
        general (M, N) path costs several times the rest of a decision; τ goes through it.
        """
        w = masked_gate_weights(logits[None, :], plan.mask)  # (1, N) softmax over S, zeros outside
        members = plan.mask.nonzero()[0]  # S in gate order
        if plan.tau is not None or members.size == 0:
            return select_top_k(w, top_k=None, tau=plan.tau, mask=plan.mask)[0]
        out = w[0]  # (N,)
        if plan.top_k is not None and plan.top_k < members.size:
            order = np.argsort(-out[members], kind="stable")  # (|S|,) stable: lower index first on ties
            out[members[order[plan.top_k:]]] = 0.0
        return out / out.sum()

    # ---------------------------------------------------------------- coarse level

    def _known(self, live: Iterable[str]) -> tuple[str, ...]:
        """The live experts the gate knows, sorted (memoised: the live set rarely changes)."""
        key = live if isinstance(live, tuple) else tuple(live)
        hit = self._known_live.get(key)
        if hit is None:
            if len(self._known_live) > MAX_CACHED_PLANS:
                self._known_live.clear()
            hit = self._known_live[key] = tuple(sorted(e for e in set(key) if e in self.index))
        return hit

    def _plan(self, live: tuple[str, ...], category: str | None, energy_j: float | None,
              latency_ms: float | None, top_k: int | None, tau: float | None) -> RoutePlan:
        """The plan over ``live`` (sorted, known to the gate), from the cache when it is there."""
        key = (live, category, energy_j, latency_ms, top_k, tau)
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        plan = self._solve(live, category, energy_j, latency_ms, top_k, tau)
        if len(self._plans) > MAX_CACHED_PLANS:
            self._plans.clear()
        self._plans[key] = replace(plan, cached=True)
        return plan

    def _solve(self, live: tuple[str, ...], category: str | None, energy_j: float | None,
               latency_ms: float | None, top_k: int | None, tau: float | None) -> RoutePlan:
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
        return RoutePlan(sel, mask, live, category, e_budget, float(l_budget.min()), top_k, tau,
                         min_e, min_l)


def _stages(t0: float, t1: float, t2: float, t3: float) -> dict[str, float]:
    return {"embed": (t1 - t0) * 1e3, "gate": (t2 - t1) * 1e3, "select": (t3 - t2) * 1e3}


def load_router(gate_path: str | os.PathLike[str], calibration: str | os.PathLike[str],
                profiles: str | os.PathLike[str], default_budget: BudgetConfig | None = None,
                top_k: int | None = 2, tau: float | None = None,
                embedder: Embedder | None = None) -> Router:
    """A Router from the planner's inputs: gate.onnx, calibration table, profiles.

    Uses :func:`gating.inputs.load_inputs` with the given gate (no torch): the table is
    reordered to the gate's experts, prior-corrected, and its validation split scores F(S).

    Raises:
        GateError / DataFormatError: a file is missing or the three disagree.
        ConfigError: top_k and tau both given.
    """
    if top_k is not None and tau is not None:  # before the files are read
        raise ConfigError(f"give top_k or tau, not both (got top_k={top_k}, tau={tau})")
    inputs = load_inputs(calibration, profiles, gate_path)

    def objective(k: int | None, t: float | None) -> MixtureObjective:
        return make_objective(inputs, k, t)

    return Router(inputs.gate, inputs.categories, inputs.latency_ms, inputs.energy_j, objective,
                  inputs.profiles.aggregation_ms, default_budget, top_k, tau, embedder)
