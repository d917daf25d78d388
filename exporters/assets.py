"""Offline model and data assets shipped inside PyPI packages (docs/design.md §5).

Each asset is one or more output files. An output file is the in-order concatenation of
*parts*, each part a file inside an installed distribution (located through the
distribution's RECORD, never by importing the package: some of them import pandas or
langchain, or try to download things). ``fetch_asset`` assembles the files into the
cache, hashing while it writes:

    $EDGE_MOE_CACHE/assets/<name>/<file>     (EDGE_MOE_CACHE defaults to ~/.cache/edge-moe)
    $EDGE_MOE_CACHE/assets/<name>/asset.json  sha256 and size of every file, the packages

Writes go to a temp file in the same folder and are renamed into place only after the
hash matched, so a bad hash, a full disk or a crash leaves no partial file behind.
Missing packages are installed with ``pip install --no-deps`` when asked to; never with
their dependencies, which pull llama-cpp builds, sentence-transformers or pandas pins.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from edge_moe.atomic import atomic_path, write_text
from edge_moe.errors import ArtifactError
from edge_moe.paths import cache_dir
from exporters.asset_registry import REGISTRY, AssetSpec, OutputFile, Part, get_spec

logger = logging.getLogger(__name__)

__all__ = ["REGISTRY", "AssetSpec", "AssetStatus", "OutputFile", "Part", "fetch_asset", "get_spec",
           "known_sha256", "list_assets", "mmlu_rows", "pip_install_no_deps", "sha256_file"]

_CHUNK_BYTES = 1 << 20
_SPACE_MARGIN = 1.05  # free space needed, as a multiple of the bytes to write


@dataclass(frozen=True)
class AssetStatus:
    """What ``edge-moe assets list`` shows for one asset.

    ``state`` is ``cached`` (assembled and hashed in the cache), ``installed`` (its
    packages are installed, not yet assembled) or ``missing``.
    """

    name: str
    kind: str
    state: str
    path: Path | None
    size_bytes: int | None
    sha256: str | None
    description: str
    missing_packages: tuple[str, ...] = field(default_factory=tuple)


def asset_dir(name: str) -> Path:
    return cache_dir() / "assets" / name


def _requirement_dist(req: str) -> str:
    return req.split("==")[0].strip()


def locate_part(part: Part) -> Path | None:
    """The installed file of ``part``, or None when its distribution or file is missing.

    Uses the distribution's file list so data-only packages (no ``__init__``) and
    packages with heavy imports are found without importing them.
    """
    try:
        dist = md.distribution(part.dist)
    except md.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.as_posix() == part.path:
            p = Path(str(dist.locate_file(f)))
            return p if p.is_file() else None
    return None


def _missing_packages(spec: AssetSpec) -> tuple[str, ...]:
    missing = []
    for req in spec.requirements:
        try:
            md.distribution(_requirement_dist(req))
        except md.PackageNotFoundError:
            missing.append(req)
    return tuple(missing)


def _read_record(name: str) -> dict | None:
    rec = asset_dir(name) / "asset.json"
    if not rec.is_file():
        return None
    try:
        data = json.loads(rec.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _cached_path(spec: AssetSpec) -> Path | None:
    """The cached main file when the record and every file are present with their sizes."""
    record = _read_record(spec.name)
    if record is None:
        return None
    d = asset_dir(spec.name)
    files = record.get("files", {})
    for f in spec.files:
        entry = files.get(f.name)
        p = d / f.name
        if entry is None or not p.is_file() or p.stat().st_size != entry.get("size_bytes"):
            return None
        if f.sha256 is not None and entry.get("sha256") != f.sha256:
            return None
    return d / spec.main.name if spec.kind != "hf_dir" else d


def list_assets() -> list[AssetStatus]:
    """The state of every registered asset, in registry order. Reads no large file."""
    out = []
    for spec in REGISTRY.values():
        cached = _cached_path(spec)
        missing = _missing_packages(spec)
        if cached is not None:
            record = _read_record(spec.name) or {}
            files = record.get("files", {})
            size = sum(int(v.get("size_bytes", 0)) for v in files.values())
            sha = files.get(spec.main.name, {}).get("sha256")
            out.append(
                AssetStatus(
                    spec.name, spec.kind, "cached", cached, size, sha, spec.description, missing
                )
            )
        else:
            state = "missing" if missing else "installed"
            out.append(
                AssetStatus(
                    spec.name,
                    spec.kind,
                    state,
                    None,
                    spec.size_bytes,
                    spec.main.sha256,
                    spec.description,
                    missing,
                )
            )
    return out


def pip_install_no_deps(requirements: tuple[str, ...] | list[str]) -> None:
    """``pip install --no-deps`` into the running interpreter's environment.

    Raises:
        ArtifactError: pip failed; the message carries the command and pip's last lines.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *requirements]
    logger.info("installing %s", " ".join(requirements))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ArtifactError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    importlib.invalidate_caches()


