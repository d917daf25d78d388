"""Results that hold up: the figures docs/results.md states about the committed tables,
recomputed from them, with the spread a different split would give.

    .venv/bin/python benchmarks/resplit_spread.py checks              # (a) (b) (d): seconds
    .venv/bin/python benchmarks/resplit_spread.py resplit --splits 300   # (c): ~5 s per split on 2 cores
    .venv/bin/python benchmarks/resplit_spread.py shuffle-bigbench --out bb.jsonl   # input of a rescoring

Both write their part of ``benchmarks/results/moe2/resplit_spread.json`` and re-render
``benchmarks/results/moe2/resplit_spread.md`` from it. Inputs, all committed:
``benchmarks/results/mmlu/{calibration.npz,profiles.cpu.json}`` (the MMLU table and its
profiles), ``benchmarks/results/moe2/{results.json,gate.onnx}`` (the report's budget sweep and
the gate it trained) and ``benchmarks/results/bigbench/{calibration.npz,results.json}``.

``checks``:

- **precision**: at every point of the MMLU budget sweep (180), whether Qwen2.5-Coder-1.5B
  int8 fits the budget alone, and what each planner variant's plan takes there (int8, the
  fp32 build instead, or neither); for the plans that take fp32 where int8 fits, the test
  accuracy and worst-case J against int8 alone. Also the int8/fp32 figures the sentence
  quotes (top-1 agreement on all 1,254 questions, worst-category p95 ms and J).
- **bigbench**: every expert's test accuracy (raw argmax and after the per-letter prior
  correction) beside the baselines that need no model: chance (mean 1/K), always the same
  letter (A, B, ...), and the majority letter of the train split; each with its Wilson 95%
  interval, the exact one-sided p-value against chance (Poisson-binomial: question i is
  right with probability 1/K_i) and the exact two-sided McNemar p-value against always-A.
  The same on all 150 questions for the raw argmax (zero-shot: nothing is fitted on them),
  and on the MMLU test split (each constant letter; each expert's test accuracy with its
  p-value against 25%).
- **guard**: the multi-expert plans the paired guard kept (planner default: loglik on
  validation, guard at 95%), each against its fair single expert (the best single on the
  same data and objective): how many of the 250 test answers the mixture changes, and how
  many of those it turns right or wrong. Plans are rebuilt with the committed gate.

``resplit``: the committed table re-split R times (seeds 1..R; per category, the rows
shuffled and cut 60% train / 20% validation / 20% test, as ``edge-moe calibrate`` does),
each time the gate retrained on the new train split (``GateConfig(seed=0)``, the report's)
and both planner variants replanned over the report's 180 budgets with the planner's own
functions (``gating.offline.variants.run_variants``: ``loglik`` + guard, the default, and
``accuracy``, the old objective). The *gain* of a split is the mean test accuracy of the
first minus the second over the 180 budgets, in points; the committed split's gain is
30.4 − 25.6. Reported: the gain's mean, its 2.5% and 97.5% quantiles over the re-splits, and
how many re-splits reach the committed split's gain; the same for loglik + guard against its
fair single expert.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

MMLU = REPO / "benchmarks" / "results" / "mmlu"
MOE2 = REPO / "benchmarks" / "results" / "moe2"
BIGBENCH = REPO / "benchmarks" / "results" / "bigbench"
OUT = MOE2 / "resplit_spread.json"
INT8, FP32 = "qwen2.5-coder-1.5b-instruct-int8", "qwen2.5-coder-1.5b-instruct"
LETTERS = "ABCDEFGH"


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95% interval of k successes in n."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def poisson_binomial_sf(k: int, probs: np.ndarray) -> float:
    """P(X >= k) for X the number of successes of independent trials with these probabilities."""
    dist = np.zeros(len(probs) + 1)
    dist[0] = 1.0
    for p in probs:
        dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
        dist[0] *= 1 - p
    return float(dist[k:].sum())


def mcnemar_exact(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, Any]:
    """Exact two-sided McNemar test of paired right/wrong vectors: the discordant pairs
    (a right, b wrong) and (a wrong, b right) and the binomial p-value."""
    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    n = b + c
    if n == 0:
        return {"a_only": b, "b_only": c, "p": 1.0}
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return {"a_only": b, "b_only": c, "p": min(1.0, 2 * tail)}


# --------------------------------------------------------------------------- (a) precision


def precision_check() -> dict[str, Any]:
    from edge_moe.calibration import load_calibration

    res = json.loads((MOE2 / "results.json").read_text())
    singles = res["single_experts"]
    int8_j, fp32_j = singles[INT8]["worst_energy_j"], singles[FP32]["worst_energy_j"]
    int8_ms, fp32_ms = singles[INT8]["worst_latency_ms"], singles[FP32]["worst_latency_ms"]
    int8_acc = singles[INT8]["corrected"]["accuracy"]
    raw = load_calibration(MMLU / "calibration.npz")
    e8, e32 = raw.experts.index(INT8), raw.experts.index(FP32)
    agree = float((raw.logprobs[:, e8].argmax(1) == raw.logprobs[:, e32].argmax(1)).mean())
    points = res["points"]
    fits = {p["index"] for p in points if INT8 in p["singles_fit"]}
    both = sorted(p["index"] for p in points if INT8 in p["singles_fit"] and FP32 in p["singles_fit"])
    by_variant: dict[str, Any] = {}
    plans = {"moe2 (sweep: loglik + guard)": {p["index"]: (p["methods"]["moe2"]["experts"],
                                                           p["methods"]["moe2"]["test"]["accuracy"],
                                                           p["methods"]["moe2"]["worst_energy_j"]) for p in points}}
    for name, v in res["robust_selection"]["variants"].items():
        plans[name] = {r["index"]: (r["plan"], r.get("test_accuracy"), None) for r in v["points"]}
    for name, rows in plans.items():
        takes = [i for i in sorted(fits) if INT8 in rows[i][0]]
        fp32_instead = [i for i in sorted(fits) if INT8 not in rows[i][0] and FP32 in rows[i][0]]
        neither = [i for i in sorted(fits) if INT8 not in rows[i][0] and FP32 not in rows[i][0]]
        by_variant[name] = {
            "int8_fits": len(fits), "takes_int8": len(takes), "takes_fp32_instead": len(fp32_instead),
            "takes_neither": len(neither),
            "fp32_instead": [{"index": i, "plan": rows[i][0], "test_accuracy": rows[i][1],
                              "points_vs_int8_alone": None if rows[i][1] is None else 100 * (rows[i][1] - int8_acc)}
                             for i in fp32_instead],
            "neither": [{"index": i, "plan": rows[i][0], "test_accuracy": rows[i][1]} for i in neither],
        }
    return {"source": _rel(MOE2 / "results.json"), "points": len(points),
            "int8_test_accuracy": int8_acc, "fp32_test_accuracy": singles[FP32]["corrected"]["accuracy"],
            "int8_worst_energy_j": int8_j, "fp32_worst_energy_j": fp32_j, "energy_ratio_fp32_to_int8": fp32_j / int8_j,
            "int8_worst_latency_ms": int8_ms, "fp32_worst_latency_ms": fp32_ms,
            "latency_share_int8": int8_ms / fp32_ms, "energy_share_int8": int8_j / fp32_j,
            "top1_agreement_all_rows": agree, "rows": int(raw.labels.shape[0]),
            "fp32_fits_too": both, "variants": by_variant}


# --------------------------------------------------------------------------- (b) BIG-bench baselines


def _accuracy_row(name: str, right: np.ndarray, chance_p: np.ndarray, always_a: np.ndarray) -> dict[str, Any]:
    k, n = int(right.sum()), int(right.size)
    return {"name": name, "right": k, "n": n, "accuracy": k / n, "wilson95": wilson(k, n),
            "p_vs_chance": poisson_binomial_sf(k, chance_p), "vs_always_a": mcnemar_exact(right, always_a)}


def bigbench_check() -> dict[str, Any]:
    from edge_moe.calibration import TEST, TRAIN, load_calibration
    from edge_moe.runtime.gate import OnnxGate
    from gating.planning.mixture import apply_prior_correction

    table = load_calibration(BIGBENCH / "calibration.npz")
    res = json.loads((BIGBENCH / "results.json").read_text())
    gate = OnnxGate.load(BIGBENCH / "gate.onnx")
    n_opts = np.isfinite(table.logprobs[:, 0, :]).sum(axis=1)  # (M,) K per question
    corrected_all = apply_prior_correction(table.select_experts(list(gate.experts)).logprobs, gate.prior)
    out: dict[str, Any] = {"source": [_rel(BIGBENCH / "calibration.npz"), _rel(BIGBENCH / "gate.onnx"),
                                      _rel(BIGBENCH / "results.json")],
                           "option_order": "each task's own order, as benchmarks/bigbench/bigbench_mc.jsonl keeps it (not shuffled)"}
    for scope, rows in (("test", table.split == TEST), ("all", np.ones_like(table.split, dtype=bool))):
        labels, k = table.labels[rows], n_opts[rows]
        chance_p = 1.0 / k
        always_a = labels == 0
        part: dict[str, Any] = {"n": int(rows.sum()), "chance": float(chance_p.mean()),
                                "label_counts": {LETTERS[i]: int((labels == i).sum()) for i in range(labels.max() + 1)},
                                "options_counts": {int(v): int((k == v).sum()) for v in np.unique(k)}}
        base = [_accuracy_row(f"always {LETTERS[i]}", labels == i, chance_p, always_a) for i in range(int(k.max()))]
        train_labels = table.labels[table.split == TRAIN]
        major = int(np.bincount(train_labels).argmax())
        base.append(_accuracy_row(f"majority letter of the train split ({LETTERS[major]})", labels == major,
                                  chance_p, always_a))
        part["baselines"] = base
        experts = []
        for e, name in enumerate(table.experts):
            pred = table.logprobs[rows, e].argmax(axis=1)
            row = _accuracy_row(f"{name} raw argmax", pred == labels, chance_p, always_a)
            row["answers_a"] = float((pred == 0).mean())
            experts.append(row)
            if scope == "test":
                g = list(gate.experts).index(name)
                cpred = corrected_all[rows, g].argmax(axis=1)
                crow = _accuracy_row(f"{name} prior-corrected", cpred == labels, chance_p, always_a)
                crow["answers_a"] = float((cpred == 0).mean())
                crow["report_accuracy"] = res["single_experts"][name]["corrected"]["accuracy"]
                experts.append(crow)
        part["experts"] = experts
        out[scope] = part
    return out


def mmlu_letters_check() -> dict[str, Any]:
    """The same baselines on the MMLU test split (4 options): each constant letter, and every
    expert's test accuracy as the report gives it with its p-value against 25%."""
    from edge_moe.calibration import TEST, load_calibration

    table = load_calibration(MMLU / "calibration.npz")
    res = json.loads((MOE2 / "results.json").read_text())
    labels = table.labels[table.split == TEST]
    n = int(labels.size)
    chance_p = np.full(n, 0.25)
    rows = []
    for i in range(4):
        k = int((labels == i).sum())
        rows.append({"name": f"always {LETTERS[i]}", "right": k, "n": n, "accuracy": k / n, "wilson95": wilson(k, n),
                     "p_vs_chance": poisson_binomial_sf(k, chance_p)})
    for name, v in res["single_experts"].items():
        k = int(round(v["corrected"]["accuracy"] * n))
        rows.append({"name": name, "right": k, "n": n, "accuracy": k / n, "wilson95": wilson(k, n),
                     "p_vs_chance": poisson_binomial_sf(k, chance_p)})
    return {"source": [_rel(MMLU / "calibration.npz"), _rel(MOE2 / "results.json")], "test_rows": n, "rows": rows}


