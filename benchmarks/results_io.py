"""Writing a benchmark's results: ``OUT.json`` (the whole result) and ``OUT.md`` (its table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, result: dict[str, Any], markdown: str) -> None:
    """Write ``result`` to ``OUT.json`` and ``markdown`` to ``OUT.md`` (folders made), and
    print the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown)
    print(markdown)
