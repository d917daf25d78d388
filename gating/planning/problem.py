"""The selection problem: its types, its validation and its cost arithmetic.

A :class:`SelectionProblem` names N experts, their per-request energy ``E[n, c]`` (J) and
p95 latency ``L[n, c]`` (ms) per category c, the objective F, ``top_k`` and the
aggregation cost; a :class:`Budget` bounds worst-case energy and per-category latency. For
a subset S (a (N,) bool mask)::

    E_c(S) = Σ_{k largest n ∈ S} E[n, c]   ≤ Ē      (all of S when top_k is None)
    D_c(S) = max_{n ∈ S} L[n, c] + A       ≤ T̄_c

:func:`validate` checks a problem and budget and returns an :class:`Instance`, which
answers feasibility, costs, violations and "why infeasible" for any mask. The search
itself lives in :mod:`gating.planning.selector`; :mod:`gating.planning.baselines` reuses this module.
A :class:`Selection` is the answer of both.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_moe.errors import SelectionError
from edge_moe.wire import finite_or_none

logger = logging.getLogger(__name__)
OPTIMAL = "optimal"
INFEASIBLE = "infeasible"
FEASIBLE = "feasible"
VIOLATES = "violates"
STATUSES: tuple[str, ...] = (OPTIMAL, INFEASIBLE, FEASIBLE, VIOLATES)

REL_TOL = 1e-9  # slack on every budget comparison: x <= b + REL_TOL * max(|b|, 1)
BRUTE_FORCE_MAX_N = 26  # 2^26 subsets is the most the oracle will enumerate
_MESSAGE_EXPERTS = 5  # an infeasibility message details at most this many experts

Objective = Callable[[np.ndarray], float]


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Budget:
    """Per-request budget: worst-case energy (J) and latency (ms, scalar or one per category).

    Validated by :func:`select_experts` against the problem it is used with.
    """

    energy_j: float = math.inf
    latency_ms: float | Sequence[float] | np.ndarray = math.inf


@dataclass(frozen=True)
class SelectionProblem:
    """A selection problem; see the module docstring for the maths.

    Args:
        experts: N distinct expert names.
        energy_j: (N, C) joules per request of expert n on category c.
        latency_ms: (N, C) p95 milliseconds per request of expert n on category c.
        objective: ``F(mask) -> float``, higher is better, mask a (N,) bool array.
        top_k: None when every member of S may answer a request; k when at most k do, so
            the energy constraint is the worst case over any k members.
        aggregation_ms: coordinator cost added to every non-empty plan's latency.
        categories: C category names for messages; default ``"0"``, ``"1"``, ...
        monotone: whether F is known to be monotone non-decreasing. False (the planner's
            gated-mixture objectives) makes the selector certify its answer by enumeration
            when few experts fit (``gating.planning.selector`` step 6).
    """

    experts: Sequence[str]
    energy_j: np.ndarray
    latency_ms: np.ndarray
    objective: Objective
    top_k: int | None = None
    aggregation_ms: float = 0.0
    categories: Sequence[str] | None = None
    monotone: bool = True


@dataclass(frozen=True)
class Selection:
    """The answer: a status, the chosen subset and what it costs in the worst case.

    Attributes:
        status: one of :data:`STATUSES` (the selector returns "optimal" or "infeasible").
        message: why, in words (the binding budget when infeasible).
        experts: the chosen names, in problem order.
        mask: (N,) bool, read-only.
        objective: F(mask); nan for the empty set, on which F is never called.
        worst_energy_j: max over categories of the top-k energy sum (J); 0 for the empty set.
        worst_latency_ms: (C,) ``max_{n∈S} L[n, c] + aggregation_ms``; zeros for the empty set.
        evaluations: calls of F that this search made (memoised repeats not counted).
    """

    status: str
    message: str
    experts: tuple[str, ...]
    mask: np.ndarray = field(compare=False)
    objective: float
    worst_energy_j: float
    worst_latency_ms: np.ndarray = field(compare=False)
    evaluations: int

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; a nan objective becomes None."""
        return {
            "status": self.status,
            "message": self.message,
            "experts": list(self.experts),
            "mask": [bool(b) for b in self.mask],
            "objective": finite_or_none(self.objective),
            "worst_energy_j": float(self.worst_energy_j),
            "worst_latency_ms": [float(v) for v in self.worst_latency_ms],
            "evaluations": int(self.evaluations),
        }


# --------------------------------------------------------------------------- validated instance


