"""A plan over the live experts (the coarse level of a decision) and how it is solved.

:class:`RoutePlan` is what :class:`gating.coordinator.routing.Router` caches per (live set,
category, budget, fine level, load grid); :func:`solve` makes one with the exact selector
(:func:`gating.planning.selector.select_experts`) over the profiles' costs plus the queue
waits and energy factors (rounded to grids by :func:`quantise_waits` / :func:`round_scales`
so plans cache), and :func:`spread` moves load onto equivalent, less loaded experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from edge_moe.runtime.gate import masked_gate_weights
from gating.planning.mixture import select_top_k
from gating.planning.problem import validate
from gating.planning.selector import INFEASIBLE, Budget, Selection, SelectionProblem, select_experts

LOAD_STEP_MS = 10.0  # queue waits are planned on this grid, so load-aware plans cache
ENERGY_SCALE_STEP = 0.05  # energy slow-down factors are planned rounded up to this grid


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
class PlanCosts:
    """What every plan of one router is made from: the gate's expert order, the categories,
    the (N, C) latency and energy costs of the query's kind, and the aggregation cost."""

    experts: tuple[str, ...]
    categories: tuple[str, ...]
    latency_ms: np.ndarray  # (N, C)
    energy_j: np.ndarray  # (N, C)
    aggregation_ms: float


def solve(costs: PlanCosts, full: Callable[[np.ndarray], float], live: tuple[str, ...],
          category: str | None, cols: np.ndarray, e_budget: float, l_budget: np.ndarray,
          top_k: int | None, tau: float | None, wait: tuple[float, ...] = (),
          scale: tuple[float, ...] = (), note: str = "") -> RoutePlan:
    """The selector's plan over ``live`` (sorted, known to the gate) for one category column
    set ``cols``, with ``wait`` (per live expert, quantised) added to the latency costs and
    ``scale`` (per live expert) on the energy costs.

    Args:
        full: F over (N,) gate-order masks (the router's objective for ``top_k`` / ``tau``).
        e_budget / l_budget: the energy budget (J) and the latency budget per column (ms).
        note: carried into the plan (e.g. planned without a generation model).
    """
    index = {e: i for i, e in enumerate(costs.experts)}
    idx = np.array([index[e] for e in live], dtype=np.intp)
    n = len(costs.experts)
    base_lat, base_en = costs.latency_ms, costs.energy_j

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
                               aggregation_ms=costs.aggregation_ms,
                               categories=[costs.categories[c] for c in cols], monotone=False)
    budget = Budget(energy_j=e_budget, latency_ms=l_budget)
    sel = select_experts(problem, budget)
    if wait and sel.status != INFEASIBLE:
        sel = spread(problem, budget, sel, wait)
    mask = np.zeros(n, dtype=bool)
    mask[[index[e] for e in sel.experts]] = True
    min_e = min_l = None
    if sel.status == INFEASIBLE and idx.size:
        need_e = en.max(axis=1)  # (L,) J each expert needs alone, worst category
        lat_ok = (lat + costs.aggregation_ms <= l_budget[None, :]).all(axis=1)
        en_ok = (en <= e_budget).all(axis=1)
        min_e = float(need_e[lat_ok].min()) if lat_ok.any() else None
        finite = en_ok & np.isfinite(lat).all(axis=1)
        min_l = float((lat + costs.aggregation_ms).max(axis=1)[finite].min()) if finite.any() else None
    if scale:
        lately = ", ".join(f"{e} x{f:.2f}" for e, f in zip(live, scale, strict=True) if f > 1.0)
        note = "; ".join(n for n in (note, f"energy at the joules measured lately ({lately})") if n)
    return RoutePlan(sel, mask, live, category, e_budget, float(l_budget.min()), top_k, tau,
                     min_e, min_l, wait_ms=tuple(wait) if wait else (0.0,) * len(live), note=note)


def empty_selection(plan: RoutePlan) -> Selection:
    """An infeasible selection in the shape of ``plan``'s (no expert could be planned)."""
    sel = plan.selection
    return replace(sel, status=INFEASIBLE, experts=(), mask=np.zeros_like(sel.mask),
                   objective=math.nan, message="no responsive expert")


def round_scales(live: tuple[str, ...], energy_scale: Mapping[str, float] | None) -> tuple[float, ...]:
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


def quantise_waits(live: tuple[str, ...], wait_ms: Mapping[str, float] | None) -> tuple[float, ...]:
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


def spread(problem: SelectionProblem, budget: Budget, sel: Selection,
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


def fine_weights(logits: np.ndarray, plan: RoutePlan) -> np.ndarray:
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


def _slack_ms(plan: RoutePlan, lat: np.ndarray, en: np.ndarray, cols: np.ndarray,
              aggregation_ms: float, index: Mapping[str, int]) -> dict[str, float]:
    """Per live expert that fits the energy budget alone: latency budget − (profile +
    aggregation), the most queue wait it can take (worst planned category)."""
    out = {}
    for e in plan.live:
        i = index[e]
        if (en[i, cols] > plan.energy_budget_j * (1 + 1e-9) + 1e-9).any():
            continue
        out[e] = float(plan.latency_budget_ms - lat[i, cols].max() - aggregation_ms)
    return out


def retry_after_ms(plan: RoutePlan, lat: np.ndarray, en: np.ndarray, cols: np.ndarray,
                   aggregation_ms: float, experts: tuple[str, ...]) -> float | None:
    """Ms until the first expert that fits the budget alone would fit it at its queue
    (``lat`` / ``en``: (N, C) costs in gate order ``experts``; ``cols``: the plan's columns)."""
    index = {e: i for i, e in enumerate(experts)}
    waits = dict(zip(plan.live, plan.wait_ms, strict=True))
    need = [waits[e] - s for e, s in _slack_ms(plan, lat, en, cols, aggregation_ms, index).items()
            if s >= 0 and math.isfinite(waits[e])]
    if not need or min(need) <= 0:  # latency is not what binds (the energy slow-down is)
        return None
    return min(need)


def predicted_ms(plan: RoutePlan, lat: np.ndarray, cols: np.ndarray,
                 experts: tuple[str, ...]) -> dict[str, float]:
    """Per live expert of the plan: its planned queue wait + its profile (worst column), ms."""
    index = {e: i for i, e in enumerate(experts)}
    return {e: float(w + lat[index[e], cols].max())
            for e, w in zip(plan.live, plan.wait_ms, strict=True)}
