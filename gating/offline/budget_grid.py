"""The budget grid a benchmark sweeps: energy budgets × per-category latency budgets.

**Energy.** ``n_energy`` values, geometric (linear when the cheapest is 0 J) from the
cheapest expert alone, its worst category's J, to every expert at once, the sum of each
expert's worst category: at that budget every subset fits, even with all of S active.

**Latency.** One scale s in [0, 1] per ``n_latency`` value and, per category c,
``T_c(s) = lo_c · (hi_c / lo_c)^s`` with ``lo_c`` / ``hi_c`` the fastest / slowest expert's ms
in c plus the aggregation cost (linear in s when some ``lo_c`` is 0). At s = 1 every expert
fits; at s = 0 only the fastest of each category does (and no plan exists when no single
expert is fastest everywhere).

**Expert budgets.** Optionally each expert's own worst-case J and the scale s at which it
starts to fit are added, so every single-expert regime is on the grid. Latency is
separable (a set fits iff each member fits alone), so between those scales the feasible
family does not change.

The grid is the product, energy-major and latency-minor (:meth:`BudgetGrid.points`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class GridPoint:
    """One budget of the grid, in grid order."""

    index: int
    energy_j: float  # worst-case J per request
    scale: float  # the latency scale s in [0, 1]
    latency_ms: np.ndarray  # (C,) ms budget per category, T_c(s)


@dataclass(frozen=True)
class BudgetGrid:
    """Energy budgets (J) × latency scales s, with per-category latency budgets ``T_c(s)``."""

    energies: np.ndarray  # (E,) J, ascending
    scales: np.ndarray  # (L,) in [0, 1], ascending
    lat_lo: np.ndarray  # (C,) fastest expert's ms + aggregation, per category
    lat_hi: np.ndarray  # (C,) slowest expert's ms + aggregation, per category

    @classmethod
    def make(cls, energy_j: np.ndarray, latency_ms: np.ndarray, aggregation_ms: float,
             n_energy: int, n_latency: int, expert_budgets: bool = True) -> BudgetGrid:
        """The grid of the module docstring.

        Args:
            energy_j: (N, C) J per request of expert n on category c.
            latency_ms: (N, C) p95 ms per request of expert n on category c.
            aggregation_ms: the coordinator's cost, added to every latency.
            n_energy: regular energy budgets (>= 1; 1 gives only the loosest).
            n_latency: regular latency scales (>= 1; 1 gives only s = 1).
            expert_budgets: also each expert's own worst-case J and the scale where it fits.

        Returns:
            The grid, its energies and scales sorted and without repeats when
            ``expert_budgets`` (the regular grid as it is otherwise).
        """
        alone = energy_j.max(axis=1)  # (N,) J of each expert alone, worst category
        lo, hi = float(alone.min()), float(alone.sum())
        energies = np.geomspace(lo, hi, n_energy) if n_energy > 1 and lo > 0 else np.linspace(lo, hi, n_energy)
        if n_energy == 1:
            energies = np.array([hi])
        energies[-1] = hi  # exact ends: no rounding at the edges
        if n_energy > 1:
            energies[0] = lo
        lat = latency_ms + aggregation_ms  # (N, C)
        scales = np.linspace(0.0, 1.0, n_latency) if n_latency > 1 else np.array([1.0])
        grid = cls(energies, scales, lat.min(axis=0), lat.max(axis=0))
        if not expert_budgets:
            return grid
        unlock = [grid.scale_needed(row) for row in lat]  # (N,) the s at which expert n fits
        return cls(np.unique(np.concatenate([energies, alone])), np.unique(np.concatenate([scales, unlock])),
                   grid.lat_lo, grid.lat_hi)

    @property
    def geometric(self) -> bool:
        """True when ``T_c(s)`` is geometric in s (every ``lo_c`` > 0), else linear."""
        return bool((self.lat_lo > 0).all())

    def latency_at(self, s: float) -> np.ndarray:
        """(C,) ms budget per category at scale s; exact ends at s = 0 and s = 1."""
        if s >= 1.0:
            return self.lat_hi.copy()
        if s <= 0.0:
            return self.lat_lo.copy()
        if self.geometric:
            return self.lat_lo * (self.lat_hi / self.lat_lo) ** s
        return self.lat_lo + s * (self.lat_hi - self.lat_lo)

    def scale_needed(self, latency: np.ndarray) -> float:
        """The smallest s at which a (C,) ms vector (aggregation included) fits every category.

        Categories where every expert is equally fast impose nothing; the answer is clipped
        to [0, 1] (1 for a vector slower than the slowest expert somewhere).
        """
        span = self.lat_hi > self.lat_lo
        if not span.any():
            return 0.0
        if self.geometric:
            need = np.log(latency[span] / self.lat_lo[span]) / np.log(self.lat_hi[span] / self.lat_lo[span])
        else:
            need = (latency[span] - self.lat_lo[span]) / (self.lat_hi[span] - self.lat_lo[span])
        return float(np.clip(need.max(), 0.0, 1.0))

    def points(self) -> list[GridPoint]:
        """Every budget in grid order: energy-major, latency-minor, indexed from 0."""
        out: list[GridPoint] = []
        for e in self.energies:
            for s in self.scales:
                out.append(GridPoint(len(out), float(e), float(s), self.latency_at(float(s))))
        return out

    def to_json(self, expert_budgets: bool) -> dict[str, object]:
        """The grid as results.json records it (``points`` is the number of budgets)."""
        return {"energies_j": self.energies.tolist(), "latency_scales": self.scales.tolist(),
                "latency_lo_ms": self.lat_lo.tolist(), "latency_hi_ms": self.lat_hi.tolist(),
                "geometric_latency": self.geometric, "points": len(self.energies) * len(self.scales),
                "expert_budgets": expert_budgets}