# --------------------------------------------------------------------------- (d) the guard's kept mixtures


def guard_check() -> dict[str, Any]:
    from edge_moe.calibration import TEST
    from gating.offline.budget_grid import BudgetGrid
    from gating.planning import baselines, planner
    from gating.planning.guard import DEFAULT_RESAMPLES, apply_guard
    from gating.planning.mixture import masked_gate_weights, mix, select_top_k
    from gating.planning.selector import Budget, select_experts

    res = json.loads((MOE2 / "results.json").read_text())
    head = res["header"]
    inputs = planner.load_inputs(MMLU / "calibration.npz", MMLU / "profiles.cpu.json", MOE2 / "gate.onnx")
    top_k, seed, conf = head["top_k"], head["seed"], head["selection"]["guard_confidence"]
    f = planner.make_objective(inputs, top_k, None, objective="loglik")
    problem = planner.make_problem(inputs, f, top_k)
    grid = BudgetGrid.make(inputs.energy_j, inputs.latency_ms, inputs.profiles.aggregation_ms, 10, 8, True).points()
    report_plans = {r["index"]: r["plan"] for r in res["robust_selection"]["variants"]["loglik+guard"]["points"]}
    logits, rows = planner.split_rows(inputs, TEST)

    def answers(mask: np.ndarray) -> np.ndarray:
        w = select_top_k(masked_gate_weights(logits, mask), top_k=top_k, tau=None, mask=mask)
        return mix(w, rows.logprobs).argmax(axis=1)

    kept, distinct = [], {}
    for point in grid:
        budget = Budget(energy_j=point.energy_j, latency_ms=point.latency_ms)
        sel = select_experts(problem, budget)
        plan, report = apply_guard(problem, budget, sel, f, conf, DEFAULT_RESAMPLES, seed)
        if list(plan.experts) != report_plans[point.index]:
            raise RuntimeError(f"point {point.index}: rebuilt plan {plan.experts} is not the report's "
                               f"{report_plans[point.index]}")
        if plan.mask.sum() < 2:
            continue
        single = baselines.best_single(problem, budget)
        a, b = answers(plan.mask), answers(single.mask)
        right_a, right_b = a == rows.labels, b == rows.labels
        row = {"index": point.index, "plan": list(plan.experts), "fair_single": list(single.experts),
               "changed_answers": int((a != b).sum()), "turned_right": int((right_a & ~right_b).sum()),
               "turned_wrong": int((~right_a & right_b).sum()), "test_rows": int(rows.labels.shape[0]),
               "test_accuracy": float(right_a.mean()), "fair_single_test_accuracy": float(right_b.mean())}
        kept.append(row)
        distinct.setdefault((tuple(row["plan"]), tuple(row["fair_single"])), row)
    expected = res["robust_selection"]["variants"]["loglik+guard"]["summary"]["multi_expert_plans"]
    return {"source": [_rel(MMLU / "calibration.npz"), _rel(MOE2 / "gate.onnx")], "top_k": top_k,
            "guard_confidence": conf, "kept_mixtures": len(kept), "report_multi_expert_plans": expected,
            "points": kept,
            "distinct": [{k: v for k, v in r.items() if k != "index"} for r in distinct.values()]}


