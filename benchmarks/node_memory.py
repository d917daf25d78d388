"""Node memory benchmark (not a test): resident memory of one expert runner per artifact kind.

For each SmolLM2 artifact (fp32 / int8 / int4 under ``$EDGE_MOE_CACHE/artifacts``) it starts a
fresh process that imports the runtime, loads an :class:`edge_moe.runtime.runners.OrtRunner`,
scores one 4-option question and generates 8 tokens, and reports RSS (``/proc/self/status``
VmRSS) after each step, next to the artifact's bytes on disk; once with onnxruntime's
defaults and once with its CPU memory arena off (``enable_cpu_mem_arena = False``), to see
how much of a node's memory is the arena rather than the weights, and once with weight
prepacking off (``session.disable_prepacking``: MLAS keeps a second, packed copy of MatMul
weights). Part of issue 12 ("node
RSS per expert"); it changes nothing in the runtime.

Run: ``.venv/bin/python benchmarks/node_memory.py`` (about a minute); writes
``benchmarks/results/node_memory.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = r"""
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
out = {}
import onnxruntime as ort, numpy
sys.path.insert(0, sys.argv[3])
if sys.argv[2] != "default":
    base = ort.SessionOptions
    mode = sys.argv[2]
    class Opts(base):
        def __init__(self):
            super().__init__()
            if mode == "no-arena":
                self.enable_cpu_mem_arena = False
            if mode == "no-prepack":
                self.add_session_config_entry("session.disable_prepacking", "1")
    ort.SessionOptions = Opts
from edge_moe.runtime.runners import OrtRunner
out["after_import_mb"] = rss()
r = OrtRunner(sys.argv[1], intra_op_threads=1)
out["after_load_mb"] = rss()
r.score_options("Which planet is largest? Answer:", ["Mars", "Jupiter", "Venus", "Earth"])
out["after_score_mb"] = rss()
r.generate("Name a colour.", 8)
out["after_generate_mb"] = rss()
print(json.dumps(out))
"""


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from edge_moe.paths import artifacts_dir

    rows = []
    for precision in ("fp32", "int8", "int4"):
        d = artifacts_dir() / "smollm2-135m-instruct" / precision
        if not d.is_dir():
            print(f"skip {precision}: no artifact at {d} (run `make demo` once)")
            continue
        disk_mb = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
        for mode in ("default", "no-arena", "no-prepack"):
            res = subprocess.run([sys.executable, "-c", PROBE, str(d), mode, str(ROOT)],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                print(f"{precision} {mode}: failed: {res.stderr[-500:]}")
                continue
            m = json.loads(res.stdout.strip().splitlines()[-1])
            row = {"precision": precision, "mode": mode, "artifact_mb": round(disk_mb, 1),
                   **{k: round(v, 1) for k, v in m.items()}}
            row["rss_over_artifact"] = round(m["after_generate_mb"] / disk_mb, 2)
            rows.append(row)
            print(f"{precision:5s} {mode:9s} artifact {disk_mb:6.0f} MB | RSS import "
                  f"{m['after_import_mb']:5.0f}, load {m['after_load_mb']:5.0f}, score "
                  f"{m['after_score_mb']:5.0f}, generate {m['after_generate_mb']:5.0f} MB "
                  f"| RSS / artifact {row['rss_over_artifact']:.2f}")
    out = ROOT / "benchmarks" / "results" / "node_memory.json"
    out.write_text(json.dumps({"rows": rows, "note": "VmRSS of a fresh process, 1 intra-op thread"},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
