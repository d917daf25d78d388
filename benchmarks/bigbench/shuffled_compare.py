"""BIG-bench with each question's options shuffled, beside the committed file-order table.

    .venv/bin/python benchmarks/bigbench/shuffled_compare.py
    (= bash benchmarks/bigbench/run.sh compare-shuffled)

Inputs, both made by ``benchmarks/bigbench/run.sh``: the committed file-order table
``benchmarks/results/bigbench/calibration.npz`` (+ ``results.json``, ``work/samples.jsonl``)
and the shuffled one ``benchmarks/results/bigbench_shuffled/calibration.npz`` (+ its
``results.json`` and ``work/samples.jsonl``): the same 150 questions (the first 150 listed,
checked here by id, split and answer text), each question's options permuted by
``benchmarks/resplit_spread.py shuffle-bigbench`` (seed 0).

For each order, on the 33-question test split and on all 150 questions:

- chance (mean 1/K over the questions), always the same letter (A, B, ...), the majority
  letter of the train split (of the 150 table's train rows);
- each expert's accuracy *as planned* (the per-letter prior correction the planner applies:
  ``gating.planning.mixture.fit_prior_correction`` on the train rows, then
  ``apply_prior_correction``; on test this equals the report's ``corrected`` accuracy, which is
  asserted) and its *raw argmax*; on all 150 the planned figure includes the train rows its
  prior was fitted on;
- each with its Wilson 95% interval, the exact one-sided p-value against chance
  (Poisson-binomial: question i right with probability 1/K_i), the exact two-sided McNemar
  p-value against always-A on the same questions, and the share of "A" answers.

Then, paired, for each expert in both tables: right/wrong in file order against shuffled
order on the same questions (exact two-sided McNemar), and the share of questions where the
expert picks the same option *text* in both orders (1.0 would be an expert blind to order).

Writes ``benchmarks/results/bigbench_shuffled/compare.json`` and ``compare.md``.

    .venv/bin/python benchmarks/bigbench/shuffled_compare.py header benchmarks/results/bigbench_shuffled/REPORT.md

puts the shuffled run's commands and coverage at the top of its REPORT.md (the body is
``benchmarks/reproduce_moe2.py``'s, as for the file-order report; ``report_header.py`` describes
the file-order run, so it is not used here).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.resplit_spread import accuracy_table, mcnemar_exact, poisson_binomial_sf, wilson  # noqa: E402

FILE = REPO / "benchmarks" / "results" / "bigbench"
SHUF = REPO / "benchmarks" / "results" / "bigbench_shuffled"
LETTERS = "ABCDEFGH"
COMMAND = ".venv/bin/python benchmarks/bigbench/shuffled_compare.py"


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def _row(name: str, right: np.ndarray, chance_p: np.ndarray, always_a: np.ndarray,
         pred: np.ndarray | None = None) -> dict[str, Any]:
    k, n = int(right.sum()), int(right.size)
    r = {"name": name, "right": k, "n": n, "accuracy": k / n, "wilson95": wilson(k, n),
         "p_vs_chance": poisson_binomial_sf(k, chance_p), "vs_always_a": mcnemar_exact(right, always_a)}
    if pred is not None:
        r["answers_a"] = float((pred == 0).mean())
    return r


def load(folder: Path) -> dict[str, Any]:
    from edge_moe.calibration import TRAIN, load_calibration
    from gating.planning.mixture import apply_prior_correction, fit_prior_correction

    t = load_calibration(folder / "calibration.npz")
    samples = [json.loads(x) for x in (folder / "work" / "samples.jsonl").read_text().splitlines()][: t.n_samples]
    if [s["label"] for s in samples] != t.labels.tolist() or [s["split"] for s in samples] != t.split.tolist():
        raise SystemExit(f"{folder}: the table's rows are not the first {t.n_samples} samples of its work folder")
    prior = fit_prior_correction(t.logprobs[t.split == TRAIN])
    corrected = apply_prior_correction(t.logprobs, prior)
    res_file = folder / "results.json"
    res = json.loads(res_file.read_text()) if res_file.is_file() else None
    return {"table": t, "samples": samples, "raw": t.logprobs.argmax(axis=2), "planned": corrected.argmax(axis=2),
            "results": res, "lat": json.loads((folder / "calibration.latency.json").read_text())}


def order_block(d: dict[str, Any]) -> dict[str, Any]:
    from edge_moe.calibration import TEST, TRAIN

    t = d["table"]
    n_opts = np.isfinite(t.logprobs[:, 0, :]).sum(axis=1)
    out: dict[str, Any] = {"experts": list(t.experts)}
    for scope, rows in (("test", t.split == TEST), ("all", np.ones(t.n_samples, bool))):
        labels, k = t.labels[rows], n_opts[rows]
        chance_p = 1.0 / k
        always_a = labels == 0
        part: dict[str, Any] = {"n": int(rows.sum()), "chance": float(chance_p.mean()),
                                "label_counts": {LETTERS[i]: int((labels == i).sum()) for i in range(int(labels.max()) + 1)},
                                "options_counts": {int(v): int((k == v).sum()) for v in np.unique(k)}}
        base = [_row(f"always {LETTERS[i]}", labels == i, chance_p, always_a) for i in range(int(k.max()))]
        major = int(np.bincount(t.labels[t.split == TRAIN]).argmax())
        base.append(_row(f"majority letter of the train split ({LETTERS[major]})", labels == major, chance_p, always_a))
        part["train_majority_letter"] = LETTERS[major]
        part["baselines"] = base
        experts = []
        for e, name in enumerate(t.experts):
            for kind in ("planned", "raw"):
                pred = d[kind][rows, e]
                r = _row(f"{name} {'as planned (prior-corrected)' if kind == 'planned' else 'raw argmax'}",
                         pred == labels, chance_p, always_a, pred)
                r["expert"], r["kind"] = name, kind
                if kind == "planned" and scope == "test" and d["results"] is not None:
                    rep = d["results"]["single_experts"][name]["corrected"]["accuracy"]
                    if abs(rep - r["accuracy"]) > 1e-9:
                        raise SystemExit(f"{name}: planned test accuracy {r['accuracy']} != report's {rep}")
                    r["report_accuracy"] = rep
                experts.append(r)
        part["experts"] = experts
        out[scope] = part
    return out


def paired(f: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    from edge_moe.calibration import TEST

    tf, ts = f["table"], s["table"]
    n = ts.n_samples
    if tf.n_samples < n:
        raise SystemExit(f"the file-order table has {tf.n_samples} rows, the shuffled {n}")
    for a, b in zip(f["samples"][:n], s["samples"], strict=True):
        if a["id"] != b["id"] or a["split"] != b["split"] or a["options"][a["label"]] != b["options"][b["label"]] \
                or sorted(a["options"]) != sorted(b["options"]):
            raise SystemExit(f"sample {a['id']} / {b['id']} differs beyond its option order")
    reordered = np.array([a["options"] != b["options"] for a, b in zip(f["samples"][:n], s["samples"], strict=True)])
    same_order = int((~reordered).sum())
    out: dict[str, Any] = {"n": n, "questions_with_unchanged_order": same_order, "experts": []}
    fl, sl = tf.labels[:n], ts.labels
    for scope, rows in (("test", ts.split == TEST), ("all", np.ones(n, bool))):
        out.setdefault("always_a", {})[scope] = {
            "file_right": int((fl[rows] == 0).sum()), "shuffled_right": int((sl[rows] == 0).sum()),
            "mcnemar": mcnemar_exact(fl[rows] == 0, sl[rows] == 0)}
    for name in ts.experts:
        if name not in tf.experts:
            continue
        ef, es = list(tf.experts).index(name), list(ts.experts).index(name)
        entry: dict[str, Any] = {"expert": name}
        for kind in ("planned", "raw"):
            pf, ps = f[kind][:n, ef], s[kind][:, es]
            text_f = [f["samples"][i]["options"][pf[i]] for i in range(n)]
            text_s = [s["samples"][i]["options"][ps[i]] for i in range(n)]
            same_text = np.array([a == b for a, b in zip(text_f, text_s, strict=True)])
            for scope, rows in (("test", ts.split == TEST), ("all", np.ones(n, bool))):
                rf, rs = pf[rows] == fl[rows], ps[rows] == sl[rows]
                entry[f"{kind}_{scope}"] = {
                    "n": int(rows.sum()), "file_right": int(rf.sum()), "shuffled_right": int(rs.sum()),
                    "file_accuracy": float(rf.mean()), "shuffled_accuracy": float(rs.mean()),
                    "points": float(100 * (rs.mean() - rf.mean())),
                    "mcnemar": mcnemar_exact(rf, rs), "same_option_text": float(same_text[rows].mean()),
                    "same_option_text_reordered": float(same_text[rows & reordered].mean())}
        out["experts"].append(entry)
    return out


def between_experts(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pair of experts of one table, paired on the same questions (exact McNemar)."""
    from edge_moe.calibration import TEST

    t = d["table"]
    out = []
    for i in range(len(t.experts)):
        for j in range(i + 1, len(t.experts)):
            for kind in ("planned", "raw"):
                for scope, rows in (("test", t.split == TEST), ("all", np.ones(t.n_samples, bool))):
                    ri = d[kind][rows, i] == t.labels[rows]
                    rj = d[kind][rows, j] == t.labels[rows]
                    out.append({"a": t.experts[i], "b": t.experts[j], "kind": kind, "scope": scope,
                                "a_right": int(ri.sum()), "b_right": int(rj.sum()), "n": int(rows.sum()),
                                "mcnemar": mcnemar_exact(ri, rj)})
    return out