# --------------------------------------------------------------------------- (c) re-splits


def resplit_once(seed: int | None, work: Path) -> dict[str, Any]:
    """Gain of loglik + guard over the accuracy objective on one split (None: the committed)."""
    from edge_moe.calibration import (
        TEST,
        TRAIN,
        VALIDATION,
        CalibrationTable,
        load_calibration,
        save_calibration,
    )
    from gating.offline.budget_grid import BudgetGrid
    from gating.offline.variants import Variant, run_variants
    from gating.planning import planner
    from gating.planning.gate import GateConfig

    table = load_calibration(MMLU / "calibration.npz")
    if seed is not None:
        rng = np.random.default_rng(seed)
        split = np.full(table.labels.shape, TRAIN, np.int8)
        for c in range(len(table.category_names)):
            idx = rng.permutation(np.flatnonzero(table.categories == c))
            k1 = int(round(0.6 * idx.size))
            k2 = k1 + int(round(0.2 * idx.size))
            split[idx[k1:k2]] = VALIDATION
            split[idx[k2:]] = TEST
        table = CalibrationTable(logprobs=table.logprobs, labels=table.labels, categories=table.categories,
                                 category_names=table.category_names, experts=table.experts,
                                 embeddings=table.embeddings, split=split)
    path = save_calibration(table, work / "table.npz")
    inputs = planner.load_inputs(path, MMLU / "profiles.cpu.json", None, work, GateConfig(seed=0))
    grid = BudgetGrid.make(inputs.energy_j, inputs.latency_ms, inputs.profiles.aggregation_ms, 10, 8, True).points()
    v = run_variants(inputs, [Variant("loglik", 0, 0.95), Variant("accuracy")], grid, 2, 0)["variants"]
    lg, acc = v["loglik+guard"]["summary"], v["accuracy"]["summary"]
    return {"seed": seed, "loglik_guard": lg["mean_test_accuracy"], "accuracy": acc["mean_test_accuracy"],
            "gain_points": 100 * (lg["mean_test_accuracy"] - acc["mean_test_accuracy"]),
            "loglik_guard_vs_fair_single_points": lg["mean_diff_points"],
            "multi_expert_plans": lg["multi_expert_plans"], "points": lg["points"]}


