"""edge_moe.atomic: a reader sees the old content or the new, never a part, and no temp is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_moe.atomic import atomic_dir, atomic_path, write_text


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_path_replaces_only_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    write_text(target, "old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not replaced while the writer works
        assert tmp.parent == target.parent  # same folder: the rename is atomic
    assert target.read_text() == "new"
    assert _leftovers(target.parent, {"f.json"}) == []


def test_atomic_path_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, {"f.txt"}) == []


def test_atomic_dir_swaps_a_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "a.bin").write_text("a")
        (tmp / "b.bin").write_text("b")
        assert sorted(p.name for p in target.iterdir()) == ["old.bin"]  # untouched meanwhile
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin"]
    assert _leftovers(tmp_path, {"ckpt"}) == []


def test_atomic_dir_leaves_the_old_folder_and_no_temp_on_error(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(ValueError, match="bad tensor"), atomic_dir(target) as tmp:
        (tmp / "a.bin").write_text("partial")
        raise ValueError("bad tensor")
    assert sorted(p.name for p in target.iterdir()) == ["old.bin"]
    assert _leftovers(tmp_path, {"ckpt"}) == []


def test_atomic_dir_creates_a_new_folder(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "new"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("x")
    assert (target / "x").read_text() == "x"
    assert _leftovers(target.parent, {"new"}) == []