def wall_times() -> dict[str, Any]:
    """Each shuffled scoring run's wall seconds, from its log (logs/score-<expert>.log)."""
    out = {}
    for log in sorted((SHUF / "logs").glob("score-*.log"), key=lambda p: p.stat().st_mtime):
        text = log.read_text()
        m = re.search(r"^end (\S+) rc=(\d+) wall_s=(\d+)", text, re.M)
        st = re.search(r"^start (\S+)", text, re.M)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        note = re.search(r"^note: (.*)", text, re.M)
        if m:
            out[log.stem.removeprefix("score-")] = {"start": st.group(1) if st else None, "end": m.group(1),
                                                    "rc": int(m.group(2)), "wall_s": int(m.group(3)),
                                                    "max_rss_mb": round(int(rss.group(1)) / 1024) if rss else None,
                                                    "note": note.group(1) if note else None}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render(doc: dict[str, Any]) -> str:
    out = ["# BIG-bench, options shuffled, beside the file-order table", "",
           f"Made by `{doc['command']}` (its docstring defines every figure; the JSON beside this file "
           "holds them all). Inputs: " + ", ".join(f"`{x}`" for x in doc["inputs"]) + ".", "",
           f"Shuffled: `{doc['shuffle_command']}`; {doc['paired']['n']} questions (the file-order table's), "
           f"of which {doc['paired']['questions_with_unchanged_order']} keep their file order by chance "
           "(mostly 2-option questions).", ""]
    for order in ("shuffled", "file_order"):
        b = doc[order]
        out += [f"## {'Options shuffled (seed 0)' if order == 'shuffled' else 'File order (the committed table)'}", ""]
        for scope in ("test", "all"):
            out += accuracy_table(scope, b[scope], "vs always-A (McNemar: only here / only A)")
    p = doc["paired"]
    out += ["## Paired: file order against shuffled, the same questions", "",
            "McNemar: exact two-sided; *only file* / *only shuffled* = questions right in one order only. "
            "*Same option*: the share of questions where the expert picks the same option text in both orders.", "",
            "*Same option, reordered*: the same share over the questions whose order the shuffle changed.", "",
            "| expert | scope | file right | shuffled right | points | only file / only shuffled, p | same option | same option, reordered |",
            "|---|---|---|---|---|---|---|---|"]
    for scope in ("test", "all"):
        a = p["always_a"][scope]
        out.append(f"| always A | {scope} | {a['file_right']} | {a['shuffled_right']} | "
                   f"{100 * (a['shuffled_right'] - a['file_right']) / (p['n'] if scope == 'all' else doc['shuffled']['test']['n']):+.1f} | "
                   f"{a['mcnemar']['a_only']} / {a['mcnemar']['b_only']}, p={a['mcnemar']['p']:.3f} | | |")
    for e in p["experts"]:
        for kind in ("planned", "raw"):
            for scope in ("test", "all"):
                r = e[f"{kind}_{scope}"]
                out.append(f"| {e['expert']} {'as planned' if kind == 'planned' else 'raw'} | {scope} | "
                           f"{r['file_right']}/{r['n']} ({_pct(r['file_accuracy'])}) | "
                           f"{r['shuffled_right']}/{r['n']} ({_pct(r['shuffled_accuracy'])}) | {r['points']:+.1f} | "
                           f"{r['mcnemar']['a_only']} / {r['mcnemar']['b_only']}, p={r['mcnemar']['p']:.3f} | "
                           f"{_pct(r['same_option_text'])}% | {_pct(r['same_option_text_reordered'])}% |")
    out += ["", "## Between experts, options shuffled (exact McNemar on the same questions)", "",
            "| a | b | as | scope | a right | b right | only a / only b, p |", "|---|---|---|---|---|---|---|"]
    for r in doc["between_experts_shuffled"]:
        m = r["mcnemar"]
        out.append(f"| {r['a']} | {r['b']} | {'planned' if r['kind'] == 'planned' else 'raw'} | {r['scope']} | "
                   f"{r['a_right']}/{r['n']} | {r['b_right']}/{r['n']} | {m['a_only']} / {m['b_only']}, p={m['p']:.3f} |")
    out.append("")
    if doc["wall_times"]:
        out += ["## Scoring runs (shuffled; 1 onnxruntime thread, nice 10, one at a time)", "",
                "| expert | start (UTC) | wall s | peak RSS MB | exit |", "|---|---|---|---|---|"]
        for e, w in doc["wall_times"].items():
            out.append(f"| {e} | {w['start']} | {w['wall_s']} | {w['max_rss_mb']} | {w['rc']}"
                       f"{' (' + w['note'] + ')' if w.get('note') else ''} |")
        out.append("")
    return "\n".join(out)