def _spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"mean": float(a.mean()), "q025": float(np.quantile(a, 0.025)), "q975": float(np.quantile(a, 0.975)),
            "min": float(a.min()), "max": float(a.max())}


def summarise_resplits(committed: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    gains = [r["gain_points"] for r in rows]
    return {"splits": len(rows), "gain_points": _spread(gains),
            "reach_committed_gain": sum(g >= committed["gain_points"] - 1e-9 for g in gains),
            "loglik_guard": _spread([100 * r["loglik_guard"] for r in rows]),
            "accuracy": _spread([100 * r["accuracy"] for r in rows]),
            "loglik_guard_vs_fair_single_points": _spread([r["loglik_guard_vs_fair_single_points"] for r in rows])}


# --------------------------------------------------------------------------- the report


def accuracy_table(scope: str, s: dict[str, Any], mcnemar_head: str) -> list[str]:
    """Markdown lines: one split's BIG-bench accuracies (baselines, then experts) with their
    Wilson interval, p against chance, McNemar against always-A and share of "A" answers."""
    out = [f"**{scope} ({s['n']} questions)**: chance {_pct(s['chance'])}%; correct letter counts "
           f"{s['label_counts']}; options per question {s['options_counts']}.", "",
           f"| | right | accuracy [Wilson 95%] | p vs chance | {mcnemar_head} | answers A |",
           "|---|---|---|---|---|---|"]
    for r in [*s["baselines"], *s["experts"]]:
        m = r["vs_always_a"]
        out.append(f"| {r['name']} | {r['right']}/{r['n']} | {_pct(r['accuracy'])} "
                   f"[{_pct(r['wilson95'][0])}, {_pct(r['wilson95'][1])}] | {r['p_vs_chance']:.3f} | "
                   f"{m['a_only']}/{m['b_only']}, p={m['p']:.2f} | "
                   f"{'' if 'answers_a' not in r else _pct(r['answers_a']) + '%'} |")
    return [*out, ""]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(doc: dict[str, Any]) -> str:
    out = ["# Results that hold up: recomputed from the committed tables", "",
           "Made by `benchmarks/resplit_spread.py` (its docstring defines every figure); "
           "the JSON beside this file holds them all.", ""]
    ch = doc.get("checks")
    if ch:
        p = ch["precision"]
        out += ["## (a) Qwen-1.5B int8 against fp32 in the MMLU budget sweep", "",
                f"`{ch['command']}`", "",
                f"- int8 fits the budget alone at {p['variants']['moe2 (sweep: loglik + guard)']['int8_fits']} of "
                f"{p['points']} budgets, fp32 too at {len(p['fp32_fits_too'])} of them "
                f"(points {', '.join(map(str, p['fp32_fits_too']))}). Test accuracy int8 {_pct(p['int8_test_accuracy'])}%, fp32 "
                f"{_pct(p['fp32_test_accuracy'])}%; worst-category p95 {p['int8_worst_latency_ms']:.0f} / "
                f"{p['fp32_worst_latency_ms']:.0f} ms ({_pct(p['latency_share_int8'])}%), J {p['int8_worst_energy_j']:.1f} / "
                f"{p['fp32_worst_energy_j']:.1f} ({_pct(p['energy_share_int8'])}%; fp32 costs "
                f"{p['energy_ratio_fp32_to_int8']:.2f}x); top-1 agreement {p['top1_agreement_all_rows']:.3f} on all "
                f"{p['rows']} questions.", "",
                "| plans | int8 fits | take int8 | take fp32 instead | take neither |", "|---|---|---|---|---|"]
        for name, v in p["variants"].items():
            out.append(f"| {name} | {v['int8_fits']} | {v['takes_int8']} | {v['takes_fp32_instead']} | {v['takes_neither']} |")
        for name, v in p["variants"].items():
            for r in v["fp32_instead"]:
                out.append(f"\n- {name}, point {r['index']}: {r['plan']}, test {_pct(r['test_accuracy'])}% "
                           f"({r['points_vs_int8_alone']:+.1f} points against int8 alone)")
        b = ch["bigbench"]
        out += ["", "## (b) BIG-bench accuracies beside the baselines that need no model", "",
                f"`{ch['command']}`", "",
                f"Options in {b['option_order']}. p: exact one-sided against chance "
                "(question i right with probability 1/K_i); McNemar: exact two-sided against always-A on the "
                "same questions (right only here / right only with A).", ""]
        for scope in ("test", "all"):
            out += accuracy_table(scope, b[scope], "vs always-A (McNemar)")
        ml = ch.get("mmlu_letters")
        if ml:
            out += [f"**MMLU test ({ml['test_rows']} questions, 4 options: chance 25%)**, the same baselines "
                    "(experts as the report gives them, prior-corrected):", "",
                    "| | right | accuracy [Wilson 95%] | p vs chance |", "|---|---|---|---|"]
            for r in ml["rows"]:
                out.append(f"| {r['name']} | {r['right']}/{r['n']} | {_pct(r['accuracy'])} "
                           f"[{_pct(r['wilson95'][0])}, {_pct(r['wilson95'][1])}] | {r['p_vs_chance']:.3f} |")
            out.append("")
        g = ch["guard"]
        out += ["## (d) What the guard's kept mixtures change on MMLU test", "", f"`{ch['command']}`", "",
                f"{g['kept_mixtures']} budgets keep a multi-expert plan (the report: "
                f"{g['report_multi_expert_plans']}); distinct (plan, fair single) pairs:", "",
                "| plan | fair single | test answers changed (of 250) | turned right | turned wrong | accuracy plan / single |",
                "|---|---|---|---|---|---|"]
        for r in g["distinct"]:
            out.append(f"| {' + '.join(r['plan'])} | {' + '.join(r['fair_single'])} | {r['changed_answers']} | "
                       f"{r['turned_right']} | {r['turned_wrong']} | {_pct(r['test_accuracy'])} / "
                       f"{_pct(r['fair_single_test_accuracy'])} |")
        out.append("")
    rs = doc.get("resplit")
    if rs:
        s, c = rs["summary"], rs["committed"]
        gp = s["gain_points"]
        out += ["## (c) The loglik objective's gain over the accuracy objective, re-split", "",
                f"`{rs['command']}` ({rs['seconds']:.0f} s)", "",
                f"On the committed split: loglik + guard {_pct(c['loglik_guard'])}%, accuracy "
                f"{_pct(c['accuracy'])}%, gain {c['gain_points']:+.1f} points (mean over the 180 budgets).", "",
                f"Over {s['splits']} re-splits (seeds 1..{s['splits']}): gain {gp['mean']:+.1f} points, 95% of "
                f"re-splits in [{gp['q025']:+.1f}, {gp['q975']:+.1f}] (min {gp['min']:+.1f}, max {gp['max']:+.1f}); "
                f"{s['reach_committed_gain']} of {s['splits']} reach the committed split's {c['gain_points']:+.1f}. "
                f"loglik + guard {s['loglik_guard']['mean']:.1f}% [{s['loglik_guard']['q025']:.1f}, "
                f"{s['loglik_guard']['q975']:.1f}], accuracy {s['accuracy']['mean']:.1f}% [{s['accuracy']['q025']:.1f}, "
                f"{s['accuracy']['q975']:.1f}]; loglik + guard against its fair single expert "
                f"{s['loglik_guard_vs_fair_single_points']['mean']:+.2f} points "
                f"[{s['loglik_guard_vs_fair_single_points']['q025']:+.2f}, "
                f"{s['loglik_guard_vs_fair_single_points']['q975']:+.2f}].", ""]
    return "\n".join(out)


def _load() -> dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"format": "edge-moe-resplit-spread/1"}


