"""The artifact manifest: the record every exported model carries (docs/style.md).

An artifact is a folder::

    <artifact>/manifest.json    this record (the JSON sidecar)
    <artifact>/model.onnx       the graph; its metadata_props hold the same record under
                                 ``edge_moe.manifest``
    <artifact>/tokenizer.json   a `tokenizers` tokenizer

Exporters write it, runners rebuild from it. This module is torch-free so that nodes can
import it; exporters import it too, so the schema lives in one place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_moe.atomic import write_text
from edge_moe.config import PRECISIONS
from edge_moe.errors import ArtifactError

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
METADATA_KEY = "edge_moe.manifest"
KINDS = ("decoder", "encoder")

_DECODER_KEYS = ("num_layers", "num_kv_heads", "head_dim", "vocab_size", "max_context", "kv_dtype")
_ENCODER_KEYS = ("embedding_dim", "max_length", "pooling", "normalized")


@dataclass(frozen=True)
class Manifest:
    """What an artifact is and how to run it.

    Attributes:
        manifest_version: :data:`MANIFEST_VERSION` at export time; runners refuse others.
        kind: ``decoder`` (causal LM with KV cache) or ``encoder`` (sentence embeddings).
        name: the expert or asset name.
        architecture: the transformers class, e.g. ``LlamaForCausalLM``.
        model_type: the transformers model type, e.g. ``llama``.
        parameter_count: parameters of the torch model (tied weights counted once).
        precision: one of :data:`edge_moe.config.PRECISIONS`.
        opset: the ONNX default-domain opset.
        model_file: the ONNX (or engine) file name inside the artifact folder.
        model_sha256: hex sha256 of ``model_file``.
        source: ``{"path", "format", "sha256"}`` of the checkpoint it came from.
        inputs / outputs: graph I/O names in order.
        tokenizer_file: the tokenizer.json file name.
        special_tokens: ``bos_token_id``, ``eos_token_ids`` (list), ``pad_token_id``.
        chat_template: the raw Jinja template, or None for base models.
        chat_prefix / chat_suffix: the template rendered around one user message with the
            generation prompt, so runners format single-turn chats without Jinja.
        decoder: ``num_layers``, ``num_kv_heads``, ``head_dim``, ``vocab_size``,
            ``max_context``, ``kv_dtype`` (decoders only).
        encoder: ``embedding_dim``, ``max_length``, ``pooling``, ``normalized`` (encoders).
        extra: exporter versions, timings, parity and quantisation reports.
    """

    manifest_version: int
    kind: str
    name: str
    architecture: str
    model_type: str
    parameter_count: int
    precision: str
    opset: int
    model_file: str
    model_sha256: str
    source: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    tokenizer_file: str
    special_tokens: dict[str, Any]
    chat_template: str | None = None
    chat_prefix: str | None = None
    chat_suffix: str | None = None
    decoder: dict[str, Any] | None = None
    encoder: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def eos_token_ids(self) -> list[int]:
        return [int(t) for t in self.special_tokens.get("eos_token_ids") or []]


def manifest_from_dict(data: Any, where: str) -> Manifest:
    """Validate a parsed manifest.

    Raises:
        ArtifactError: not a mapping, wrong version, unknown kind or precision, missing
            or unknown keys; the message names ``where`` and the field.
    """
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: manifest is a {type(data).__name__}, expected a JSON object")
    version = data.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise ArtifactError(
            f"{where}: manifest_version={version!r}, this runtime reads version {MANIFEST_VERSION}; "
            "re-export the artifact with this version of edge-moe"
        )
    known = set(Manifest.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ArtifactError(f"{where}: unknown manifest keys {unknown}")
    required = [
        n
        for n, f in Manifest.__dataclass_fields__.items()
        if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise ArtifactError(f"{where}: manifest lacks required keys {missing}")
    if data["kind"] not in KINDS:
        raise ArtifactError(f"{where}: kind={data['kind']!r} is not one of {list(KINDS)}")
    if data["precision"] not in PRECISIONS:
        raise ArtifactError(
            f"{where}: precision={data['precision']!r} is not one of {list(PRECISIONS)}"
        )
    sub_keys = _DECODER_KEYS if data["kind"] == "decoder" else _ENCODER_KEYS
    sub = data.get(data["kind"])
    if not isinstance(sub, dict) or any(k not in sub for k in sub_keys):
        have = sorted(sub) if isinstance(sub, dict) else sub
        raise ArtifactError(
            f"{where}: {data['kind']} section must have {list(sub_keys)}, got {have}"
        )
    return Manifest(**data)


def load_manifest(artifact_dir: str | Path) -> Manifest:
    """Read and validate ``<artifact_dir>/manifest.json``; check its files exist.

    Raises:
        ArtifactError: the folder, manifest, model or tokenizer file is missing, the JSON
            is malformed, or the manifest breaks a rule of :func:`manifest_from_dict`.
    """
    d = Path(artifact_dir)
    if not d.is_dir():
        raise ArtifactError(f"artifact folder {d} does not exist")
    path = d / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{d} is not an artifact: {MANIFEST_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    m = manifest_from_dict(data, str(path))
    for what, fname in (("model_file", m.model_file), ("tokenizer_file", m.tokenizer_file)):
        if not (d / fname).is_file():
            raise ArtifactError(f"{path}: {what}={fname!r} is missing from {d}")
    return m


def write_manifest(artifact_dir: str | Path, manifest: Manifest) -> Path:
    """Write the JSON sidecar (atomically) and return its path."""
    return write_text(Path(artifact_dir) / MANIFEST_FILE, manifest.to_json())
