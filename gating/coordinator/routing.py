"""Per-query routing: one pure call from a query and the live experts to a :class:`Decision`.

One module because the :class:`Router`'s plan cache, cost tables and default budget are one
state that its checks, scoring and decisions share; the pure parts (the plan, solving it,
the load grids, the fine level) are :mod:`gating.coordinator.plans`.

:meth:`Router.route` is the decision half of the coordinator, with no sockets and no
bookkeeping, so it can be tested and benchmarked alone (``benchmarks/coordinator_bench.py``
counts decisions/s). It reads a clock only to report its stage ms. In order:

1. **Checks.** The protocol's value limits (:func:`edge_moe.wire.check_query`), then the
   category against the calibration table's. A bad request raises ``SelectionError``;
   each check runs once per query, here.
2. **Embed** the prompt (the router's embedder: MiniLM ONNX, or anything with
   ``embed(list[str]) -> (M, D)``) and compute the **gate** logits (``gate.onnx``).
3. **Fine level.** The query's ``top_k`` or ``tau``; neither given: the router's default.
   Two queries are answered by one expert, whatever they ask: a pinned query (``expert``)
   and a *sampled generation* (no options, ``sampling.temperature > 0``), which is decided
   with ``top_k=1, tau=None``: the gate's top expert of the plan answers alone. A vote needs
   comparable answers, and sampled texts of different experts (or of one expert twice) are
   draws, not estimates of one answer: voting over them picks an arbitrary one at k times
   the cost, and the token log-probs and finish reason would belong to no single text. So
   the plan's energy and latency are modelled for one expert (the selector's worst case over
   the k largest is over k=1), and the plan cache is keyed by that fine level. Greedy
   generation (temperature 0, or no ``sampling``) keeps the query's k and the vote.
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
from edge_moe.wire import Query, check_query, k_or_tau_problem
from gating.coordinator.plans import (
    ENERGY_SCALE_STEP,
    LOAD_STEP_MS,
    PlanCosts,
    RoutePlan,
    empty_selection,
    fine_weights,
    predicted_ms,
    quantise_waits,
    retry_after_ms,
    round_scales,
    solve,
)
from gating.planning.inputs import DEFAULT_OBJECTIVE, load_inputs, make_objective
from gating.planning.mixture import MixtureObjective

logger = logging.getLogger(__name__)

MAX_CACHED_PLANS = 4096  # a stream of distinct budgets must not grow the cache without bound
__all__ = ["ENERGY_SCALE_STEP", "LOAD_STEP_MS", "Decision", "Embedder", "RoutePlan", "Router",
           "Status", "load_router", "sampled_generation"]


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
        if (problem := k_or_tau_problem(top_k, tau)) is not None:
            raise ConfigError(problem)
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
        elif sampled_generation(query):  # the top expert alone (module docstring, step 3)
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
        wait = quantise_waits(responsive, wait_ms)
        scale = round_scales(responsive, energy_scale)
        plan = (self._plan(responsive, query.category, energy_b, latency_b, top_k, tau, gen, wait, scale)
                if responsive else None)
        retry = None
        if plan is None or (not plan.feasible and (any(wait) or responsive != live_t)):
            # idle nodes at the costs measured lately (the energy factors kept): does load bind?
            idle = self._plan(live_t, query.category, energy_b, latency_b, top_k, tau, gen, (),
                              round_scales(live_t, energy_scale))
            if idle.feasible:
                plan = plan or replace(idle, selection=empty_selection(idle), mask=np.zeros_like(idle.mask))
                lat, en = self._costs(gen)
                retry = (retry_after_ms(plan, lat, en, self._cols(plan.category), self.aggregation_ms,
                                        self.experts)
                         if responsive else None)
                predicted = predicted_ms(plan, self._costs(gen)[0], self._cols(plan.category), self.experts)
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
        predicted = predicted_ms(plan, self._costs(gen)[0], self._cols(plan.category), self.experts)
        if not plan.feasible:
            return Decision(Status.INFEASIBLE, plan.selection.message, plan, {}, top_k, tau, logits,
                            stages(), None, predicted)
        if logits is None:  # admission only: the plan, no weights yet
            return Decision(Status.OK, "", plan, {}, top_k, tau, logits, stages(), None, predicted)
        w = fine_weights(logits, plan).tolist()  # (N,) zeros outside the experts that answer
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
        e_budget = self.default_energy_j if energy_j is None else float(energy_j)
        l_budget = (self.default_latency_ms[cols] if latency_ms is None
                    else np.full(len(cols), float(latency_ms)))
        base_lat, base_en = self._costs(gen)
        note = self.generation_note if gen is not None and self.generation is None else ""
        return solve(PlanCosts(self.experts, self.categories, base_lat, base_en, self.aggregation_ms),
                     self.objective(top_k, tau), live, category, cols, e_budget, l_budget, top_k,
                     tau, wait, scale, note)

    def _cols(self, category: str | None) -> np.ndarray:
        """The category columns a plan is made over: the category's, or every one."""
        if category is not None:
            return np.array([self.categories.index(category)], dtype=np.intp)
        return np.arange(len(self.categories), dtype=np.intp)


def sampled_generation(query: Query) -> bool:
    """True for a generation whose tokens are drawn (``sampling.temperature > 0``): the gate's
    top expert answers it alone (see the module docstring, step 3)."""
    return query.options is None and query.sampling is not None and query.sampling.sampled


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
    if (problem := k_or_tau_problem(top_k, tau)) is not None:  # before the files are read
        raise ConfigError(problem)
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
