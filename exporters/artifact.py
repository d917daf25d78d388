"""The artifact folder as exporters write it: file names, defaults and the graph's record.

An artifact folder (:mod:`edge_moe.runtime.manifest` describes it) holds
``model.onnx`` (with external data when large), ``tokenizer.json`` and ``manifest.json``.
Every exporter here (:mod:`exporters.llm`, :mod:`exporters.encoder`,
:mod:`exporters.quantize`, :mod:`exporters.ortgenai`) names those files, picks the
default folder and embeds the manifest in the graph through this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_moe.atomic import atomic_path
from edge_moe.paths import artifacts_dir
from edge_moe.runtime.manifest import METADATA_KEY

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MODEL_FILE = "model.onnx"
# What the exporters can build: fp32, and its int8 / int4 variants (torch builder:
# exporters.quantize; ortgenai builder: its own). The runtime reads more
# (edge_moe.config.PRECISIONS).
EXPORT_PRECISIONS = ("fp32", "int8", "int4")


def default_artifact_dir(name: str, precision: str) -> Path:
    """``$EDGE_MOE_CACHE/artifacts/<name>/<precision>``."""
    return artifacts_dir() / name / precision


def opset_of(program: Any) -> int:
    """The default-domain opset of a ``torch.onnx`` program."""
    return int(program.model.opset_imports.get("", DEFAULT_OPSET))


def save_program(program: Any, path: Path, manifest_json: str, external: bool) -> None:
    """Save a ``torch.onnx`` program with the manifest as its metadata.

    Written in place: the manifest sidecar, written last, is what makes a folder an
    artifact. The embedded copy cannot hold the file's own hash; the sidecar does.
    """
    program.model.metadata_props[METADATA_KEY] = manifest_json
    program.save(str(path), external_data=external)


def set_manifest_metadata(path: Path, manifest_json: str) -> None:
    """Make the manifest the graph's only metadata_props entry; external weights are
    neither read nor rewritten, and the graph file is replaced atomically."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=manifest_json)
    # The temp file sits beside the graph, so its relative external-data paths still hold.
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
