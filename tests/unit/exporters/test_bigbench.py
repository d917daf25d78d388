"""exporters.bigbench on a tiny synthetic sdist: which examples and tasks the rule keeps,
subtask pooling, families, the seeded cap, and the failure modes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from edge_moe.errors import DataFormatError
from exporters import bigbench as bb
from exporters.bigbench import Rule

ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _ex(inp: str, scores: dict) -> dict:
    return {"input": inp, "target_scores": scores}


def _sdist(tmp_path: Path, tasks: dict[str, object]) -> Path:
    p = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        for rel, doc in {**tasks, "README.md": "not a task"}.items():
            data = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
            info = tarfile.TarInfo(ROOT + rel if rel != "README.md" else "bigbench-1.0.0/README.md")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return p


def _tasks() -> dict[str, object]:
    good = [_ex(f"{i} + 1 = ?", {str(i + 1): 1, str(i): 0, str(i + 2): 0}) for i in range(3)]
    bad = [
        _ex("two right answers", {"a": 1, "b": 1}),
        _ex("nine options", {str(i): int(i == 0) for i in range(9)}),
        _ex("no positive score", {"a": 0, "b": 0}),
        _ex("duplicate options", {"x": 1, " x": 0}),
        _ex("q" * 2000, {"a": 1, "b": 0}),
        {"input": "no scores", "target": "a"},
    ]
    return {
        "adder/task.json": {"keywords": ["arithmetic", "zero-shot"], "task_prefix": "Add.  ",
                            "examples": good + bad},
        # a task with subtasks: the parent holds keywords only, the examples are pooled
        "multi/task.json": {"keywords": ["common sense"], "subtasks": ["a", "b"]},
        "multi/a/task.json": {"keywords": ["mathematics"],
                              "examples": [_ex("sky?", {"blue": 0.0, "green": 0.0, "red": 0.0, "grey": 1.0})]},
        "multi/b/task.json": {"examples": [_ex("grass?", {"green": 1, "blue": 0})]},
        # too few kept examples
        "tiny/task.json": {"keywords": ["logical reasoning"], "examples": [_ex("p?", {"yes": 1, "no": 0})]},
        # no known keyword: family "other"
        "misc/task.json": {"keywords": ["zero-shot"],
                           "examples": [_ex(f"m{i}", {"a": 1, "b": 0}) for i in range(2)]},
        # generative task: no target_scores anywhere
        "gen/task.json": {"keywords": ["arithmetic"],
                          "examples": [{"input": "x", "target": "y"}] * 5},
    }


def test_rule_keeps_single_answer_examples_and_pools_subtasks(tmp_path):
    rows, summary = bb.select_rows(_sdist(tmp_path, _tasks()), Rule(min_examples=2))
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["topic"], []).append(r)
    assert sorted(by_task) == ["adder", "misc", "multi"]
    adder = by_task["adder"]
    assert len(adder) == 3  # every bad example dropped
    assert adder[0]["question"] == "Add.\n0 + 1 = ?"
    assert adder[0]["options"] == ["1", "0", "2"] and adder[0]["label"] == 0
    assert adder[0]["category"] == "math" and adder[0]["id"] == "bigbench:adder:0"
    multi = by_task["multi"]
    assert [r["id"] for r in multi] == ["bigbench:multi/a:0", "bigbench:multi/b:0"]
    assert multi[0]["label"] == 3  # the top score is the 4th option
    assert {r["category"] for r in multi} == {"commonsense"}  # the parent's keywords win
    assert {r["category"] for r in by_task["misc"]} == {"other"}
    assert summary["tiny"] == {"examples": 1, "kept_examples": 1, "kept": False,
                               "family": "logic", "keywords": ["logical reasoning"]}
    assert summary["adder"]["examples"] == 9 and summary["adder"]["kept_examples"] == 3
    assert summary["gen"]["kept_examples"] == 0 and not summary["gen"]["kept"]


def test_option_and_length_bounds(tmp_path):
    rows, _ = bb.select_rows(_sdist(tmp_path, _tasks()), Rule(min_examples=1, max_options=3))
    assert "multi/a" not in {r["id"].split(":")[1] for r in rows}  # 4 options > 3
    rows, _ = bb.select_rows(_sdist(tmp_path, _tasks()), Rule(min_examples=1, max_question_chars=5000))
    assert any(r["question"].endswith("q" * 2000) for r in rows)


def test_cap_is_seeded_and_bounded(tmp_path):
    rows, _ = bb.select_rows(_sdist(tmp_path, _tasks()), Rule(min_examples=2))
    a, b = bb.cap_rows(rows, 2, seed=0), bb.cap_rows(rows, 2, seed=0)
    assert a == b
    counts = {t: sum(r["topic"] == t for r in a) for t in ("adder", "misc", "multi")}
    assert counts == {"adder": 2, "misc": 2, "multi": 2}
    assert any(bb.cap_rows(rows, 2, seed=s) != a for s in range(1, 20))


def test_rows_are_a_calibrate_dataset(tmp_path):
    from edge_moe.jobs.samples import read_jsonl_dataset

    rows, _ = bb.select_rows(_sdist(tmp_path, _tasks()), Rule(min_examples=2))
    samples = read_jsonl_dataset(bb.write_jsonl(rows, tmp_path / "mc.jsonl"))
    assert [s.id for s in samples] == [r["id"] for r in rows]
    assert samples[0].prompt.endswith("A. 1\nB. 0\nC. 2\nAnswer:")
    assert samples[0].topic == "adder" and samples[0].category == "math"


def test_missing_and_malformed_sdist(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        list(bb.iter_tasks(tmp_path / "nope.tar.gz"))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(DataFormatError, match="not a tarball"):
        list(bb.iter_tasks(junk))
    with pytest.raises(DataFormatError, match="broken/task.json"):
        list(bb.iter_tasks(_sdist(tmp_path, {"broken/task.json": "{oops"})))


def test_task_name():
    assert bb.task_name(ROOT + "a/b/task.json") == "a/b"
    assert bb.task_name(ROOT + "a/task.py") is None
    assert bb.task_name("elsewhere/task.json") is None