@dataclass(frozen=True)
class Instance:
    """A validated problem and budget with the feasibility arithmetic (shared with baselines).

    Built only by :func:`validate`. Arrays are float64 and read-only.
    """

    names: tuple[str, ...]
    categories: tuple[str, ...]
    energy_j: np.ndarray  # (N, C)
    latency_ms: np.ndarray  # (N, C)
    objective: Objective
    top_k: int | None
    aggregation_ms: float
    energy_budget_j: float
    latency_budget_ms: np.ndarray  # (C,)

    @property
    def n(self) -> int:
        return len(self.names)

    def energy_by_category(self, mask: np.ndarray) -> np.ndarray:
        """(C,) worst-case J of S per category: the sum of its k largest ``E[n, c]``."""
        chosen = self.energy_j[mask]  # (|S|, C)
        k = self.top_k
        if k is None or chosen.shape[0] <= k:
            return chosen.sum(axis=0)
        return np.partition(chosen, chosen.shape[0] - k, axis=0)[-k:].sum(axis=0)

    def latency_by_category(self, mask: np.ndarray) -> np.ndarray:
        """(C,) worst-case ms of S per category; zeros for the empty set."""
        if not mask.any():
            return np.zeros(self.latency_ms.shape[1])
        return self.latency_ms[mask].max(axis=0) + self.aggregation_ms

    def feasible(self, mask: np.ndarray) -> bool:
        """True when S meets the energy and every category's latency budget."""
        energy_ok = within(self.energy_by_category(mask), self.energy_budget_j).all()
        latency_ok = within(self.latency_by_category(mask), self.latency_budget_ms).all()
        return bool(energy_ok and latency_ok)

    def alone_feasible(self) -> np.ndarray:
        """(N,) bool: the experts that meet both budgets on their own."""
        energy_ok = within(self.energy_j, self.energy_budget_j).all(axis=1)
        latency_ok = within(self.latency_ms + self.aggregation_ms, self.latency_budget_ms).all(axis=1)
        return np.asarray(energy_ok & latency_ok)

    def violations(self, mask: np.ndarray) -> list[str]:
        """Each broken budget in words, with the amount it is exceeded by."""
        out = []
        energy = self.energy_by_category(mask)
        for c in np.flatnonzero(~within(energy, self.energy_budget_j)):
            out.append(
                f"energy {energy[c]:.4g} J > budget {self.energy_budget_j:.4g} J in category "
                f"'{self.categories[c]}' (over by {energy[c] - self.energy_budget_j:.4g} J)"
            )
        latency = self.latency_by_category(mask)
        for c in np.flatnonzero(~within(latency, self.latency_budget_ms)):
            out.append(
                f"latency {latency[c]:.4g} ms > budget {self.latency_budget_ms[c]:.4g} ms in "
                f"category '{self.categories[c]}' (over by {latency[c] - self.latency_budget_ms[c]:.4g} ms)"
            )
        return out

    def mask_of(self, members: Sequence[int] | np.ndarray) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        mask[np.asarray(members, dtype=np.intp)] = True
        return mask

    def selection(self, status: str, mask: np.ndarray, objective: float, evaluations: int,
                  message: str) -> Selection:
        """A Selection for ``mask``, its worst-case costs computed here."""
        mask = mask.copy()
        mask.setflags(write=False)
        latency = self.latency_by_category(mask)
        latency.setflags(write=False)
        energy = self.energy_by_category(mask)
        return Selection(
            status=status,
            message=message,
            experts=tuple(self.names[i] for i in np.flatnonzero(mask)),
            mask=mask,
            objective=float(objective),
            worst_energy_j=float(energy.max()) if mask.any() else 0.0,
            worst_latency_ms=latency,
            evaluations=int(evaluations),
        )

    def infeasible_selection(self, evaluations: int = 0) -> Selection:
        """The empty set, status "infeasible", with the binding budget in the message."""
        return self.selection(INFEASIBLE, np.zeros(self.n, dtype=bool), math.nan, evaluations,
                              f"{INFEASIBLE}: {self.why_infeasible()}")

    def why_infeasible(self) -> str:
        """Which budget binds when no single expert is feasible, and what it needs."""
        if self.n == 0:
            return "no experts to select from"
        # energy alone: the cheapest expert's worst category
        need_j = self.energy_j.max(axis=1)  # (N,) J needed by each expert alone
        cheapest = int(np.argmin(need_j))
        if not within(need_j[cheapest], self.energy_budget_j):
            c = int(np.argmax(self.energy_j[cheapest]))
            return (f"energy budget {self.energy_budget_j:.4g} J < {need_j[cheapest]:.4g} J needed "
                    f"by the cheapest expert ({self.names[cheapest]}) in category "
                    f"'{self.categories[c]}'")
        # latency alone: some category no expert can meet
        need_ms = self.latency_ms.min(axis=0) + self.aggregation_ms  # (C,)
        short = np.flatnonzero(~within(need_ms, self.latency_budget_ms))
        if short.size:
            c = int(short[0])
            fastest = int(np.argmin(self.latency_ms[:, c]))
            agg = f" (aggregation {self.aggregation_ms:.4g} ms included)" if self.aggregation_ms else ""
            return (f"latency budget {self.latency_budget_ms[c]:.4g} ms < {need_ms[c]:.4g} ms "
                    f"needed by the fastest expert ({self.names[fastest]}) in category "
                    f"'{self.categories[c]}'{agg}")
        # each budget alone is met by someone, but never both by the same expert
        shown = [f"{self.names[i]}: {', '.join(self.violations(self.mask_of([i])))}"
                 for i in range(min(self.n, _MESSAGE_EXPERTS))]
        more = f"; and {self.n - _MESSAGE_EXPERTS} more" if self.n > _MESSAGE_EXPERTS else ""
        return "no single expert meets both budgets: " + "; ".join(shown) + more


