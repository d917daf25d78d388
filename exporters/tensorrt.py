"""TensorRT engines from an ONNX decoder artifact, and the checks that keep them honest.

The pure parts run anywhere and are unit-tested: optimisation-profile shapes for the
dynamic axes (:func:`profile_shapes`), the engine cache key (:func:`engine_cache_key`)
and the device check that makes a node refuse an engine built for another GPU or
TensorRT version (:func:`check_engine_device`) instead of rebuilding on the hot path.
:func:`build_engine` uses the real TensorRT Python API; it needs ``tensorrt`` (not
installable on the CPU dev machine, docs/design.md §6) and runs in the ``gpu`` test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError, ConfigError
from edge_moe.runtime.manifest import Manifest, load_manifest

logger = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
ENGINE_MANIFEST = "engine.json"
TIMING_CACHE = "timing.cache"
FLAGS = ("fp16", "int8")


@dataclass(frozen=True)
class AxisRange:
    """min / opt / max of one dynamic axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"axis range needs 0 ≤ min ≤ opt ≤ max, got {self}")


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is tied to."""

    gpu_name: str
    compute_capability: str  # "8.9"
    tensorrt_version: str


def profile_shapes(
    manifest: Manifest,
    batch: AxisRange = AxisRange(1, 1, 8),
    seq: AxisRange = AxisRange(1, 1, 512),
    past: AxisRange = AxisRange(0, 256, 2048),
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of every decoder input for one optimisation profile.

    One profile covers prefill (past 0, long seq) and decode (seq 1, long past); ``opt``
    defaults to decode, the hot path. ``attention_mask`` spans past + seq.

    Raises:
        ConfigError: not a decoder, or ``past.max + seq.max`` exceeds the context.
    """
    if manifest.kind != "decoder" or manifest.decoder is None:
        raise ConfigError(
            f"{manifest.name}: TensorRT profiles are for decoders, got {manifest.kind}"
        )
    d = manifest.decoder
    if past.max + seq.max > int(d["max_context"]):
        raise ConfigError(
            f"{manifest.name}: past.max + seq.max = {past.max + seq.max} exceeds the context "
            f"of {d['max_context']}"
        )
    kvh, hd = int(d["num_kv_heads"]), int(d["head_dim"])
    pick = ("min", "opt", "max")

    def shape(fn: Any) -> tuple[tuple[int, ...], ...]:
        return tuple(fn(k) for k in pick)

    out: dict[str, Any] = {}
    for name in manifest.inputs:
        if name in ("input_ids", "position_ids"):
            out[name] = shape(lambda k: (getattr(batch, k), getattr(seq, k)))
        elif name == "attention_mask":
            out[name] = shape(lambda k: (getattr(batch, k), getattr(past, k) + getattr(seq, k)))
        elif name.startswith("past_key_values."):
            out[name] = shape(lambda k: (getattr(batch, k), kvh, getattr(past, k), hd))
        else:
            raise ConfigError(f"{manifest.name}: no profile rule for input {name!r}")
    return out


def engine_cache_key(
    model_sha256: str, device: DeviceInfo, flags: tuple[str, ...], shapes: dict[str, Any]
) -> str:
    """A stable hex key of everything an engine depends on."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ConfigError(f"unknown TensorRT flags {unknown}; choose from {list(FLAGS)}")
    blob = json.dumps(
        {"model": model_sha256, "device": asdict(device), "flags": sorted(flags), "shapes": shapes},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def check_engine_device(engine_record: dict[str, Any], here: DeviceInfo) -> None:
    """Refuse an engine built for another GPU model, compute capability or TensorRT.

    Raises:
        ArtifactError: naming both devices and how to rebuild.
    """
    built = DeviceInfo(**engine_record["device"])
    if built != here:
        raise ArtifactError(
            f"engine {engine_record.get('name', '?')} was built for {built.gpu_name} "
            f"(sm {built.compute_capability}, TensorRT {built.tensorrt_version}); this node has "
            f"{here.gpu_name} (sm {here.compute_capability}, TensorRT {here.tensorrt_version}). "
            "Rebuild it offline for this device; nodes do not build engines on the request path"
        )


def current_device(index: int = 0) -> DeviceInfo:
    """The local GPU and TensorRT version (through NVML, no torch).

    Raises:
        ArtifactError: tensorrt or NVML is not available here.
    """
    try:
        import pynvml
        import tensorrt as trt
    except Exception as exc:
        raise ArtifactError(
            f"TensorRT device query needs tensorrt and nvidia-ml-py: {exc}"
        ) from exc
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
    except pynvml.NVMLError as exc:
        raise ArtifactError(f"NVML cannot describe GPU {index}: {exc}") from exc
    name = name.decode() if isinstance(name, bytes) else str(name)
    return DeviceInfo(name, f"{major}.{minor}", str(trt.__version__))


def build_engine(
    artifact_dir: str | Path,
    out_dir: str | Path,
    *,
    flags: tuple[str, ...] = ("fp16",),
    workspace_bytes: int = 4 << 30,
    shapes: dict[str, Any] | None = None,
) -> Path:
    """Build a TensorRT engine from an ONNX decoder artifact; return the engine folder.

    Writes ``model.engine``, ``timing.cache`` (reused by later builds) and
    ``engine.json`` (device, flags, profile, cache key, the source manifest).

    Raises:
        ArtifactError: tensorrt missing, the ONNX parser failed, or the build failed.
    """
    try:
        import tensorrt as trt
    except Exception as exc:
        raise ArtifactError(f"building a TensorRT engine needs `tensorrt`: {exc}") from exc
    src = Path(artifact_dir)
    manifest = load_manifest(src)
    shapes = shapes or profile_shapes(manifest)
    device = current_device()
    key = engine_cache_key(manifest.model_sha256, device, flags, shapes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / ENGINE_MANIFEST
    if record_path.is_file() and json.loads(record_path.read_text()).get("cache_key") == key:
        return out
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(src / manifest.model_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT cannot parse {src / manifest.model_file}: {errors[:3]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for f in flags:
        config.set_flag(trt.BuilderFlag.FP16 if f == "fp16" else trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = out / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ArtifactError(f"TensorRT failed to build an engine for {src}")
    (out / ENGINE_FILE).write_bytes(bytes(engine))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    record = {
        "name": manifest.name,
        "device": asdict(device),
        "flags": list(flags),
        "profile": shapes,
        "cache_key": key,
        "build_s": round(time.perf_counter() - t0, 1),
        "source_manifest": manifest.to_dict(),
    }
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return out
