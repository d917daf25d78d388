"""The planner's trade-off plot: test accuracy against energy and latency budgets.

Two panels from one sweep document (``gating.planning.planner.sweep``): accuracy vs energy
budget at the loosest latency budget, and accuracy vs latency budget at the loosest
energy budget. MoE² (fixed and adaptive k) is drawn against every baseline, the single
experts as points at their worst-case cost, and the MoE² Pareto front as a step line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_moe.atomic import atomic_path

METHOD_STYLE = {
    "moe2": {"color": "tab:red", "marker": "o", "lw": 2.5, "label": "MoE² (top-k)"},
    "moe2-adaptive": {"color": "tab:purple", "marker": "s", "lw": 2.0, "label": "MoE² (adaptive k)"},
    "uniform": {"color": "tab:olive", "marker": "v", "lw": 1.2, "label": "uniform weights over S"},
    "greedy-per-joule": {"color": "tab:blue", "marker": "^", "lw": 1.2, "label": "greedy acc/J"},
    "best-single": {"color": "tab:green", "marker": "D", "lw": 1.2, "label": "best single expert"},
    "random": {"color": "tab:gray", "marker": "x", "lw": 1.0, "label": "random feasible"},
    "topk-all": {"color": "black", "marker": "+", "lw": 1.0, "label": "top-k of all (ignores budget)"},
}


def _series(sweep: dict[str, Any], method: str, axis: str) -> tuple[list[float], list[float]]:
    """(budget, test accuracy) along one axis, with the other budget at its loosest."""
    plans = [p for p in sweep["plans"] if p["method"] == method]
    if axis == "energy":
        fixed = max(float(p["budget"]["latency_ms"][0]) for p in plans)
        pts = [(float(p["budget"]["energy_j"]), p) for p in plans
               if float(p["budget"]["latency_ms"][0]) == fixed]
    else:
        fixed = max(float(p["budget"]["energy_j"]) for p in plans)
        pts = [(float(p["budget"]["latency_ms"][0]), p) for p in plans
               if float(p["budget"]["energy_j"]) == fixed]
    pts.sort(key=lambda t: t[0])
    xs = [x for x, p in pts if p["test"]]
    ys = [float(p["test"]["accuracy"]) for _, p in pts if p["test"]]
    return xs, ys


def plot_sweep(sweep: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Write the two-panel PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, axis, xlabel in ((axes[0], "energy", "energy budget per request (J, worst case)"),
                             (axes[1], "latency", "latency budget (ms, p95 worst case)")):
        for method, style in METHOD_STYLE.items():
            xs, ys = _series(sweep, method, axis)
            if xs:
                ax.plot(xs, ys, marker=style["marker"], color=style["color"], lw=style["lw"],
                        label=style["label"], alpha=0.9)
        for s in sweep["single_experts"]:
            if s["test"]:
                x = s["energy_j"] if axis == "energy" else s["latency_ms"]
                ax.scatter([x], [s["test"]["accuracy"]], color="tab:orange", marker="*", s=90, zorder=5)
                ax.annotate(s["expert"], (x, s["test"]["accuracy"]), fontsize=7,
                            xytext=(3, -9), textcoords="offset points")
        if axis == "energy" and sweep["pareto_front"]:
            front = sweep["pareto_front"]
            ax.step([p["worst_energy_j"] for p in front], [p["test_accuracy"] for p in front],
                    where="post", color="tab:red", ls=":", lw=1, label="MoE² Pareto front (plans)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
    axes[0].scatter([], [], color="tab:orange", marker="*", s=90, label="single experts")
    axes[0].legend(fontsize=8, loc="lower right")
    src = sweep.get("profiles_sources", {})
    fig.suptitle((title + "\n" if title else "")
                 + f"top_k={sweep['top_k']}, tau={sweep['tau']}; energy source: "
                 + ", ".join(src.get("energy_j", [])) + "; latency source: "
                 + ", ".join(src.get("latency_ms", [])), fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
