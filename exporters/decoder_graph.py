"""The decoder graph: a transformers causal LM through ``torch.onnx`` (dynamo) with KV cache.

One graph serves prefill and decode alike::

    inputs   input_ids            (batch, seq)            int64
             attention_mask       (batch, total)          int64, total = past + seq
             position_ids         (batch, seq)            int64
             past_key_values.{i}.key / .value  (batch, kv_heads, past, head_dim)  float32
    outputs  logits               (batch, seq, vocab)     float32
             present.{i}.key / .value          (batch, kv_heads, past + seq, head_dim)

Prefill passes past tensors with ``past = 0``. :func:`export_onnx` returns the program
unsaved; :mod:`exporters.llm` embeds the manifest and saves it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError
from exporters.artifact import DEFAULT_OPSET

logger = logging.getLogger(__name__)

_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps one file at 2 GB


def load_causal_lm(hf_dir: Path) -> Any:
    """Load a transformers causal LM in fp32 eval mode with SDPA attention."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval()


def text_config(model: Any) -> Any:
    """The decoder's own config (the text part of a multimodal one)."""
    return model.config.get_text_config(decoder=True)


def kv_geometry(model: Any) -> dict[str, int]:
    """Layers, KV heads, head size, vocabulary and context of a causal LM."""
    cfg = text_config(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "num_layers": int(cfg.num_hidden_layers),
        "num_kv_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "head_dim": int(head_dim),
        "vocab_size": int(cfg.vocab_size),
        "max_context": int(getattr(cfg, "max_position_embeddings", 2048)),
    }


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the decoder graph."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _wrapper(model: Any, num_layers: int) -> Any:
    """An nn.Module with flat tensor I/O around a HF causal LM and a DynamicCache."""
    import torch
    from transformers import DynamicCache

    class DecoderWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):  # type: ignore[no-untyped-def]
            # A config-less DynamicCache keeps full-length layers, also for sliding-window
            # layers: their window is applied by the mask, and the graph stays uniform.
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            out = self.model(
                input_ids=input_ids,  # (B, T)
                attention_mask=attention_mask,  # (B, P+T)
                position_ids=position_ids,  # (B, T)
                past_key_values=cache,
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]  # (B, kvH, P+T, hd) each
            return (out.logits, *present)  # logits (B, T, V)

    return DecoderWithPast().eval()


def _example_inputs(geom: dict[str, int], batch: int = 2, seq: int = 3, past: int = 2) -> tuple:
    import torch

    # batch ≥ 2 and past ≥ 2, or torch.export specialises those axes (docs/design.md §6).
    ids = torch.randint(0, geom["vocab_size"], (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = [
        torch.zeros(batch, geom["num_kv_heads"], past, geom["head_dim"])
        for _ in range(2 * geom["num_layers"])
    ]
    return (ids, mask, pos, *kv)


def export_onnx(model: Any, path: Path, *, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export ``model`` as a KV-cache decoder; return the unsaved program and export facts.

    Returns:
        ``{"program", "external_data" (the weights need a .data file), "export_s",
        "inputs", "outputs", "geometry" (:func:`kv_geometry`)}``.

    Raises:
        ArtifactError: torch.onnx.export failed (the cause is chained).
    """
    import torch

    geom = kv_geometry(model)
    in_names, out_names = io_names(geom["num_layers"])
    ctx = max(geom["max_context"], 16)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=ctx)
    past = torch.export.Dim("past", min=0, max=ctx)
    total = torch.export.Dim("total", min=1, max=2 * ctx)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: total},
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past} for _ in range(2 * geom["num_layers"])),
    }
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = n_bytes > _EXTERNAL_DATA_BYTES
    wrapper = _wrapper(model, geom["num_layers"])
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                _example_inputs(geom),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=in_names,
                output_names=out_names,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
    except Exception as exc:  # torch raises many types here; all mean "export failed"
        raise ArtifactError(f"torch.onnx.export failed for {type(model).__name__}: {exc}") from exc
    export_s = time.perf_counter() - t0
    return {
        "program": program,
        "external_data": external,
        "export_s": round(export_s, 2),
        "inputs": in_names,
        "outputs": out_names,
        "geometry": geom,
    }