def _save(doc: dict[str, Any]) -> None:
    from edge_moe.atomic import write_text

    write_text(OUT, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    write_text(OUT.with_suffix(".md"), render(doc))


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def checks() -> None:
    """(a) int8 vs fp32 in the budget sweep, (b) BIG-bench baselines, (d) the guard's kept mixtures."""
    doc = _load()
    doc["checks"] = {"command": ".venv/bin/python benchmarks/resplit_spread.py checks",
                     "precision": precision_check(), "bigbench": bigbench_check(),
                     "mmlu_letters": mmlu_letters_check(), "guard": guard_check()}
    _save(doc)
    print(render({"checks": doc["checks"]}))


@app.command()
def resplit(splits: Annotated[int, typer.Option(help="re-splits (seeds 1..N)")] = 300,
            resume: Annotated[bool, typer.Option(help="keep the re-splits already in the JSON")] = True) -> None:
    """(c) the gain of loglik + guard over the accuracy objective over N re-splits."""
    doc = _load()
    old = doc.get("resplit", {}) if resume else {}
    rows = [r for r in old.get("rows", []) if r["seed"] <= splits]
    done = {r["seed"] for r in rows}
    start = time.perf_counter() - (old.get("seconds", 0.0) if rows else 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        committed = old.get("committed") or resplit_once(None, Path(tmp))
        for seed in range(1, splits + 1):
            if seed in done:
                continue
            r = resplit_once(seed, Path(tmp))
            r.pop("points")
            rows.append(r)
            print(f"split {seed}: gain {r['gain_points']:+.2f} points", flush=True)
            if seed % 10 == 0 or seed == splits:
                committed.pop("points", None)
                rows.sort(key=lambda x: x["seed"])
                doc["resplit"] = {"command": f".venv/bin/python benchmarks/resplit_spread.py resplit --splits {splits}",
                                  "seconds": time.perf_counter() - start, "committed": committed,
                                  "summary": summarise_resplits(committed, rows), "rows": rows}
                _save(doc)
    print(render({"resplit": doc["resplit"]}))


@app.command("shuffle-bigbench")
def shuffle_bigbench(out: Annotated[Path, typer.Option(help="the shuffled JSONL to write")],
                     seed: Annotated[int, typer.Option(help="seed of the permutations")] = 0) -> None:
    """The BIG-bench dataset with each question's options in a seeded random order (the label
    moves with its option; ids, questions and categories unchanged, so calibrate's split is the
    same): the input of the pending rescoring (docs/results.md)."""
    from edge_moe.atomic import write_text

    rng = np.random.default_rng(seed)
    src = REPO / "benchmarks" / "bigbench" / "bigbench_mc.jsonl"
    lines, first = [], 0
    for line in src.read_text().splitlines():
        row = json.loads(line)
        order = rng.permutation(len(row["options"]))
        row["options"] = [row["options"][i] for i in order]
        row["label"] = int(np.flatnonzero(order == row["label"])[0])
        first += row["label"] == 0
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text(out, "\n".join(lines) + "\n")
    print(f"{out}: {len(lines)} questions from {_rel(src)}, options shuffled (seed {seed}); "
          f"the answer is A in {first} ({100 * first / len(lines):.1f}%)")


if __name__ == "__main__":
    app()
