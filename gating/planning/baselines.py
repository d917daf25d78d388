"""Baseline expert selections that MoE² is compared against (docs/design.md §2.6).

Each baseline takes the selector's :class:`~gating.planning.selector.SelectionProblem` and
:class:`~gating.planning.selector.Budget` and returns a :class:`~gating.planning.selector.Selection`, with the
same validation, feasibility arithmetic and worst-case costs as the selector:

- :func:`best_single`: the best feasible single expert;
- :func:`random_feasible`: a seeded random *maximal* feasible subset;
- :func:`greedy_per_joule`: add the expert with the best F gain per joule while it helps;
- :func:`topk_all`: every expert, ignoring the budget, with its violations reported.

("Uniform weights over S" is a different *objective*, not a different subset: the planner
builds it with zero gate logits and runs the selector on it.)

Status values (the selector's meanings are unchanged):

- ``"feasible"``: the set meets the budget; no optimality claim is made;
- ``"infeasible"``: no single expert meets the budget; the empty set, objective nan;
- ``"violates"``: only :func:`topk_all`; the set breaks the budget, and ``message`` says
  which budget, in which category, and by how much.
"""

from __future__ import annotations

import logging

import numpy as np

from gating.planning.selector import (
    FEASIBLE,
    VIOLATES,
    Budget,
    Evaluator,
    Selection,
    SelectionProblem,
    greedy,
    validate,
)

logger = logging.getLogger(__name__)


def best_single(problem: SelectionProblem, budget: Budget) -> Selection:
    """The feasible single expert with the highest F (ties: the lower index).

    Returns:
        status "feasible", or "infeasible" when no expert fits alone.

    Raises:
        SelectionError: the problem or budget is ill-posed.
    """
    inst = validate(problem, budget)
    candidates = np.flatnonzero(inst.alone_feasible())
    if candidates.size == 0:
        return inst.infeasible_selection()
    evaluate = Evaluator(inst)
    values = [evaluate(inst.mask_of([int(u)])) for u in candidates]
    best = int(candidates[int(np.argmax(values))])
    value = max(values)
    message = f"{FEASIBLE}: best single expert {inst.names[best]} (F={value:.6g}) of {candidates.size} that fit"
    return inst.selection(FEASIBLE, inst.mask_of([best]), value, evaluate.evaluations, message)


def random_feasible(problem: SelectionProblem, budget: Budget, seed: int) -> Selection:
    """A seeded random maximal feasible subset.

    The experts that fit alone are visited in a random order (``np.random.default_rng(seed)``)
    and each is added when the set stays feasible. One pass gives a *maximal* set: an
    expert that did not fit then cannot fit a later superset (the budget is monotone).

    Returns:
        status "feasible" (F evaluated once), or "infeasible" when no expert fits alone.

    Raises:
        SelectionError: the problem or budget is ill-posed.
    """
    inst = validate(problem, budget)
    candidates = np.flatnonzero(inst.alone_feasible())
    if candidates.size == 0:
        return inst.infeasible_selection()
    mask = np.zeros(inst.n, dtype=bool)
    for u in np.random.default_rng(seed).permutation(candidates):
        mask[u] = True
        if not inst.feasible(mask):
            mask[u] = False
    evaluate = Evaluator(inst)
    value = evaluate(mask)
    message = f"{FEASIBLE}: random maximal feasible subset (seed {seed}) of {int(mask.sum())} experts"
    return inst.selection(FEASIBLE, mask, value, evaluate.evaluations, message)


def greedy_per_joule(problem: SelectionProblem, budget: Budget) -> Selection:
    """Greedy by F gain per joule of worst-case energy, while the gain is positive.

    From the empty set (``F(∅)`` taken as 0, so it suits objectives ≥ 0 such as accuracy),
    repeatedly add the fitting expert with the best ``(F(S+u) − F(S)) / ΔJ``, where ΔJ is
    the increase of ``worst_energy_j``; an expert that adds no joules and some gain ranks
    first. Stop when the best gain is ≤ 0 or nothing fits. The best prefix is returned.

    Returns:
        status "feasible", or "infeasible" when no expert fits alone.

    Raises:
        SelectionError: the problem or budget is ill-posed.
    """
    inst = validate(problem, budget)
    candidates = np.flatnonzero(inst.alone_feasible())
    if candidates.size == 0:
        return inst.infeasible_selection()
    evaluate = Evaluator(inst)
    mask, value = greedy(inst, evaluate, candidates, per_joule=True, stop_at_no_gain=True)
    message = f"{FEASIBLE}: greedy by gain per joule, {int(mask.sum())} experts"
    return inst.selection(FEASIBLE, mask, value, evaluate.evaluations, message)


def topk_all(problem: SelectionProblem, budget: Budget) -> Selection:
    """Every expert, ignoring the budget (the fine level's top-k then runs over all of them).

    Returns:
        status "violates" with each broken budget and its excess in ``message``, or
        "feasible" when all experts happen to fit; "infeasible" only when there are no experts.

    Raises:
        SelectionError: the problem or budget is ill-posed.
    """
    inst = validate(problem, budget)
    if inst.n == 0:
        return inst.infeasible_selection()
    mask = np.ones(inst.n, dtype=bool)
    evaluate = Evaluator(inst)
    value = evaluate(mask)
    broken = inst.violations(mask)
    if not broken:
        message = f"{FEASIBLE}: all {inst.n} experts fit the budget"
        return inst.selection(FEASIBLE, mask, value, evaluate.evaluations, message)
    message = f"{VIOLATES}: all {inst.n} experts break the budget: " + "; ".join(broken)
    logger.debug("topk_all: %s", message)
    return inst.selection(VIOLATES, mask, value, evaluate.evaluations, message)