def _check_space(folder: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need_bytes * _SPACE_MARGIN:
        raise ArtifactError(
            f"not enough disk space in {folder}: need {need_bytes / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB free (set EDGE_MOE_CACHE to a larger disk)"
        )


def _write_block(dst: BinaryIO, block: bytes) -> None:
    # One place for writes, so that tests can make the disk "full".
    dst.write(block)


def _assemble(out: OutputFile, sources: list[Path], folder: Path) -> tuple[Path, str, int]:
    """Concatenate ``sources`` into ``folder/out.name``, hashing as it writes.

    Returns:
        (path, sha256 hex, size in bytes).

    Raises:
        ArtifactError: bad hash, full disk or another OS error; no partial file remains.
    """
    final = folder / out.name
    digest = hashlib.sha256()
    size = 0
    try:
        # The hash is checked before atomic_path renames; raising leaves no file behind.
        with atomic_path(final) as tmp, tmp.open("wb") as dst:
            for src in sources:
                with src.open("rb") as fh:
                    while block := fh.read(_CHUNK_BYTES):
                        _write_block(dst, block)
                        digest.update(block)
                        size += len(block)
            dst.flush()
            os.fsync(dst.fileno())
            sha = digest.hexdigest()
            if out.sha256 is not None and sha != out.sha256:
                raise ArtifactError(
                    f"sha256 mismatch for {out.name} assembled from {len(sources)} part(s) "
                    f"({', '.join(str(s) for s in sources[:3])}{', ...' if len(sources) > 3 else ''}): "
                    f"got {sha}, expected {out.sha256}"
                )
        return final, sha, size
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArtifactError(f"disk full while writing {final}; nothing was kept") from exc
        raise ArtifactError(f"could not write {final}: {exc}") from exc


def fetch_asset(name: str, *, install: bool = True, force: bool = False) -> Path:
    """Assemble asset ``name`` in the cache and return its path.

    For ``gguf`` and ``jsonl`` assets the path is the file; for ``hf_dir`` it is the
    folder. Cached files whose record matches are reused unless ``force``.

    Args:
        name: a key of :data:`REGISTRY`.
        install: pip-install missing packages with ``--no-deps`` (else raise).
        force: reassemble even if cached.

    Raises:
        ArtifactError: unknown name, missing package (install=False or pip failed), a part
            missing from an installed package, a bad hash, or a full disk.
    """
    spec = get_spec(name)
    if not force and (cached := _cached_path(spec)) is not None:
        return cached
    missing = _missing_packages(spec)
    if missing:
        if not install:
            raise ArtifactError(
                f"asset {name!r} needs packages that are not installed: {list(missing)}; "
                f"run `pip install --no-deps {' '.join(missing)}`"
            )
        pip_install_no_deps(missing)
    folder = asset_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    sources_by_file: list[list[Path]] = []
    for out in spec.files:
        sources = []
        for part in out.parts:
            p = locate_part(part)
            if p is None:
                raise ArtifactError(
                    f"asset {name!r}: file {part.path!r} not found in installed package {part.dist!r} "
                    f"(reinstall it: `pip install --no-deps --force-reinstall {part.dist}`)"
                )
            sources.append(p)
        sources_by_file.append(sources)
    _check_space(folder, sum(p.stat().st_size for ps in sources_by_file for p in ps))
    record: dict = {
        "name": name,
        "kind": spec.kind,
        "requirements": list(spec.requirements),
        "files": {},
    }
    for out, sources in zip(spec.files, sources_by_file, strict=True):
        path, sha, size = _assemble(out, sources, folder)
        record["files"][out.name] = {"sha256": sha, "size_bytes": size, "parts": len(sources)}
        logger.info("asset %s: %s %d bytes sha256 %s", name, path, size, sha)
    write_text(folder / "asset.json", json.dumps(record, indent=2, sort_keys=True))
    result = _cached_path(spec)
    assert result is not None
    return result


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def known_sha256(path: Path) -> str:
    """The sha256 of ``path``: the asset record's when it is a cached asset's file (hashing a
    1 GB GGUF on every call would cost seconds), else the file's own."""
    for a in list_assets():
        if a.sha256 and a.path is not None and Path(a.path).resolve() == Path(path).resolve():
            return str(a.sha256)
    return sha256_file(path)


def mmlu_rows(path: Path | None = None) -> list[dict]:
    """MMLU rows from the ``mmlu`` asset, junk rows (``correct_answer == 'answer'``) dropped."""
    p = path or fetch_asset("mmlu")
    rows = []
    with Path(p).open() as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if row.get("correct_answer") != "answer":
                    rows.append(row)
    return rows
