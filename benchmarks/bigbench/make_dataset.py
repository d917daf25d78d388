"""Apply benchmarks/bigbench/RULE.md to the bigbench==1.0.0 sdist: write the calibrate JSONL
and a summary of every task (examples, kept examples, kept, family, keywords).

    .venv/bin/python benchmarks/bigbench/make_dataset.py            # the rule's defaults
    -> benchmarks/bigbench/bigbench_mc.jsonl, benchmarks/bigbench/tasks.json

Fetch the sdist first (it is read with tarfile, never installed):
    pip download bigbench==1.0.0 --no-deps --no-binary :all: -d $EDGE_MOE_CACHE/assets/bigbench
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge_moe.atomic import write_text  # noqa: E402
from exporters.bigbench import Rule, cap_rows, default_sdist, select_rows, write_jsonl  # noqa: E402


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    d = Rule()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, default=None, help="bigbench-1.0.0.tar.gz (default: under the cache)")
    ap.add_argument("--out", type=Path, default=HERE / "bigbench_mc.jsonl")
    ap.add_argument("--summary", type=Path, default=HERE / "tasks.json")
    ap.add_argument("--cap", type=int, default=10, help="examples per task (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-examples", type=int, default=d.min_examples)
    ap.add_argument("--max-options", type=int, default=d.max_options)
    args = ap.parse_args(argv)
    sdist = args.sdist or default_sdist()
    rule = Rule(min_examples=args.min_examples, max_options=args.max_options)
    rows, summary = select_rows(sdist, rule)
    chosen = cap_rows(rows, args.cap, args.seed)
    write_jsonl(chosen, args.out)
    doc = {"sdist": {"name": sdist.name, "sha256": sha256(sdist), "bytes": sdist.stat().st_size},
           "rule": {**rule.__dict__, "cap": args.cap, "seed": args.seed},
           "kept_tasks": sum(v["kept"] for v in summary.values()), "questions": len(chosen),
           "per_family": dict(sorted(collections.Counter(r["category"] for r in chosen).items())),
           "tasks": summary}
    write_text(args.summary, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(chosen)} questions from {doc['kept_tasks']} tasks; {doc['per_family']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