MARK = "<!-- bigbench shuffled header -->"
ALL_EXPERTS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-int8",
               "qwen2.5-coder-1.5b-instruct-ortgenai", "gemma3-270m"]


def header(report: Path) -> str:
    lat = json.loads((report.parent / "calibration.latency.json").read_text())
    experts = list(lat["experts"])
    missing = [e for e in ALL_EXPERTS if e not in experts]
    return "\n".join([
        MARK,
        "# BIG-bench multiple-choice, options shuffled: MoE² on the same questions, without the letter bias",
        "",
        "The file-order run (`benchmarks/results/bigbench/REPORT.md`) keeps each task's option order, where the",
        "answer is A in 44.7% of its 150 questions. Here the same 150 questions (the first 150 listed: the ones",
        "every expert finished there) have each question's options permuted with a fixed seed; ids, questions,",
        "categories and the train/validation/test split are unchanged. The body below is",
        "`benchmarks/reproduce_moe2.py` with the file-order report's settings. Commands",
        "(`benchmarks/bigbench/run.sh`):",
        "",
        "```",
        "bash benchmarks/bigbench/run.sh dataset-shuffled      # -> bigbench_mc_shuffled.jsonl (seed 0)",
        "bash benchmarks/bigbench/run.sh score-shuffled EXPERT # once per expert, one at a time, LIMIT=150",
        "bash benchmarks/bigbench/run.sh table-shuffled EXPERT...  # calibration.npz over the experts scored",
        "bash benchmarks/bigbench/run.sh report-shuffled       # profiles.cpu.json + this file",
        "bash benchmarks/bigbench/run.sh compare-shuffled      # compare.md: baselines, file order vs shuffled",
        "```",
        "",
        f"- questions in the table: {lat['n_samples']} of {lat['n_listed']} listed (3 per task, all 49 tasks)",
        f"- experts: {', '.join(f'`{e}`' for e in experts)}"
        + (f". **Not scored: {', '.join(f'`{e}`' for e in missing)}** (see docs/results.md)" if missing else ""),
        "- latency: one scorer at a time (1 onnxruntime thread, nice 10) on the 2-core machine, shared with",
        "  other work: less contended than the file-order run, so its ms and J are not comparable with that",
        "  report's; only their order is meaningful. No generation was timed: profiles are scoring-only.",
        "- the paired comparison with the file-order table and the baselines that need no model:",
        "  [`compare.md`](compare.md).",
        "",
        "",
    ])


