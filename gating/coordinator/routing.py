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
   :func:`gating.planning.selector.select_experts` *online* over the live experts and cached by
   (live set, category, budget, k, τ). We chose the online selector over a precomputed
   plan table (``edge-moe plan --sweep``) because node loss changes the expert set, and a
   table is only valid for the set it was swept on; the exact selector takes well under a
   millisecond for a handful of experts, and the cache makes repeats a dict lookup.

   - F(S) is the planner's objective (``load_router(objective=...)``, the coordinator config's
     ``objective``; default the mean log-likelihood): of the gate-masked, renormalised top-k
     (or adaptive-τ) mixture restricted to S (:func:`gating.planning.inputs.make_objective`), over the
     calibration table's validation split with the gate's calibration (prior, temperatures) applied.
     Restricted to the live set L, F is evaluated on masks that are zero outside L.
   - Costs are the profiles' p95 ``latency_ms[n, c]`` and ``energy_j[n, c]`` (N × C) for an
     options query; for a generation query of ``max_new_tokens`` T, the profiles' generation
     model: ``prefill_ms + T·per_token_ms`` and ``prefill_j + T·j_per_token``
     (:class:`edge_moe.profiles.GenerationCosts`). Profiles without one plan generation with
     the scoring costs, and the plan's ``note`` (in ``plan.message``) says so.
   - Load (:meth:`Router.decide`'s ``wait_ms``): each expert's predicted queue wait is added
     to its latency costs, rounded to a :data:`LOAD_STEP_MS` grid (the cache key holds the
     grid values). Idle plans fit but loaded ones do not: status ``overloaded`` and
     ``retry_after_ms``. Among plans of the same F, a member is swapped for a less loaded
     non-member when the set stays feasible (:func:`_spread`).
   - Category given: only its column constrains the plan. Not given: every column (the
     worst case over categories).
   - With τ (adaptive k) any member of S may be active, so energy is the sum over all of S
     (``top_k=None`` in the problem), as in the planner.
5. **Weights.** The gate's logits softmaxed over S
   (:func:`edge_moe.runtime.gate.masked_gate_weights`), then the top-k (or smallest k with
   mass ≥ τ) renormalised (:func:`gating.planning.mixture.select_top_k`; ties: lower gate index).

The outcome is a status: ``ok`` (the weights of the experts that answer), ``infeasible``
(no plan fits the budget even on idle nodes: an answer, not an error), ``overloaded`` (a
plan would fit on idle nodes, none fits at the current queues) or ``no_experts`` (no live
expert the gate knows). :meth:`Router.route` is :meth:`Router.prepare` (the checks, cheap),
:meth:`Router.score` (embedding and gate: the compute, batched, run off the coordinator's
loop) and :meth:`Router.decide` (plan and weights from the logits, cheap). The inputs come from :mod:`gating.planning.inputs`, as the offline planner's do.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from edge_moe.config import BudgetConfig
from edge_moe.errors import ConfigError, DataFormatError, SelectionError
from edge_moe.profiles import GenerationCosts
from edge_moe.runtime.gate import OnnxGate, masked_gate_weights
from edge_moe.wire import Query, check_query
from gating.planning.inputs import DEFAULT_OBJECTIVE, load_inputs, make_objective
from gating.planning.mixture import MixtureObjective, select_top_k
from gating.planning.problem import validate
from gating.planning.selector import INFEASIBLE, Budget, Selection, SelectionProblem, select_experts

logger = logging.getLogger(__name__)

MAX_CACHED_PLANS = 4096  # a stream of distinct budgets must not grow the cache without bound
LOAD_STEP_MS = 10.0  # queue waits are planned on this grid, so load-aware plans cache
ENERGY_SCALE_STEP = 0.05  # energy slow-down factors are planned rounded up to this grid


class Embedder(Protocol):
    """Anything that embeds prompts: ``embed(texts) -> (M, D)`` (EncoderRunner, ToyEncoder)."""

    def embed(self, texts: list[str]) -> Any: ...


class Status(StrEnum):
    """What a :class:`Decision` says."""

    OK = "ok"  # the weights say who answers
    INFEASIBLE = "infeasible"  # no plan fits the budget; ``message`` says which constraint binds
    NO_EXPERTS = "no_experts"  # no live expert the gate knows
    OVERLOADED = "overloaded"  # a plan fits the budget on idle nodes, none at the current queues


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
    wait_ms: tuple[float, ...] = ()  # per ``live`` expert: the queue wait planned with (on the grid)
    note: str = ""  # e.g. a generation query planned without a generation model

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
        logits: (N,) float32 gate logits for the prompt, in gate order (None when decided
            for admission, before the prompt was embedded).
        stage_ms: "embed", "gate" and "select" (plan and weights), in ms.
        retry_after_ms: when overloaded, the predicted ms until the least loaded expert that
            fits the budget alone would fit it at its queue; else None.
        predicted_ms: per live expert of the plan's live set, its predicted completion
            (queue wait + profile, worst planned category), in ms.
    """

    status: Status
    message: str
    plan: RoutePlan | None
    weights: dict[str, float]
    top_k: int | None
    tau: float | None
    logits: np.ndarray | None
    stage_ms: dict[str, float]
    retry_after_ms: float | None = None
    predicted_ms: dict[str, float] = field(default_factory=dict)

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
                 embedder: Embedder | None = None, generation: GenerationCosts | None = None,
                 generation_note: str = "") -> None:
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
        self.temperature = {e: float(gate.temperature[i]) for i, e in enumerate(self.experts)}  # after the prior
        self.categories = tuple(categories)
        self.latency_ms = np.asarray(latency_ms, np.float64)
        self.energy_j = np.asarray(energy_j, np.float64)
        self.generation = generation  # GenerationCosts in gate x category order, or None
        self.generation_note = generation_note or (
            "the profiles have no generation model: planned with option-scoring costs")
        self.aggregation_ms = float(aggregation_ms)
        self._make_objective = make_objective
        self._objectives: dict[tuple[int | None, float | None], Any] = {}
        self._plans: dict[tuple[Any, ...], RoutePlan] = {}
        self._known_live: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._gen_costs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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

    # ---------------------------------------------------------------- the calls

    def route(self, query: Query, live: Iterable[str], nodes: Sequence[str] = (),
              wait_ms: Mapping[str, float] | None = None,
              energy_scale: Mapping[str, float] | None = None) -> Decision:
        """Decide one query over the live experts: :meth:`prepare`, :meth:`score`, :meth:`decide`.

        Args:
            query: a decoded QUERY (its values are checked here).
            live: names of the live experts (names the gate lacks are ignored).
            nodes: names of the live nodes, quoted in the no_experts message.
            wait_ms: expert → predicted queue wait (load-aware planning); None plans on
                idle nodes.
            energy_scale: expert → energy factor (see :meth:`decide`).

        Returns:
            The Decision; infeasible budgets, overload and an empty live set are statuses,
            not errors.

        Raises:
            SelectionError: the query breaks a value limit (:func:`edge_moe.wire.check_query`)
                or names an unknown category.
            ConfigError: the router has no embedder.
            GateError / RunnerError: the embedder or the gate failed on this prompt.
        """
        self.prepare(query)
        logits, embed_ms, gate_ms = self.score([query.prompt])
        return self.decide(query, logits[0], live, nodes, wait_ms, embed_ms=embed_ms, gate_ms=gate_ms,
                           energy_scale=energy_scale)

    def prepare(self, query: Query) -> None:
        """Check the query before it is embedded (cheap; the coordinator's I/O loop runs it).

        Raises:
            SelectionError: a value limit (:func:`edge_moe.wire.check_query`) or an unknown
                category.
            ConfigError: the router has no embedder.
        """
        problem = check_query(query)
        if problem is not None:
            raise SelectionError(problem)
        if query.category is not None and query.category not in self.categories:
            raise SelectionError(f"unknown category {query.category!r} "
                                 f"(known: {', '.join(self.categories)})")
        if query.expert is not None and query.expert not in self.index:
            raise SelectionError(f"unknown expert {query.expert!r} (known: {', '.join(self.experts)})")
        if self.embedder is None:
            raise ConfigError("this router has no embedder: pass one to load_router or the Coordinator")

    def score(self, prompts: list[str]) -> tuple[np.ndarray, float, float]:
        """Gate logits for a batch of prompts: ``((M, N) float32, embed ms, gate ms)``.

        The compute half of a decision (the coordinator runs it off its I/O loop, on
        :class:`gating.coordinator.embedding.EmbedWorker`'s thread).

        Raises:
            ConfigError: no embedder. GateError / RunnerError: the embedder or gate failed.
        """
        if self.embedder is None:
            raise ConfigError("this router has no embedder: pass one to load_router or the Coordinator")
        t0 = time.perf_counter()
        embedding = self.embedder.embed(list(prompts))  # (M, D)
        t1 = time.perf_counter()
        logits = self.gate.logits(embedding)  # (M, N)
        t2 = time.perf_counter()
        return logits, (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def decide(self, query: Query, logits: np.ndarray | None, live: Iterable[str], nodes: Sequence[str] = (),
               wait_ms: Mapping[str, float] | None = None, *, embed_ms: float = 0.0,
               gate_ms: float = 0.0, energy_scale: Mapping[str, float] | None = None) -> Decision:
        """Plan and weight one (prepared) query from its gate logits; cheap, no model runs.

        Args:
            query: the QUERY (checked by :meth:`prepare`).
            logits: (N,) its gate logits (:meth:`score`); None for *admission*: the plan
                (which does not depend on the prompt) and its status, with no weights, so
                that an overloaded or infeasible query is answered before it is embedded.
            live / nodes: as in :meth:`route`.
            wait_ms: expert → predicted ms before its node can start the query's task (the
                coordinator's :class:`gating.coordinator.load.LoadTracker`, plus the time the query has
                already spent at the coordinator); ``inf`` for a node that went silent.
                Added to the expert's latency profile; rounded to the
                :data:`LOAD_STEP_MS` grid so that plans cache. None: plan on idle nodes.
            embed_ms / gate_ms: reported in ``stage_ms``.
            energy_scale: expert → factor ≥ 1 on its energy profile (its recent joules per
                task over the profile's: a node slowed by contention spends more modelled J);
                rounded up to steps of :data:`ENERGY_SCALE_STEP`. None: the profiles as they are.

        Returns:
            ok / infeasible (even idle nodes could not meet the budget) / overloaded (idle
            nodes could, these queues cannot; ``retry_after_ms`` says when one could) /
            no_experts.
        """
        t2 = time.perf_counter()
        if query.top_k is None and query.tau is None:
            top_k, tau = self.top_k, self.tau
        else:
            top_k, tau = query.top_k, query.tau
        live_t = self._known(live)
        if query.expert is not None:  # pinned: a plan over that expert alone
            live_t = tuple(e for e in live_t if e == query.expert)
            top_k, tau = 1, None

        def stages() -> dict[str, float]:
            return {"embed": embed_ms, "gate": gate_ms, "select": (time.perf_counter() - t2) * 1e3}

        if not live_t:
            return Decision(Status.NO_EXPERTS, f"no live expert (live nodes: {list(nodes)}; "
                            f"the gate knows {list(self.experts)})", None, {}, top_k, tau, logits,
                            stages())
        budget = query.budget
        energy_b = budget.energy_j if budget else None
        latency_b = budget.latency_ms if budget else None
        gen = None if query.options is not None else int(query.max_new_tokens)
        # a node that went silent (infinite wait) is not planned until it is heard from again
        responsive = (live_t if not wait_ms else
                      tuple(e for e in live_t if math.isfinite(wait_ms.get(e, 0.0))))
        wait = _quantise(responsive, wait_ms)
        scale = _scales(responsive, energy_scale)
        plan = (self._plan(responsive, query.category, energy_b, latency_b, top_k, tau, gen, wait, scale)
                if responsive else None)
        retry = None
        if plan is None or (not plan.feasible and (any(wait) or responsive != live_t)):
            # idle nodes at the costs measured lately (the energy factors kept): does load bind?
            idle = self._plan(live_t, query.category, energy_b, latency_b, top_k, tau, gen, (),
                              _scales(live_t, energy_scale))
            if idle.feasible:
                plan = plan or replace(idle, selection=_empty(idle), mask=np.zeros_like(idle.mask))
                retry = self._retry_after(plan, gen) if responsive else None
                predicted = self._predicted(plan, gen)
                silent = sorted(set(live_t) - set(responsive))
                best = min(predicted.items(), key=lambda kv: kv[1]) if predicted else None
                msg = (f"overloaded: no plan meets the {plan.latency_budget_ms:g} ms latency "
                       "budget at the current queues"
                       + (f" (fastest predicted: {best[0]} {best[1]:.0f} ms = queue "
                          f"{plan.wait_ms[plan.live.index(best[0])]:.0f} ms + profile)" if best else "")
                       + (f"; experts {silent} are on silent nodes" if silent else "")
                       + (f"; retry in {retry:.0f} ms" if retry is not None else "; no retry time known"))
                return Decision(Status.OVERLOADED, msg, plan, {}, top_k, tau, logits, stages(),
                                retry, predicted)
            if plan is None:
                plan = idle
        predicted = self._predicted(plan, gen)
        if not plan.feasible:
            return Decision(Status.INFEASIBLE, plan.selection.message, plan, {}, top_k, tau, logits,
                            stages(), None, predicted)
        if logits is None:  # admission only: the plan, no weights yet
            return Decision(Status.OK, "", plan, {}, top_k, tau, logits, stages(), None, predicted)
        w = self._weights(logits, plan).tolist()  # (N,) zeros outside the experts that answer
        weights = {e: x for e, x in zip(self.experts, w, strict=True) if x > 0}
        return Decision(Status.OK, "", plan, weights, top_k, tau, logits, stages(), None, predicted)

    def standby(self, logits: np.ndarray, plan: RoutePlan) -> list[tuple[str, float]]:
        """The plan's members with their gate weight (the softmax over S, before top-k),
        highest first: fail-over picks a stand-in among those not answering yet."""
        w = masked_gate_weights(logits[None, :], plan.mask)[0]  # (N,) softmax over S
        return sorted(((e, float(w[self.index[e]])) for e in plan.selection.experts),
                      key=lambda t: -t[1])

    def latency_budget_ms(self, query: Query) -> float:
        """The latency budget the query is planned with: its own, else the default for its
        category (the smallest over categories without one)."""
        if query.budget is not None and query.budget.latency_ms is not None:
            return float(query.budget.latency_ms)
        if query.category is not None:
            return float(self.default_latency_ms[self.categories.index(query.category)])
        return float(self.default_latency_ms.min())

    def profile_energy_j(self, query: Query, expert: str) -> float:
        """The expert's profiled joules for this query (its kind, its category or the worst
        over categories)."""
        gen = None if query.options is not None else int(query.max_new_tokens)
        _, en = self._costs(gen)
        row = en[self.index[expert]]
        return float(row[self.categories.index(query.category)] if query.category is not None else row.max())

    def profile_ms(self, query: Query, expert: str) -> float:
        """The expert's profiled latency for this query (its kind, its category or the
        worst over categories), in ms."""
        gen = None if query.options is not None else int(query.max_new_tokens)
        lat, _ = self._costs(gen)
        row = lat[self.index[expert]]
        return float(row[self.categories.index(query.category)] if query.category is not None else row.max())

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

    def _costs(self, gen: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(latency_ms, energy_j), each (N, C): option scoring (``gen`` None), or a
        generation of ``gen`` tokens from the generation model (scoring costs without one)."""
        if gen is None or self.generation is None:
            return self.latency_ms, self.energy_j
        hit = self._gen_costs.get(gen)
        if hit is None:
            if len(self._gen_costs) > MAX_CACHED_PLANS:
                self._gen_costs.clear()
            hit = self._gen_costs[gen] = (np.asarray(self.generation.latency_ms(gen), np.float64),
                                          np.asarray(self.generation.energy_j(gen), np.float64))
        return hit

    def _plan(self, live: tuple[str, ...], category: str | None, energy_j: float | None,
              latency_ms: float | None, top_k: int | None, tau: float | None,
              gen: int | None = None, wait: tuple[float, ...] = (),
              scale: tuple[float, ...] = ()) -> RoutePlan:
        """The plan over ``live`` (sorted, known to the gate), from the cache when it is there.

        ``wait`` (quantised, per live expert; () for idle) is added to the latency costs.
        Generation plans are keyed by their token count only with a generation model.
        """
        kind = gen if (gen is not None and self.generation is not None) else (None if gen is None else -1)
        key = (live, category, energy_j, latency_ms, top_k, tau, kind, wait if any(wait) else (), scale)
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        plan = self._solve(live, category, energy_j, latency_ms, top_k, tau, gen,
                           wait if any(wait) else (), scale)
        if len(self._plans) > MAX_CACHED_PLANS:
            self._plans.clear()
        self._plans[key] = replace(plan, cached=True)
        return plan

    def _solve(self, live: tuple[str, ...], category: str | None, energy_j: float | None,
               latency_ms: float | None, top_k: int | None, tau: float | None,
               gen: int | None = None, wait: tuple[float, ...] = (),
               scale: tuple[float, ...] = ()) -> RoutePlan:
        cols = self._cols(category)
        idx = np.array([self.index[e] for e in live], dtype=np.intp)
        e_budget = self.default_energy_j if energy_j is None else float(energy_j)
        l_budget = (self.default_latency_ms[cols] if latency_ms is None
                    else np.full(len(cols), float(latency_ms)))
        full = self.objective(top_k, tau)
        n = len(self.experts)
        base_lat, base_en = self._costs(gen)

        def objective(mask: np.ndarray) -> float:
            m = np.zeros(n, dtype=bool)
            m[idx[mask]] = True
            return float(full(m))

        en = base_en[np.ix_(idx, cols)] if idx.size else np.zeros((0, len(cols)))
        lat = base_lat[np.ix_(idx, cols)] if idx.size else np.zeros((0, len(cols)))
        if wait:
            lat = lat + np.asarray(wait, np.float64)[:, None]
        if scale:
            en = en * np.asarray(scale, np.float64)[:, None]
        problem = SelectionProblem(experts=list(live), energy_j=en, latency_ms=lat, objective=objective,
                                   top_k=None if tau is not None else top_k,
                                   aggregation_ms=self.aggregation_ms,
                                   categories=[self.categories[c] for c in cols], monotone=False)
        budget = Budget(energy_j=e_budget, latency_ms=l_budget)
        sel = select_experts(problem, budget)
        if wait and sel.status != INFEASIBLE:
            sel = _spread(problem, budget, sel, wait)
        mask = np.zeros(n, dtype=bool)
        mask[[self.index[e] for e in sel.experts]] = True
        min_e = min_l = None
        if sel.status == INFEASIBLE and idx.size:
            need_e = en.max(axis=1)  # (L,) J each expert needs alone, worst category
            lat_ok = (lat + self.aggregation_ms <= l_budget[None, :]).all(axis=1)
            en_ok = (en <= e_budget).all(axis=1)
            min_e = float(need_e[lat_ok].min()) if lat_ok.any() else None
            finite = en_ok & np.isfinite(lat).all(axis=1)
            min_l = float((lat + self.aggregation_ms).max(axis=1)[finite].min()) if finite.any() else None
        note = self.generation_note if gen is not None and self.generation is None else ""
        if scale:
            lately = ", ".join(f"{e} x{f:.2f}" for e, f in zip(live, scale, strict=True) if f > 1.0)
            note = "; ".join(n for n in (note, f"energy at the joules measured lately ({lately})") if n)
        return RoutePlan(sel, mask, live, category, e_budget, float(l_budget.min()), top_k, tau,
                         min_e, min_l, wait_ms=tuple(wait) if wait else (0.0,) * len(live), note=note)

    def _cols(self, category: str | None) -> np.ndarray:
        """The category columns a plan is made over: the category's, or every one."""
        if category is not None:
            return np.array([self.categories.index(category)], dtype=np.intp)
        return np.arange(len(self.categories), dtype=np.intp)

    def _slack_ms(self, plan: RoutePlan, gen: int | None) -> dict[str, float]:
        """Per live expert that fits the energy budget alone: latency budget − (profile +
        aggregation), the most queue wait it can take (worst planned category)."""
        lat, en = self._costs(gen)
        cols = self._cols(plan.category)
        out = {}
        for e in plan.live:
            i = self.index[e]
            if (en[i, cols] > plan.energy_budget_j * (1 + 1e-9) + 1e-9).any():
                continue
            out[e] = float(plan.latency_budget_ms - lat[i, cols].max() - self.aggregation_ms)
        return out

    def _retry_after(self, plan: RoutePlan, gen: int | None) -> float | None:
        """Ms until the first expert that fits the budget alone would fit it at its queue."""
        waits = dict(zip(plan.live, plan.wait_ms, strict=True))
        need = [waits[e] - s for e, s in self._slack_ms(plan, gen).items()
                if s >= 0 and math.isfinite(waits[e])]
        if not need or min(need) <= 0:  # latency is not what binds (the energy slow-down is)
            return None
        return min(need)

    def _predicted(self, plan: RoutePlan, gen: int | None) -> dict[str, float]:
        lat, _ = self._costs(gen)
        cols = self._cols(plan.category)
        return {e: float(w + lat[self.index[e], cols].max())
                for e, w in zip(plan.live, plan.wait_ms, strict=True)}


def _empty(plan: RoutePlan) -> Selection:
    """An infeasible selection in the shape of ``plan``'s (no expert could be planned)."""
    sel = plan.selection
    return replace(sel, status=INFEASIBLE, experts=(), mask=np.zeros_like(sel.mask),
                   objective=math.nan, message="no responsive expert")


def _scales(live: tuple[str, ...], energy_scale: Mapping[str, float] | None) -> tuple[float, ...]:
    """Per live expert, its energy factor rounded *up* to :data:`ENERGY_SCALE_STEP` (at least
    1; a non-finite factor counts as 1); () when every factor is 1."""
    if not energy_scale:
        return ()
    out = []
    for e in live:
        f = float(energy_scale.get(e, 1.0))
        f = f if math.isfinite(f) and f > 1.0 else 1.0
        out.append(round(math.ceil(f / ENERGY_SCALE_STEP - 1e-9) * ENERGY_SCALE_STEP, 6))
    return tuple(out) if any(f > 1.0 for f in out) else ()


def _quantise(live: tuple[str, ...], wait_ms: Mapping[str, float] | None) -> tuple[float, ...]:
    """Per live expert, its wait rounded to the nearest point of the :data:`LOAD_STEP_MS`
    grid (inf stays; an error under half a step, inside the deadline's margin); () when
    there is no load to plan with."""
    if not wait_ms:
        return ()
    out = []
    for e in live:
        w = float(wait_ms.get(e, 0.0))
        out.append(w if not math.isfinite(w) else round(max(0.0, w) / LOAD_STEP_MS) * LOAD_STEP_MS)
    return tuple(out) if any(out) else ()


def _spread(problem: SelectionProblem, budget: Budget, sel: Selection,
            wait: tuple[float, ...]) -> Selection:
    """Among plans of the selector's objective, prefer less loaded experts: swap a member for
    a non-member with a smaller wait while the set stays feasible and F does not fall
    (equivalent experts, e.g. one model on two nodes, then share the load)."""
    inst = validate(problem, budget)
    names = list(problem.experts)
    pos = {e: i for i, e in enumerate(names)}
    members = set(sel.experts)
    best = sel.objective
    improved = True
    while improved:
        improved = False
        for m in sorted(members, key=lambda e: -wait[pos[e]]):
            for o in sorted(set(names) - members, key=lambda e: wait[pos[e]]):
                if wait[pos[o]] >= wait[pos[m]]:
                    break
                cand = (members - {m}) | {o}
                mask = np.array([e in cand for e in names])
                if not inst.feasible(mask):
                    continue
                f = problem.objective(mask)
                if f >= best - 1e-12:
                    members, best, improved = cand, f, True
                    break
            if improved:
                break
    if members == set(sel.experts):
        return sel
    mask = np.array([e in members for e in names])
    return inst.selection(sel.status, mask, best, sel.evaluations, sel.message)


def _stages(t0: float, t1: float, t2: float, t3: float) -> dict[str, float]:
    return {"embed": (t1 - t0) * 1e3, "gate": (t2 - t1) * 1e3, "select": (t3 - t2) * 1e3}


def load_router(gate_path: str | os.PathLike[str], calibration: str | os.PathLike[str],
                profiles: str | os.PathLike[str], default_budget: BudgetConfig | None = None,
                top_k: int | None = 2, tau: float | None = None,
                embedder: Embedder | None = None, objective: str = DEFAULT_OBJECTIVE) -> Router:
    """A Router from the planner's inputs: gate.onnx, calibration table, profiles.

    Uses :func:`gating.planning.inputs.load_inputs` with the given gate (no torch): the table is
    reordered to the gate's experts, calibrated (prior, then temperatures), and its validation
    split scores F(S), the named ``objective`` (``"loglik"`` or ``"accuracy"``).

    Raises:
        GateError / DataFormatError: a file is missing or the three disagree.
        ConfigError: top_k and tau both given.
    """
    if top_k is not None and tau is not None:  # before the files are read
        raise ConfigError(f"give top_k or tau, not both (got top_k={top_k}, tau={tau})")
    inputs = load_inputs(calibration, profiles, gate_path)

    def objective_for(k: int | None, t: float | None) -> MixtureObjective:
        return make_objective(inputs, k, t, objective=objective)

    note = ""
    if inputs.generation is None:
        note = ("the profiles have no generation model (" + inputs.generation_message
                + "): planned with option-scoring costs")
    return Router(inputs.gate, inputs.categories, inputs.latency_ms, inputs.energy_j, objective_for,
                  inputs.profiles.aggregation_ms, default_budget, top_k, tau, embedder,
                  generation=inputs.generation, generation_note=note)
