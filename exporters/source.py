"""Export sources: an asset name, a GGUF file or an HF folder, resolved to one HF folder.

Every exporter starts from a :class:`Source`: an HF checkpoint folder (config.json +
safetensors) with the path, format and sha256 of what it came from, which the manifest
records and the export caches key on. A GGUF file is converted once to a cached fp32
safetensors folder, ``$EDGE_MOE_CACHE/hf/<stem>-<sha[:12]>``, because dequantising the
GGUF dominates load time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_moe.atomic import atomic_dir
from edge_moe.errors import ArtifactError
from edge_moe.paths import cache_dir
from exporters.assets import REGISTRY, fetch_asset, sha256_file

logger = logging.getLogger(__name__)

_COMPLETE = ".complete"  # written last inside a converted folder


@dataclass(frozen=True)
class Source:
    """A resolved export source: an HF folder plus where it came from."""

    name: str
    hf_dir: Path
    path: Path
    format: str  # "hf_dir" | "gguf"
    sha256: str


def dir_sha256(d: Path) -> str:
    """A digest of a checkpoint folder: the sha256 of its config and weight files."""
    digest = hashlib.sha256()
    files = sorted(
        p for p in d.iterdir() if p.suffix in (".json", ".safetensors", ".bin") and p.is_file()
    )
    for p in files:
        digest.update(p.name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


def gguf_to_hf_dir(gguf: Path, sha256: str | None = None) -> Path:
    """Convert a GGUF file once to a cached fp32 safetensors folder and return it.

    Runs in a subprocess so the dequantisation's memory goes back to the OS before the
    export starts (docs/design.md §6). The folder is filled beside its final place and moved
    in whole (:func:`edge_moe.atomic.atomic_dir`), so a failed conversion leaves nothing.

    Raises:
        ArtifactError: the file is missing or the conversion failed.
    """
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ArtifactError(f"GGUF file {gguf} does not exist")
    sha = sha256 or sha256_file(gguf)
    out = cache_dir() / "hf" / f"{gguf.stem}-{sha[:12]}"
    if (out / _COMPLETE).is_file():
        return out
    t0 = time.perf_counter()
    code = (
        "import sys; from exporters.source import _convert_gguf; "
        "_convert_gguf(sys.argv[1], sys.argv[2])"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with atomic_dir(out) as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(gguf), str(tmp)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise ArtifactError(f"GGUF conversion of {gguf} failed:\n{tail}")
        (tmp / _COMPLETE).write_text(json.dumps({"gguf": str(gguf), "sha256": sha}))
    logger.info("converted %s to %s in %.1f s", gguf, out, time.perf_counter() - t0)
    return out


def _convert_gguf(gguf: str, out: str) -> None:
    """Subprocess body of :func:`gguf_to_hf_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(gguf)
    tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; only the GGUF "quantizer" bookkeeping
    # remains, and it blocks save_pretrained.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def resolve_source(source: str | Path, name: str | None = None) -> Source:
    """Turn an asset name, GGUF file or HF folder into a :class:`Source`.

    Raises:
        ArtifactError: the source is none of these.
    """
    s = str(source)
    if s in REGISTRY:
        spec = REGISTRY[s]
        if spec.kind != "gguf":
            raise ArtifactError(f"asset {s!r} is a {spec.kind}, not a causal LM")
        path = fetch_asset(s)
        sha = spec.main.sha256 or sha256_file(path)
        return Source(name or s, gguf_to_hf_dir(path, sha), path, "gguf", sha)
    p = Path(s).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        sha = sha256_file(p)
        return Source(name or p.stem, gguf_to_hf_dir(p, sha), p, "gguf", sha)
    if p.is_dir() and (p / "config.json").is_file():
        return Source(name or p.name, p, p, "hf_dir", dir_sha256(p))
    raise ArtifactError(
        f"export source {s!r} is not an asset ({sorted(k for k, v in REGISTRY.items() if v.kind == 'gguf')}), "
        "a .gguf file, or a folder with config.json"
    )