def within(value: np.ndarray | float, budget: np.ndarray | float) -> np.ndarray:
    """value ≤ budget up to :data:`REL_TOL` (elementwise); an infinite budget admits all."""
    return np.asarray(value <= budget + REL_TOL * np.maximum(np.abs(budget), 1.0))


# --------------------------------------------------------------------------- validation


def validate(problem: SelectionProblem, budget: Budget) -> Instance:
    """Check a problem and budget and return the validated :class:`Instance`.

    Raises:
        SelectionError: naming the field and the bad value: shapes disagree, a cost is NaN,
            infinite or negative, names repeat, ``top_k`` < 1, the objective is not
            callable, a budget is NaN or negative, or the latency budget has the wrong length.
    """
    names = _validate_names(problem.experts)
    n = len(names)
    energy = _validate_costs("energy_j", problem.energy_j, n)
    latency = _validate_costs("latency_ms", problem.latency_ms, n)
    if energy.shape != latency.shape:
        raise SelectionError(
            f"energy_j shape {energy.shape} and latency_ms shape {latency.shape} must be equal (N, C)"
        )
    n_cat = energy.shape[1]
    categories = _validate_categories(problem.categories, n_cat)
    if not callable(problem.objective):
        raise SelectionError(f"objective must be callable mask -> float, got {type(problem.objective).__name__}")
    top_k = problem.top_k
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise SelectionError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    agg = _validate_scalar("aggregation_ms", problem.aggregation_ms, allow_inf=False)
    energy_budget = _validate_scalar("budget.energy_j", budget.energy_j, allow_inf=True)
    latency_budget = _validate_latency_budget(budget.latency_ms, n_cat)
    return Instance(
        names=names,
        categories=categories,
        energy_j=energy,
        latency_ms=latency,
        objective=problem.objective,
        top_k=None if top_k is None else int(top_k),
        aggregation_ms=agg,
        energy_budget_j=energy_budget,
        latency_budget_ms=latency_budget,
    )


def _validate_names(experts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(experts, str) or not isinstance(experts, Sequence | np.ndarray):
        raise SelectionError(f"experts must be a sequence of names, got {type(experts).__name__}")
    names = tuple(experts)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise SelectionError(f"experts[{i}]={name!r} must be a str")
    dups = sorted(name for name, count in Counter(names).items() if count > 1)
    if dups:
        raise SelectionError(f"experts has duplicate names {dups}")
    return names


def _validate_costs(field_name: str, raw: Any, n: int) -> np.ndarray:
    try:
        arr = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SelectionError(f"{field_name} must be a numeric (N, C) array: {exc}") from exc
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise SelectionError(f"{field_name} must have shape (N={n}, C>=1), got {arr.shape}")
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i, c = np.argwhere(bad)[0]
        raise SelectionError(
            f"{field_name}[{i}, {c}]={float(arr[i, c])} must be finite and >= 0 (expert {i}, category {c})"
        )
    arr.setflags(write=False)
    return arr


def _validate_categories(categories: Sequence[str] | None, n_cat: int) -> tuple[str, ...]:
    if categories is None:
        return tuple(str(c) for c in range(n_cat))
    cats = tuple(categories)
    if len(cats) != n_cat or not all(isinstance(c, str) for c in cats):
        raise SelectionError(f"categories must be {n_cat} names (one per cost column), got {cats!r}")
    return cats


def _validate_scalar(field_name: str, value: Any, allow_inf: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SelectionError(f"{field_name}={value!r} must be a number")
    v = float(value)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        rule = ">= 0 (inf allowed)" if allow_inf else "finite and >= 0"
        raise SelectionError(f"{field_name}={value!r} must be {rule}")
    return v


def _validate_latency_budget(raw: Any, n_cat: int) -> np.ndarray:
    if isinstance(raw, numbers.Real) and not isinstance(raw, bool):
        value = _validate_scalar("budget.latency_ms", raw, allow_inf=True)
        arr = np.full(n_cat, value)
    else:
        try:
            arr = np.array(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SelectionError(f"budget.latency_ms={raw!r} must be a number or {n_cat} numbers") from exc
        if arr.shape != (n_cat,):
            raise SelectionError(
                f"budget.latency_ms has shape {arr.shape}; it must be a number or have one "
                f"value per category, shape ({n_cat},)"
            )
        bad = np.isnan(arr) | (arr < 0)
        if bad.any():
            c = int(np.flatnonzero(bad)[0])
            raise SelectionError(f"budget.latency_ms[{c}]={float(arr[c])} must be >= 0 (inf allowed)")
    arr.setflags(write=False)
    return arr
