"""The real demo's budget tiers: how they are planned, asked and reported.

:func:`plan_tiers` places three energy budgets between the experts' worst-case modelled J
and plans each with the offline planner (loglik objective, paired guard);
:func:`ask_tier` asks the held-out questions of :func:`edge_moe.jobs.demo_real.prepare` at a
tier's budget through the live fleet; :func:`print_tiers` prints the per-tier table (held-out
accuracy with its :func:`wilson` interval, ms, modelled J), the guard's and the fidelity's
lines, and returns the per-tier summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.jobs.demo_real import Sample
from edge_moe.progress import ProgressCallback, reporter


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Tier:
    """One budget tier and the plan the offline planner (loglik objective, paired guard) made."""

    name: str
    energy_j: float  # the per-request energy budget (inf: none)
    experts: tuple[str, ...]  # the guarded plan
    candidate: tuple[str, ...]  # the selector's S before the guard
    guard: str  # what the guard said
    table_accuracy: float | None  # the plan's accuracy on the committed table's test split


ROOM = 1.6  # a tier's budget over what its plan needs (plan_tiers)


def plan_tiers(cal: Path, prof: Path, gate: Path, top_k: int, seed: int,
               confidence: float = 0.95) -> list[Tier]:
    """Three energy tiers placed between the experts' worst-case modelled J, so that the
    plan changes: tight fits only the cheapest expert, medium the two cheapest (as a pair
    when k >= 2), loose everything. Each is planned by :func:`gating.planning.planner.plan_one`."""
    from gating.planning import planner

    inputs = planner.load_inputs(cal, prof, gate)
    worst = inputs.energy_j.max(axis=1)  # (N,) worst-case J over categories
    order = np.argsort(worst)
    j = worst[order]
    # Each budget sits midway between what its plan needs and what the next expert needs, and
    # at least ROOM x what its plan needs: the coordinator plans at the joules measured lately
    # (its energy factor), and on a quiet machine those ran 1.26x above a profile taken from 4
    # questions per category, which refused 11 of 40 tight-tier questions at a 1.25x margin
    # (and 26 of 40 at 1.09x, when the demo served Gemma through llama.cpp at 1.18x SmolLM2's
    # joules; and 11-26 of 40 at 1.4x on a slower afternoon: Gemma's live joules 1.42x its
    # profile's, at a budget 1.35x its own need: the room is now over the plan's need, too).
    # Where the next expert is that close, the tier's budget admits it and the planner picks
    # between them: the cheapest expert alone is then not a tier of its own. A tier's
    # single-expert plan is pinned (ask_tier), so the room above cannot let another in.
    tight = max((j[0] + j[1]) / 2, ROOM * j[0])
    pair = j[0] + j[1] if top_k >= 2 else j[1]
    medium = max((pair + j[2]) / 2, ROOM * pair) if len(j) > 2 else math.inf
    lat = planner.latency_budget(inputs, math.inf)
    tiers = []
    names = list(inputs.experts)
    for name, energy in (("tight", tight), ("medium", medium), ("loose", math.inf)):
        energy = round(float(energy), 3) if math.isfinite(energy) else math.inf
        p = planner.plan_one(inputs, energy, lat, top_k, objective="loglik", guard_confidence=confidence, seed=seed)
        need = sum(worst[names.index(e)] for e in p.selection.experts)
        if math.isfinite(energy) and ROOM * need > energy:  # ROOM over the plan it got, not the cheapest
            energy = round(float(ROOM * need), 3)
            p = planner.plan_one(inputs, energy, lat, top_k, objective="loglik", guard_confidence=confidence,
                                 seed=seed)
        g = p.extra.get("guard", {})
        acc = p.test.get("accuracy") if p.test else None
        tiers.append(Tier(name, energy, tuple(p.selection.experts), tuple(g.get("candidate") or p.selection.experts),
                          str(g.get("reason", "")), None if acc is None else float(acc)))
    return tiers


def ask_tier(endpoint: str, tier: Tier, held_out: list[Sample], top_k: int, in_flight: int = 1,
             progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Ask every held-out question at the tier's budget, ``in_flight`` at a time (one client
    each). The demo asks one at a time: with 4 in flight the node batches them, but on 2
    cores the tiers took as long (386 s either way) and each answer's ms and J then include
    the queue. A single-expert plan is pinned
    (``Query.expert``), so the live answer follows the guarded plan; a multi-expert plan
    goes to the coordinator's own selector (the same objective, table and gate).

    ``progress`` hears ``("[demo] ask <tier>", answered, len(held_out))``."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from edge_moe.client import EdgeMoEClient
    from edge_moe.wire import Error, Query, WireBudget

    pin = tier.experts[0] if len(tier.experts) == 1 else None
    budget = None if math.isinf(tier.energy_j) else WireBudget(tier.energy_j, None)
    local = threading.local()
    clients: list[Any] = []
    lock = threading.Lock()
    tell, answered = reporter(progress), [0]

    def one(s: Sample) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = EdgeMoEClient(endpoint, timeout_s=120, retries=0)
            with lock:
                clients.append(local.client)
        q = Query(id=uuid.uuid4().hex[:16], prompt=s.prompt, options=s.options, category=s.category,
                  budget=budget, top_k=top_k, deadline_ms=90_000, expert=pin)
        r = local.client.request(q)
        row: dict[str, Any] = {"tier": tier.name, "row": s.row, "category": s.category}
        if isinstance(r, Error):
            row.update(ok=None, error=f"{r.code}: {r.message}", ms=0.0, j=0.0, experts=())
        elif r.plan.status == "infeasible" or r.answer_index is None:
            row.update(ok=None, error=f"infeasible: {r.plan.message}", ms=r.total_ms, j=0.0, experts=())
        else:
            row.update(ok=r.answer_index == s.label, error="", ms=r.total_ms, j=r.energy_j,
                       source=r.energy_source, experts=tuple(u.name for u in r.experts if u.status == "ok"))
        with lock:
            answered[0] += 1
            tell(f"[demo] ask {tier.name:<6}", answered[0], len(held_out))
        return row

    try:
        with ThreadPoolExecutor(max_workers=max(1, in_flight)) as pool:
            return list(pool.map(one, held_out))
    finally:
        for c in clients:
            c.close()


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def print_tiers(tiers: list[Tier], rows: list[dict[str, Any]], fidelity: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-tier table and the guard's and fidelity's lines; returns the per-tier summary."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edge-moe demo (real experts): held-out MMLU questions per budget tier; ms measured end to end "
                    "on this machine, J MODELLED (device-class busy W x busy time)")
    for col in ("tier", "energy budget", "plan (guarded)", "held-out acc [95% CI]", "n", "mean ms", "p95 ms",
                "mean J (modelled)", "committed test acc (250 q)"):
        t.add_column(col, overflow="fold")
    summary = []
    for tier in tiers:
        mine = [r for r in rows if r["tier"] == tier.name]
        ok = [r for r in mine if r["ok"] is not None]
        k = sum(bool(r["ok"]) for r in ok)
        lo, hi = wilson(k, len(ok))
        acc = k / len(ok) if ok else math.nan
        ms = [r["ms"] for r in ok]
        js = [r["j"] for r in ok]
        s = {"tier": tier.name, "energy_j": tier.energy_j, "plan": list(tier.experts), "n": len(ok),
             "errors": len(mine) - len(ok), "accuracy": acc, "ci": (lo, hi),
             "mean_ms": float(np.mean(ms)) if ms else math.nan, "p95_ms": float(np.percentile(ms, 95)) if ms else math.nan,
             "mean_j": float(np.mean(js)) if js else math.nan, "table_accuracy": tier.table_accuracy}
        summary.append(s)
        t.add_row(tier.name, "inf" if math.isinf(tier.energy_j) else f"{tier.energy_j:.3g} J",
                  " + ".join(tier.experts), f"{acc:.2f} [{lo:.2f}, {hi:.2f}]",
                  f"{len(ok)}" + (f" ({s['errors']} refused)" if s["errors"] else ""),
                  f"{s['mean_ms']:.0f}", f"{s['p95_ms']:.0f}", f"{s['mean_j']:.3g}",
                  "-" if tier.table_accuracy is None else f"{tier.table_accuracy:.2f}")
    Console(soft_wrap=False, width=200).print(t)
    multi = [tr for tr in tiers if len(tr.experts) > 1]
    if multi:
        for tr in multi:
            _say(f"[demo] multi-expert plan at {tr.name}: {' + '.join(tr.experts)} ({tr.guard})")
    else:
        cands = [tr for tr in tiers if len(tr.candidate) > 1]
        if cands:
            for tr in cands:
                _say(f"[demo] no multi-expert plan at {tr.name}: {tr.guard}")
        else:
            _say("[demo] no multi-expert plan: the selector chose a single expert at every tier "
                 "(a mixture did not raise the validation log-likelihood)")
    for name, f in fidelity.items():
        served = f"the served {f['engine']}" if f.get("engine") else "the served artifact"
        _say(f"[demo] {name} planned with the {f['reference']} (fp32); {served} on {f['questions']} fixed "
             f"{f['split']} questions: accuracy {f['accuracy']:.2f} vs {f['reference_accuracy']:.2f}, "
             f"argmax agreement {f['argmax_agreement']:.2f} (measured once and cached; live ms are in the table)")
    errors = [r for r in rows if r["ok"] is None]
    if errors:
        _say(f"[demo] {len(errors)} questions got no answer, e.g. {errors[0]['error'][:160]}")
    return summary
