"""The MoE² reproduction's three figures, drawn from its results document.

- ``accuracy_vs_energy.png``: test accuracy against the energy budget along the energy slice
  (the largest latency scale), every method but the single-expert baselines, and each single
  expert as a line from the budget where it starts to fit;
- ``accuracy_vs_latency.png``: one panel per category, accuracy in that category against its
  latency budget ``T_c(s)`` along the latency slice (the largest energy budget);
- ``pareto.png``: every distinct plan in (expected J on test, test accuracy), MoE²'s front
  as a step line and the front of all plans circled.

Files are written atomically (``edge_moe.atomic``) at 110 dpi; matplotlib is imported, with
the Agg backend, only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.moe2_report import LABELS
from gating.offline.budget_grid import BudgetGrid
from gating.offline.budget_sweep import METHODS
from gating.offline.margins import accuracy

PNGS = ("accuracy_vs_energy.png", "accuracy_vs_latency.png", "pareto.png")
STYLE: dict[str, tuple[str, str, float]] = {  # method -> (colour, marker, line width)
    "moe2": ("tab:red", "o", 2.6),
    "moe2-adaptive": ("tab:purple", "s", 2.0),
    "uniform-S": ("tab:olive", "v", 1.3),
    "uniform-S-adaptive": ("goldenrod", "<", 1.1),
    "greedy-per-joule": ("tab:blue", "^", 1.3),
    "random": ("tab:gray", "x", 1.1),
    "best-single-val": ("tab:green", "D", 1.1),
    "best-single-test": ("darkgreen", "d", 1.1),
    "topk-all": ("black", "+", 1.0),
}
assert tuple(STYLE) == METHODS, "one style per sweep method, in the sweep's order"
CURVES = tuple(m for m in METHODS if m not in ("best-single-val", "best-single-test"))  # drawn as lines
SINGLE = "tab:orange"  # the single experts' colour


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.ticker import NullFormatter

    from edge_moe.atomic import atomic_path

    for ax in fig.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short log axes
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)
    return path


def _nan(ys: list[float | None]) -> list[float]:
    return [math.nan if y is None else y for y in ys]


def plot_energy(results: dict[str, Any], points: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against the energy budget at the largest latency scale."""
    plt = _plt()
    top = max(p["latency_scale"] for p in points)
    row = sorted((p for p in points if p["latency_scale"] == top), key=lambda p: p["energy_j"])
    xs = [p["energy_j"] for p in row]
    fig, ax = plt.subplots(figsize=(9.5, 5.8))
    for method in CURVES:
        colour, marker, lw = STYLE[method]
        ys = _nan([accuracy(p, method) for p in row])
        style = "--" if method == "topk-all" else "-"
        ax.plot(xs, ys, style, marker=marker, color=colour, lw=lw, label=LABELS[method], alpha=0.9)
        if method == "topk-all":
            bad = [(x, y) for x, y, p in zip(xs, ys, row, strict=True) if not p["methods"][method]["within_budget"]]
            if bad:
                ax.scatter(*zip(*bad, strict=True), facecolors="none", edgecolors="black", s=70,
                           label="top-k of all breaks the budget")
    for name, s in results["single_experts"].items():
        ax.hlines(s["corrected"]["accuracy"], s["worst_energy_j"], xs[-1], colors=SINGLE, lw=1, alpha=0.8)
        ax.annotate(name, (s["worst_energy_j"], s["corrected"]["accuracy"]), fontsize=7,
                    xytext=(2, 3), textcoords="offset points", color=SINGLE)
    ax.plot([], [], color=SINGLE, lw=1, label="single expert (from where it fits)")
    ax.set_xscale("log")
    ax.set_xlabel("energy budget per request (J, worst case over what may answer)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{results['header']['table']['path']}: accuracy vs energy budget (latency scale s={top:g}: "
                 f"every expert fits)\nenergy source: {', '.join(results['header']['profiles']['sources']['energy_j'])}",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _latency_panel(ax: Any, results: dict[str, Any], row: list[dict[str, Any]], grid: BudgetGrid,
                   categories: tuple[str, ...], ci: int) -> None:
    """One category's panel: every curve, then each single expert from the budget where it fits."""
    c = categories[ci]
    xs = [p["latency_ms"][ci] for p in row]
    for method in CURVES:
        colour, marker, lw = STYLE[method]
        ys = [accuracy(p, method, c) for p in row]
        ax.plot(xs, _nan(ys), "--" if method == "topk-all" else "-",
                marker=marker, color=colour, lw=lw, label=LABELS[method], alpha=0.9, ms=4)
    for name, s in results["single_experts"].items():
        lat = np.array([s["latency_ms"][cc]["value"] for cc in categories]) + results["header"]["aggregation_ms"]
        start = float(grid.latency_at(grid.scale_needed(lat))[ci])
        acc = s["corrected"]["per_category"].get(c)
        if acc is not None and start <= xs[-1] * (1 + 1e-9):
            ax.hlines(acc, start, xs[-1], colors=SINGLE, lw=1, alpha=0.8)
            ax.annotate(name, (start, acc), fontsize=6, xytext=(2, 3), textcoords="offset points", color=SINGLE)
    if grid.geometric:
        ax.set_xscale("log")
    ax.set_title(c, fontsize=9)
    ax.set_xlabel(f"latency budget in {c} (ms, p95 + aggregation)", fontsize=8)
    ax.set_ylabel("test accuracy in category", fontsize=8)
    ax.grid(True, alpha=0.3)


def plot_latency(results: dict[str, Any], points: list[dict[str, Any]], grid: BudgetGrid,
                 categories: tuple[str, ...], path: Path) -> Path:
    """Per category, accuracy in it against its latency budget at the largest energy budget."""
    plt = _plt()
    top = max(p["energy_j"] for p in points)
    row = sorted((p for p in points if p["energy_j"] == top), key=lambda p: p["latency_scale"])
    cols = min(len(categories), 3)
    nrows = math.ceil(len(categories) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.0 * nrows), squeeze=False)
    for ci in range(len(categories)):
        _latency_panel(axes[ci // cols][ci % cols], results, row, grid, categories, ci)
    for ci in range(len(categories), nrows * cols):
        axes[ci // cols][ci % cols].axis("off")
    axes[0][0].plot([], [], color=SINGLE, lw=1, label="single expert (from where it fits)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    src = results["header"]["profiles"]["sources"]["latency_ms"]
    fig.suptitle(f"accuracy vs per-category latency budget T_c(s) (energy budget {top:.3g} J: every expert fits); "
                 f"latency source: {', '.join(src)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return _save(fig, path)


def plot_pareto(front: dict[str, Any], path: Path) -> Path:
    """Every distinct plan, MoE²'s front as a step line, the front of all plans circled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 5.8))
    styles = {m: (LABELS[m], *STYLE[m][:2]) for m in METHODS} | {"single": ("single expert", SINGLE, "*")}
    for method, (label, colour, marker) in styles.items():
        rows = [r for r in front["plans"] if r["method"] == method]
        if rows:
            ax.scatter([r["expected_energy_j"] for r in rows], [r["accuracy"] for r in rows], color=colour,
                       marker=marker, s=60 if method == "single" else 30, alpha=0.75, label=label)
    f = front["moe2_front"]
    ax.step([r["expected_energy_j"] for r in f], [r["accuracy"] for r in f], where="post", color="tab:red",
            lw=2, label="MoE² Pareto front")
    g = front["global_front"]
    ax.scatter([r["expected_energy_j"] for r in g], [r["accuracy"] for r in g], facecolors="none",
               edgecolors="black", s=140, lw=1.2, label="front of all plans")
    ax.set_xscale("log")
    ax.set_xlabel("expected energy per request on the test split (J; experts that actually answer)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("chosen plans over the whole budget grid: accuracy vs expected energy", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_all(results: dict[str, Any], points: list[dict[str, Any]], grid: BudgetGrid,
             categories: tuple[str, ...], out: Path) -> list[Path]:
    """The three figures of :data:`PNGS` into folder ``out``."""
    return [plot_energy(results, points, out / PNGS[0]),
            plot_latency(results, points, grid, categories, out / PNGS[1]),
            plot_pareto(results["pareto"], out / PNGS[2])]
