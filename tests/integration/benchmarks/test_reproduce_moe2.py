"""benchmarks/reproduce_moe2.py on the committed SYNTHETIC example (``configs/example/``).

One quick run (small gate, 4 x 3 budget grid, 4 subsets) into a temp folder; every check
recomputes its expectation from the npz / profiles JSON with numpy, never from constants.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edge_moe.errors import DataFormatError

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "benchmarks" / "reproduce_moe2.py"
TABLE = REPO / "configs" / "example" / "calibration.synthetic.npz"
PROFILES = REPO / "configs" / "example" / "profiles.synthetic.json"
N_ENERGY, N_LATENCY, SUBSETS, TOP_K = 4, 3, 4, 2
TOL = 1e-9  # the selector's budget tolerance (relative above 1)


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reproduce_moe2", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_moe2"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


@pytest.fixture(scope="module")
def run(script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("moe2")
    opts = script.Options(table=TABLE, profiles=PROFILES, out=out, top_k=TOP_K, subsets=SUBSETS,
                          energy_points=N_ENERGY, latency_points=N_LATENCY, random_draws=2,
                          quick=True, progress=False)
    script.run_report(opts)
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def npz() -> dict[str, np.ndarray]:
    with np.load(TABLE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def costs() -> tuple[list[str], list[str], np.ndarray, np.ndarray, float]:
    """(experts, categories, latency (N, C) ms, energy (N, C) J, aggregation ms) from the JSON."""
    doc = json.loads(PROFILES.read_text())
    with np.load(TABLE) as z:
        experts, cats = [str(e) for e in z["experts"]], [str(c) for c in z["category_names"]]
    lat = np.array([[doc["experts"][e]["latency_ms"][c]["value"] for c in cats] for e in experts])
    en = np.array([[doc["experts"][e]["energy_j"][c]["value"] for c in cats] for e in experts])
    return experts, cats, lat, en, float(doc.get("aggregation_ms", 0.0))


def fits(value: np.ndarray | float, budget: np.ndarray | float) -> np.ndarray:
    return np.asarray(value <= budget + TOL * np.maximum(np.abs(budget), 1.0))


def feasible(mask: np.ndarray, energy: np.ndarray, latency: np.ndarray, agg: float, e_budget: float,
             l_budget: np.ndarray, top_k: int | None) -> bool:
    """The budget from its definition: the k costliest members' J per category, the slowest member's ms."""
    chosen = -np.sort(-energy[mask], axis=0)  # (|S|, C) costliest first
    if top_k is not None:
        chosen = chosen[:top_k]
    return bool(fits(chosen.sum(axis=0), e_budget).all() and fits(latency[mask].max(axis=0) + agg, l_budget).all())


def test_outputs_exist_and_name_their_inputs(run: tuple[Path, dict[str, Any]]) -> None:
    out, results = run
    report = (out / "REPORT.md").read_text()
    for section in ("## 1. Single experts", "## 2. Claim 1", "## 3. Claim 2", "## 4. Claim 3",
                    "MoE² (top-k) against every method", "Per category, MoE² (top-k)", "Energy slice",
                    "Latency slice", "**Pareto front**"):
        assert report.count(section) == 1, section
    assert report.index("## 4. Claim 3") < report.index("Energy slice") < report.index("**Pareto front**")
    sha = hashlib.sha256(TABLE.read_bytes()).hexdigest()
    assert sha in report and results["header"]["table"]["sha256"] == sha
    assert results["header"]["command"] in report and "--quick" in results["header"]["command"]
    for name in ("accuracy_vs_energy.png", "accuracy_vs_latency.png", "pareto.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert (out / "gate.onnx").stat().st_size > 0
    with np.load(TABLE) as z:
        split = z["split"]
        assert results["header"]["experts"] == [str(e) for e in z["experts"]]
    assert results["header"]["table"]["samples"] == {
        "train": int((split == 0).sum()), "validation": int((split == 1).sum()), "test": int((split == 2).sum())}
    assert results["header"]["profiles"]["sources"] == {"latency_ms": ["modelled"], "energy_j": ["modelled"]}


def test_report_renders_from_results_json_alone(script: ModuleType, run: tuple[Path, dict[str, Any]]) -> None:
    """REPORT.md is a pure function of results.json (benchmarks/moe2_report.render)."""
    out, results = run
    assert script.render(results) == (out / "REPORT.md").read_text()


def test_single_expert_accuracy_follows_from_the_npz(run: tuple[Path, dict[str, Any]],
                                                     npz: dict[str, np.ndarray]) -> None:
    _, results = run
    lp, labels, cats, split = npz["logprobs"].astype(np.float64), npz["labels"], npz["categories"], npz["split"]
    test, train = split == 2, split == 0
    # the prior correction, from its definition: log of each expert's mean option probability on train
    prior = np.log(np.exp(lp[train]).mean(axis=0))  # (N, K); the synthetic table has no missing options
    for j, name in enumerate(npz["experts"]):
        got = results["single_experts"][str(name)]
        raw_right = lp[test, j].argmax(axis=1) == labels[test]
        corr_right = (lp[test, j] - prior[j]).argmax(axis=1) == labels[test]
        assert got["raw"]["accuracy"] == pytest.approx(raw_right.mean(), abs=1e-12)
        assert got["corrected"]["accuracy"] == pytest.approx(corr_right.mean(), abs=1e-12)
        for c, cname in enumerate(npz["category_names"]):
            rows = cats[test] == c
            assert got["raw"]["per_category"][str(cname)] == pytest.approx(raw_right[rows].mean(), abs=1e-12)
            assert got["corrected"]["per_category"][str(cname)] == pytest.approx(corr_right[rows].mean(), abs=1e-12)


def test_grid_spans_cheapest_expert_to_all_experts(run: tuple[Path, dict[str, Any]], costs: Any) -> None:
    _, results = run
    _, _, lat, en, agg = costs
    grid = results["grid"]
    energies, scales = grid["energies_j"], grid["latency_scales"]
    assert grid["points"] == len(results["points"]) == len(energies) * len(scales)
    assert [(p["energy_j"], p["latency_scale"]) for p in results["points"]] == [(e, s) for e in energies for s in scales]
    assert energies[0] == pytest.approx(en.max(axis=1).min())
    assert energies[-1] == pytest.approx(en.max(axis=1).sum())
    # the regular grid plus every expert's own worst-case J (each once)
    assert len(energies) == len(set(np.round(np.geomspace(energies[0], energies[-1], N_ENERGY), 9))
                                | set(np.round(en.max(axis=1), 9)))
    for j_alone in en.max(axis=1):
        assert min(abs(e - j_alone) for e in energies) <= 1e-9 * j_alone
    # every expert fits from some latency scale on, and that scale is its own: some category is tight
    for j in range(len(en)):
        ok = [bool(fits(lat[j] + agg, np.array(p["latency_ms"])).all()) for p in results["points"][: len(scales)]]
        first = ok.index(True)
        assert ok == [False] * first + [True] * (len(ok) - first), j  # monotone in s
        tight = (lat[j] + agg) / np.array(results["points"][first]["latency_ms"])
        assert tight.max() == pytest.approx(1.0, abs=1e-9), j
    assert grid["latency_lo_ms"] == pytest.approx((lat + agg).min(axis=0).tolist())
    assert grid["latency_hi_ms"] == pytest.approx((lat + agg).max(axis=0).tolist())


def test_selector_equals_brute_force_and_brute_force_counts_the_feasible_sets(
        run: tuple[Path, dict[str, Any]], costs: Any) -> None:
    _, results = run
    experts, _, lat, en, agg = costs
    n = len(experts)
    subsets = [np.array(bits, dtype=bool) for bits in itertools.product([False, True], repeat=n) if any(bits)]
    fixed = results["claim2_selection"]["moe2"]
    assert fixed["ran"] and fixed["points"] == len(results["points"])
    assert fixed["equal"] == fixed["points"]  # the selector is exact at every grid point
    for name, top_k in (("moe2", TOP_K), ("moe2-adaptive", None)):
        check = results["claim2_selection"][name]
        assert check["equal"] == sum(r["equal"] for r in check["rows"])
        assert check["brute_force_evaluations"] == sum(r["brute_force_evaluations"] for r in check["rows"])
        for row, point in zip(check["rows"], results["points"], strict=True):
            lat_budget = np.array(point["latency_ms"])
            count = sum(feasible(m, en, lat, agg, row["energy_j"], lat_budget, top_k) for m in subsets)
            assert row["brute_force_evaluations"] == row["feasible_sets"] == count, (name, row["index"])
            plan = point["methods"][name]["experts"]
            if plan:  # MoE²'s plan keeps the budget, from the profiles' own figures
                mask = np.isin(experts, plan)
                assert feasible(mask, en, lat, agg, row["energy_j"], lat_budget, top_k), (name, row["index"])
            else:
                assert count == 0


def test_improvement_over_the_best_fitting_single_expert(run: tuple[Path, dict[str, Any]], costs: Any) -> None:
    _, results = run
    experts, _, lat, en, agg = costs
    acc = {e: results["single_experts"][e]["corrected"]["accuracy"] for e in experts}
    margins = []
    for p in results["points"]:
        fit = [e for j, e in enumerate(experts)
               if fits(en[j].max(), p["energy_j"]) and fits(lat[j] + agg, np.array(p["latency_ms"])).all()]
        assert p["singles_fit"] == fit
        test = p["methods"]["moe2"]["test"]
        assert (test is None) == (not fit)  # a plan exists exactly when one expert fits alone
        if fit:
            margins.append((100.0 * (test["accuracy"] - max(acc[e] for e in fit)), p["index"]))
    reported = results["claim3_tradeoffs"]["improvement_vs_best_single"]["moe2"]
    assert reported["points"] == len(margins)
    best = max(margins, key=lambda t: t[0])
    worst = min(margins, key=lambda t: t[0])
    assert reported["best"]["margin_points"] == pytest.approx(best[0])
    assert reported["best"]["index"] == best[1]
    assert reported["worst"]["margin_points"] == pytest.approx(worst[0])
    assert reported["losses"] == sum(m < -1e-9 for m, _ in margins)


def test_retrain_gap_summary_follows_from_its_rows(run: tuple[Path, dict[str, Any]]) -> None:
    _, results = run
    gap = results["claim1_retrain_gap"]
    assert gap["ran"] and gap["subsets"] == len(gap["rows"]) == SUBSETS
    nll = [r["masked_nll"] - r["retrained_nll"] for r in gap["rows"]]
    assert gap["mean_gap_nll"] == pytest.approx(np.mean(nll))
    assert gap["max_gap_nll"] == pytest.approx(np.max(nll))
    assert gap["split"] == "test"


def test_missing_or_corrupt_table_names_the_file(script: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip archive")
    partial = tmp_path / "partial.npz"
    np.savez(partial, labels=np.zeros(3, dtype=np.int64))
    for path, why in ((missing, "not found"), (corrupt, "not a readable"), (partial, "missing keys")):
        opts = script.Options(table=path, profiles=PROFILES, out=tmp_path / "out", quick=True, progress=False)
        with pytest.raises(DataFormatError, match=why) as info:
            script.run_report(opts)
        assert str(path) in str(info.value)
    assert not (tmp_path / "out").exists()  # failed before anything was written


def test_cli_help_and_error_exit(tmp_path: Path) -> None:
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    for option in ("--table", "--profiles", "--out", "--top-k", "--subsets", "--seed", "--energy-points",
                   "--latency-points", "--quick"):
        assert option in help_text
    missing = tmp_path / "missing.npz"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--table", str(missing), "--profiles", str(PROFILES),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("DataFormatError: ") and str(missing) in proc.stderr
