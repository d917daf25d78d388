"""The fp32 decoder export: a causal LM to an ONNX artifact with KV cache, checked for parity.

:func:`export_decoder` is the workflow; each step lives in its own module:

1. :mod:`exporters.source` resolves the source (asset name, GGUF file or HF folder) to
   an HF folder and its hash, which keys the cache of exports.
2. :mod:`exporters.tokenizer` writes ``tokenizer.json``, checked against transformers.
3. :mod:`exporters.decoder_graph` exports the KV-cache graph (its I/O contract is there).
4. The graph is saved with the manifest embedded (:mod:`exporters.artifact`), and
   :mod:`exporters.tied_weights` stores a tied output layer pre-transposed.
5. The manifest sidecar is written, then :func:`exporters.parity.check_decoder_parity`
   runs against the torch model and its report joins the manifest.

Transformers is needed here only, never on the serving path.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError
from edge_moe.runtime.manifest import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    Manifest,
    manifest_from_dict,
    write_manifest,
)
from exporters.artifact import (
    DEFAULT_OPSET,
    MODEL_FILE,
    default_artifact_dir,
    opset_of,
    save_program,
)
from exporters.assets import sha256_file
from exporters.decoder_graph import export_onnx, load_causal_lm, text_config
from exporters.source import Source, resolve_source
from exporters.tied_weights import pretranspose_tied_weights
from exporters.tokenizer import (
    TOKENIZER_FILE,
    chat_parts,
    load_tokenizer,
    save_tokenizer,
    special_tokens,
)

# Names other code imports from here; they are defined in the step modules above.
__all__ = [
    "EXPORTER_VERSION",
    "decoder_manifest_fields",
    "export_decoder",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_source",
]

logger = logging.getLogger(__name__)

EXPORTER_VERSION = 2  # bump when the graph contract changes; invalidates cached exports


def decoder_manifest_fields(
    src: Source, model: Any, tok: Any, precision: str, opset: int,
    inputs: list[str], outputs: list[str], geom: dict[str, Any],
) -> dict[str, Any]:
    """The manifest fields every decoder exporter fills alike (all but ``extra``); the
    caller sets ``model_sha256`` once the file is final."""
    template, prefix, suffix = chat_parts(tok)
    return {
        "manifest_version": MANIFEST_VERSION,
        "kind": "decoder",
        "name": src.name,
        "architecture": type(model).__name__,
        "model_type": str(text_config(model).model_type),
        "parameter_count": int(sum(p.numel() for p in model.parameters())),
        "precision": precision,
        "opset": opset,
        "model_file": MODEL_FILE,
        "model_sha256": "",
        "source": {"path": str(src.path), "format": src.format, "sha256": src.sha256},
        "inputs": inputs,
        "outputs": outputs,
        "tokenizer_file": TOKENIZER_FILE,
        "special_tokens": special_tokens(tok, model),
        "chat_template": template,
        "chat_prefix": prefix,
        "chat_suffix": suffix,
        "decoder": {**geom, "kv_dtype": "float32"},
    }


def _cached_manifest(out_dir: Path, source_sha: str) -> Manifest | None:
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        m = manifest_from_dict(json.loads(path.read_text()), str(path))
    except (ArtifactError, json.JSONDecodeError):
        return None
    ok = (
        m.source.get("sha256") == source_sha
        and m.extra.get("exporter_version") == EXPORTER_VERSION
        and (out_dir / m.model_file).is_file()
        and (out_dir / m.tokenizer_file).is_file()
    )
    return m if ok else None


def export_decoder(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    parity: bool = True,
    force: bool = False,
) -> Path:
    """Export a causal LM to an fp32 ONNX decoder artifact; return the artifact folder.

    A cached artifact with the same source hash and exporter version is reused unless
    ``force``. With ``parity``, :func:`exporters.parity.check_decoder_parity` runs
    against the torch model and its report is stored in the manifest.

    Args:
        source: asset name, GGUF file, or HF checkpoint folder.
        out_dir: artifact folder (default ``$EDGE_MOE_CACHE/artifacts/<name>/fp32``).
        name: expert name recorded in the manifest (default: from the source).
        opset: ONNX opset.
        parity: run the parity check (raises ParityError on failure).
        force: re-export even if cached.

    Raises:
        ArtifactError: bad source, export failure, tokenizer mismatch.
        ParityError: the artifact disagrees with torch beyond tolerance.
    """
    src = resolve_source(source, name)
    out = Path(out_dir) if out_dir is not None else default_artifact_dir(src.name, "fp32")
    if not force and _cached_manifest(out, src.sha256) is not None:
        logger.info("reusing cached export %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = load_causal_lm(src.hf_dir)
    tok = load_tokenizer(src.hf_dir)
    load_s = time.perf_counter() - t0
    save_tokenizer(tok, out)
    chat_parts(tok)  # a broken chat template fails here, before the slow export
    facts = export_onnx(model, out / MODEL_FILE, opset=opset)
    program = facts.pop("program")
    geom = facts.pop("geometry")
    import torch
    import transformers

    manifest_data: dict[str, Any] = {
        **decoder_manifest_fields(src, model, tok, "fp32", opset_of(program),
                                  facts["inputs"], facts["outputs"], geom),
        "extra": {
            "exporter_version": EXPORTER_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "load_s": round(load_s, 2),
            "export_s": facts["export_s"],
            "external_data": facts["external_data"],
        },
    }
    save_program(
        program,
        out / MODEL_FILE,
        json.dumps(manifest_data, sort_keys=True),
        facts["external_data"],
    )
    del program
    gc.collect()
    manifest_data["extra"]["pretransposed_weights"] = pretranspose_tied_weights(
        out / MODEL_FILE, facts["external_data"]
    )
    gc.collect()
    manifest_data["model_sha256"] = sha256_file(out / MODEL_FILE)
    manifest = Manifest(**manifest_data)
    write_manifest(out, manifest)
    if parity:
        from exporters.parity import check_decoder_parity

        try:
            report = check_decoder_parity(model, out, tok=tok)
        except ArtifactError:
            # keep the files for inspection, but the folder is no artifact any more
            os.replace(out / MANIFEST_FILE, out / "manifest.parity-failed.json")
            raise
        manifest_data["extra"]["parity"] = report.to_dict()
        write_manifest(out, Manifest(**manifest_data))
    logger.info("exported %s to %s (%.1f s)", src.name, out, time.perf_counter() - t0)
    return out
