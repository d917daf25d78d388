"""exporters.tensorrt: profiles, cache keys and device refusal; the real build is `gpu`."""

from __future__ import annotations

import dataclasses

import pytest

from edge_moe.errors import ArtifactError, ConfigError
from edge_moe.runtime.manifest import MANIFEST_VERSION, Manifest
from exporters.tensorrt import (
    AxisRange,
    DeviceInfo,
    check_engine_device,
    engine_cache_key,
    profile_shapes,
)

L4 = DeviceInfo("NVIDIA L4", "8.9", "10.3.0")


def _manifest(layers: int = 2, ctx: int = 4096) -> Manifest:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return Manifest(
        manifest_version=MANIFEST_VERSION,
        kind="decoder",
        name="m",
        architecture="LlamaForCausalLM",
        model_type="llama",
        parameter_count=1,
        precision="fp32",
        opset=18,
        model_file="model.onnx",
        model_sha256="ab" * 32,
        source={},
        inputs=["input_ids", "attention_mask", "position_ids", *past],
        outputs=["logits"],
        tokenizer_file="tokenizer.json",
        special_tokens={},
        decoder={
            "num_layers": layers,
            "num_kv_heads": 3,
            "head_dim": 64,
            "vocab_size": 10,
            "max_context": ctx,
            "kv_dtype": "float32",
        },
    )


def test_profile_shapes_cover_prefill_and_decode():
    s = profile_shapes(
        _manifest(), AxisRange(1, 2, 8), AxisRange(1, 1, 512), AxisRange(0, 256, 2048)
    )
    assert s["input_ids"] == ((1, 1), (2, 1), (8, 512))
    assert s["attention_mask"] == ((1, 1), (2, 257), (8, 2560))
    assert s["past_key_values.1.value"] == ((1, 3, 0, 64), (2, 3, 256, 64), (8, 3, 2048, 64))
    assert len(s) == 3 + 4


def test_profile_rejects_bad_ranges():
    with pytest.raises(ConfigError, match="exceeds the context of 1024"):
        profile_shapes(_manifest(ctx=1024))
    with pytest.raises(ConfigError, match="min ≤ opt ≤ max"):
        AxisRange(4, 2, 8)
    with pytest.raises(ConfigError, match="for decoders"):
        profile_shapes(dataclasses.replace(_manifest(), kind="encoder"))


def test_cache_key_is_stable_and_sensitive():
    s = profile_shapes(_manifest())
    k = engine_cache_key("ab" * 32, L4, ("fp16",), s)
    assert k == engine_cache_key("ab" * 32, L4, ("fp16",), dict(reversed(list(s.items()))))
    others = {
        engine_cache_key("cd" * 32, L4, ("fp16",), s),
        engine_cache_key(
            "ab" * 32, dataclasses.replace(L4, compute_capability="8.6"), ("fp16",), s
        ),
        engine_cache_key(
            "ab" * 32, dataclasses.replace(L4, tensorrt_version="10.4.0"), ("fp16",), s
        ),
        engine_cache_key("ab" * 32, L4, ("fp16", "int8"), s),
        engine_cache_key(
            "ab" * 32, L4, ("fp16",), profile_shapes(_manifest(), batch=AxisRange(1, 1, 4))
        ),
    }
    assert k not in others and len(others) == 5
    with pytest.raises(ConfigError, match="unknown TensorRT flags"):
        engine_cache_key("ab" * 32, L4, ("tf32",), s)


def test_node_refuses_an_engine_for_another_device():
    record = {"name": "m", "device": dataclasses.asdict(L4)}
    check_engine_device(record, L4)
    with pytest.raises(
        ArtifactError, match=r"built for NVIDIA L4 \(sm 8.9, TensorRT 10.3.0\).*Orin"
    ):
        check_engine_device(record, DeviceInfo("Orin", "8.7", "10.3.0"))
    with pytest.raises(ArtifactError, match="TensorRT 10.4.0"):
        check_engine_device(record, dataclasses.replace(L4, tensorrt_version="10.4.0"))


@pytest.mark.gpu
def test_real_engine_build(tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt does not import here (docs/design.md §6)")
    from exporters.llm import export_decoder
    from exporters.tensorrt import build_engine, current_device
    from exporters.tiny import make_tiny_checkpoint

    art = export_decoder(make_tiny_checkpoint("llama", tmp_path / "ckpt"), tmp_path / "art")
    shapes = profile_shapes(
        __import__("edge_moe.runtime.manifest", fromlist=["load_manifest"]).load_manifest(art),
        seq=AxisRange(1, 1, 16),
        past=AxisRange(0, 8, 32),
    )
    out = build_engine(art, tmp_path / "engine", shapes=shapes)
    assert (out / "model.engine").stat().st_size > 0 and (out / "timing.cache").is_file()
    import json

    check_engine_device(json.loads((out / "engine.json").read_text()), current_device())
