"""Apply benchmarks/bigbench/RULE.md to the bigbench==1.0.0 sdist: write the calibrate JSONL
and a summary of every task (examples, kept examples, kept, family, keywords).

    .venv/bin/python benchmarks/bigbench/make_dataset.py            # the rule's defaults
    -> benchmarks/bigbench/bigbench_mc.jsonl, benchmarks/bigbench/tasks.json

Fetch the sdist first (it is read with tarfile, never installed):
    pip download bigbench==1.0.0 --no-deps --no-binary :all: -d $EDGE_MOE_CACHE/assets/bigbench
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
_RULE = Rule()


@app.command(help=__doc__.splitlines()[0])
def make_dataset(
    sdist: Annotated[Path | None, typer.Option(help="bigbench-1.0.0.tar.gz (default: under the cache)")] = None,
    out: Path = HERE / "bigbench_mc.jsonl",
    summary_path: Annotated[Path, typer.Option("--summary")] = HERE / "tasks.json",
    cap: Annotated[int, typer.Option(help="examples per task (default 10)", show_default=False)] = 10,
    seed: int = 0,
    min_examples: int = _RULE.min_examples,
    max_options: int = _RULE.max_options,
) -> int:
    sdist = sdist or default_sdist()
    rule = Rule(min_examples=min_examples, max_options=max_options)
    rows, summary = select_rows(sdist, rule)
    chosen = cap_rows(rows, cap, seed)
    write_jsonl(chosen, out)
    doc = {"sdist": {"name": sdist.name, "sha256": sha256(sdist), "bytes": sdist.stat().st_size},
           "rule": {**rule.__dict__, "cap": cap, "seed": seed},
           "kept_tasks": sum(v["kept"] for v in summary.values()), "questions": len(chosen),
           "per_family": dict(sorted(collections.Counter(r["category"] for r in chosen).items())),
           "tasks": summary}
    write_text(summary_path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{out}: {len(chosen)} questions from {doc['kept_tasks']} tasks; {doc['per_family']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        app(args=argv, prog_name="make_dataset.py")
    except SystemExit as exc:  # Typer's standalone mode always exits: 0, or 2 on a usage error
        return int(exc.code or 0)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
