"""Every subset at once: F on all 2^N masks, and per budget the feasible and maximal sets.

The selector's exactness is checked against brute force (``gating.planning.selector.brute_force``),
which trusts nothing; this module answers the question brute force cannot: *did a
non-monotone F change the plan?* A set is *maximal* feasible when no further expert can join
it without breaking the budget. A search that trusts monotonicity looks only at maximal
sets, so where the best feasible set scores strictly more than the best maximal one (by
more than :data:`TIE`), non-monotone F changed the plan.

The feasibility arithmetic is the selector's (``gating.planning.problem.Instance``: the top-k energy
sum per category, latency separable), vectorised over all masks. Mask ``i`` has expert j
when bit j of i is set. Memory and time are O(2^N · N): only for N up to
``gating.planning.planner.CROSSCHECK_MAX_N``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gating.planning.selector import Budget, SelectionProblem, validate, within

logger = logging.getLogger(__name__)

TIE = 1e-12  # objective differences at or below this are ties


class Enumeration:
    """F on every non-empty subset, computed once.

    Args:
        objective: ``F(mask) -> float`` over (n,) bool masks.
        n: the number of experts.
    """

    def __init__(self, objective: Callable[[np.ndarray], float], n: int) -> None:
        self.n = n
        self.ids = np.arange(1 << n, dtype=np.int64)  # (2^N,) bit j = expert j
        self.masks = ((self.ids[:, None] >> np.arange(n)) & 1).astype(bool)  # (2^N, N)
        self.values = np.full(1 << n, -math.inf)  # (2^N,) F; -inf for the empty set
        for i in range(1, 1 << n):
            self.values[i] = objective(self.masks[i])

    def feasible(self, problem: SelectionProblem, budget: Budget) -> np.ndarray:
        """(2^N,) bool: which masks keep the budget (the empty one does: all its costs are 0).

        Raises:
            SelectionError: the problem or budget is invalid (``gating.planning.selector.validate``).
        """
        inst = validate(problem, budget)
        alone = inst.alone_feasible()  # (N,)
        ok = ~(self.masks & ~alone).any(axis=1)  # latency (and energy) of each member alone
        for c in range(inst.energy_j.shape[1]):
            order = np.argsort(-inst.energy_j[:, c], kind="stable")  # costliest first
            members = self.masks[:, order]  # (2^N, N)
            if inst.top_k is not None:
                members = members & (np.cumsum(members, axis=1) <= inst.top_k)  # the k costliest
            ok &= within(members @ inst.energy_j[order, c], inst.energy_budget_j)
        return ok

    def analyse(self, problem: SelectionProblem, budget: Budget) -> dict[str, Any]:
        """The feasible and maximal feasible families at one budget.

        Returns:
            ``feasible_sets`` and ``maximal_sets`` (counts of non-empty sets),
            ``best_feasible`` and ``best_maximal`` (best F over each family, -inf when it is
            empty), ``changed_plan`` (``best_feasible > best_maximal + TIE``) and ``maximal``
            ((2^N,) bool over the masks).
        """
        feasible = self.feasible(problem, budget)
        feasible[0] = True  # the empty set always fits; it makes singletons extensions of it
        maximal = feasible.copy()
        for u in range(self.n):
            bit = 1 << u
            maximal &= ((self.ids & bit) != 0) | ~feasible[self.ids | bit]
        feasible[0] = maximal[0] = False  # no plan is the empty set
        best = float(self.values[feasible].max()) if feasible.any() else -math.inf
        best_max = float(self.values[maximal].max()) if maximal.any() else -math.inf
        return {"feasible_sets": int(feasible.sum()), "maximal_sets": int(maximal.sum()),
                "best_feasible": best, "best_maximal": best_max,
                "changed_plan": bool(best > best_max + TIE), "maximal": maximal}

    def index(self, mask: np.ndarray) -> int:
        """The id of an (n,) bool mask: bit j set when expert j is in it."""
        return int((np.asarray(mask, dtype=np.int64) << np.arange(self.n)).sum())