def put_header(report: Path) -> None:
    body = report.read_text()
    if body.startswith(MARK):
        body = body.split("\n" + "<!-- end -->\n", 1)[-1]
    report.write_text(header(report) + "<!-- end -->\n" + body)


def main() -> None:
    from edge_moe.atomic import write_text

    if len(sys.argv) == 3 and sys.argv[1] == "header":
        put_header(Path(sys.argv[2]))
        return

    f, s = load(FILE), load(SHUF)
    doc = {"format": "edge-moe-bigbench-shuffled/1", "command": COMMAND,
           "shuffle_command": ".venv/bin/python benchmarks/resplit_spread.py shuffle-bigbench "
                              "--out benchmarks/results/bigbench_shuffled/bigbench_mc_shuffled.jsonl --seed 0",
           "inputs": [_rel(FILE / "calibration.npz"), _rel(FILE / "results.json"),
                      _rel(SHUF / "calibration.npz"), _rel(SHUF / "results.json")],
           "shuffled": order_block(s), "file_order": order_block(f), "paired": paired(f, s),
           "between_experts_shuffled": between_experts(s),
           "wall_times": wall_times()}
    write_text(SHUF / "compare.json", json.dumps(doc, indent=1, allow_nan=False) + "\n")
    md = render(doc)
    write_text(SHUF / "compare.md", md)
    print(md)


if __name__ == "__main__":
    main()
