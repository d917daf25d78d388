"""Quantised variants of an fp32 decoder artifact, each its own artifact and manifest.

- ``int8``: ``onnxruntime.quantization.quantize_dynamic``: per-channel 8-bit (uint8) weights,
  activations quantised at run time, for the MatMuls with a constant weight, except
  the attention-output and MLP-down projections (see :func:`single_consumer_matmuls`).
- ``int4``: weight-only ``MatMulNBits`` through ``MatMulNBitsQuantizer``: 4-bit
  asymmetric blocks of 32 along K, except the same sensitive MatMuls, which get 8-bit
  blocks (see :class:`Int4Options` for the variants measured).

A variant's parity is its next-token top-1 agreement with the fp32 artifact on the
fixed prompt set :data:`exporters.parity.AGREEMENT_PROMPTS`; the report goes into its
manifest, and falling below the tolerance table raises ParityError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError, ConfigError
from edge_moe.runtime.manifest import MANIFEST_FILE, load_manifest, write_manifest
from exporters.artifact import EXPORT_PRECISIONS, set_manifest_metadata
from exporters.assets import sha256_file

logger = logging.getLogger(__name__)

VARIANTS = tuple(p for p in EXPORT_PRECISIONS if p != "fp32")  # ("int8", "int4")
INT4_BLOCK_SIZE = 32


def single_consumer_matmuls(model_path: Path) -> list[str]:
    """Weight MatMuls whose activation input feeds no other MatMul.

    In a Llama/Qwen/Gemma block these are the attention output and MLP down
    projections (q/k/v share their input, as do gate/up). Their inputs carry the
    activation outliers that per-tensor dynamic quantisation destroys: on SmolLM2-135M,
    quantising them drops next-token agreement with fp32 from 0.925 to 0.65.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    uses = Counter(n.input[0] for n in matmuls)
    return [n.name for n in matmuls if n.input[1] in weights and uses[n.input[0]] == 1]


def _quantize_int8(src: Path, dst: Path, external: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opts = {"MatMulConstBOnly": True}
    excluded = single_consumer_matmuls(src)
    # uint8 weights (U8U8), not int8 (U8S8): onnxruntime's U8S8 kernels saturate on x86 CPUs
    # without VNNI (AVX2 only), and an artifact runs wherever it is deployed. Measured on an
    # AVX2-only EPYC with SmolLM2: U8S8 top-1 agreement with fp32 0.20, U8U8 0.90, U8S8 with
    # reduce_range 0.90 (0.894 over all positions vs 0.899 for U8U8).
    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QUInt8,
        nodes_to_exclude=excluded,
        use_external_data_format=external,
        extra_options=opts,
    )
    return {
        "method": "quantize_dynamic",
        "weight_type": "QUInt8",
        "per_channel": True,
        "excluded_matmuls": len(excluded),
        "excluded_rule": "single-consumer weight MatMuls (attention out, MLP down)",
        **opts,
    }


@dataclasses.dataclass(frozen=True)
class Int4Options:
    """Settings of the weight-only int4 (MatMulNBits) variant.

    Attributes:
        block_size: weights per scale along K (a power of two ≥ 16).
        symmetric: int4 without zero points; False stores a uint4 zero point per block.
        accuracy_level: MatMulNBits ``accuracy_level``: 0 leaves it unset (fp32
            activations on CPU), 4 quantises activations to int8 inside the kernel.
        sensitive_bits: what the single-consumer MatMuls (attention output, MLP down,
            output layer; :func:`single_consumer_matmuls`) become: 4 like the rest,
            8 for 8-bit MatMulNBits with the same blocks, 32 to keep them fp32.

    The default is the best of the variants measured on SmolLM2-135M (next-token top-1
    agreement with fp32 on :data:`exporters.parity.AGREEMENT_PROMPTS`):

    ========================================  ===========  ======
    variant                                   agreement    size
    ========================================  ===========  ======
    block 32, symmetric, accuracy 4            0.525        184 MB
    block 32, asymmetric                       0.600        186 MB
    block 64 / 128, asymmetric                 0.475/0.600  178 MB
    block 16, asymmetric                       0.825*       201 MB
    block 32, asymmetric, sensitive fp32       0.800        308 MB
    block 32, asymmetric, sensitive 8-bit      0.825        204 MB
    ========================================  ===========  ======

    (*all-position agreement 0.745 against 0.847 for the default; fp32 is 542 MB.)
    """

    block_size: int = INT4_BLOCK_SIZE
    symmetric: bool = False
    accuracy_level: int = 0
    sensitive_bits: int = 8

    def __post_init__(self) -> None:
        if self.sensitive_bits not in (4, 8, 32):
            raise ConfigError(f"sensitive_bits must be 4, 8 or 32, not {self.sensitive_bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two ≥ 16, not {self.block_size}")


DEFAULT_INT4 = Int4Options()
# The fastest int4 on x86 CPUs without VNNI (AVX2 only, like this project's machines): every
# weight MatMul 4-bit, int8 activations inside the kernel. There, 4-bit MatMulNBits runs at
# fp32 GEMM speed (~140 GFLOPS on 2 cores) and 8-bit blocks at 0.67x (accuracy_level 4) or
# 0.2x (fp32 activations). On Qwen2.5-Coder-1.5B it keeps the fp32 accuracy
# (benchmarks/results/qwen15_variants.md); the real demo serves it.
FAST_CPU_INT4 = Int4Options(symmetric=False, accuracy_level=4, sensitive_bits=4)


def _quantize_int4(
    src: Path, dst: Path, external: bool, opts: Int4Options = DEFAULT_INT4
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    sensitive = single_consumer_matmuls(src) if opts.sensitive_bits != 4 else []

    def config(bits: int) -> Any:
        return DefaultWeightOnlyQuantConfig(
            block_size=opts.block_size,
            is_symmetric=opts.symmetric,
            accuracy_level=opts.accuracy_level or None,
            op_types_to_quantize=("MatMul",),
            bits=bits,
        )

    model = onnx.load(str(src))
    q = MatMulNBitsQuantizer(model, nodes_to_exclude=sensitive, algo_config=config(4))
    q.process()
    if opts.sensitive_bits == 8 and sensitive:
        q = MatMulNBitsQuantizer(q.model.model, nodes_to_include=sensitive, algo_config=config(8))
        q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=external)
    return {
        "method": "MatMulNBits",
        "bits": 4,
        **dataclasses.asdict(opts),
        "sensitive_matmuls": len(sensitive),
        "sensitive_rule": "single-consumer weight MatMuls (attention out, MLP down, output)",
    }


def _same_int4(recorded: Any, opts: Int4Options) -> bool:
    if not isinstance(recorded, dict):
        return False
    return all(recorded.get(k) == v for k, v in dataclasses.asdict(opts).items())


def quantize_decoder(
    fp32_dir: str | Path,
    precision: str,
    out_dir: str | Path | None = None,
    *,
    check: bool = True,
    force: bool = False,
    int4: Int4Options = DEFAULT_INT4,
) -> Path:
    """Write the ``precision`` variant of an fp32 decoder artifact; return its folder.

    Args:
        fp32_dir: the fp32 artifact.
        precision: ``int8`` or ``int4``.
        out_dir: default: the fp32 folder's sibling named after the precision.
        check: measure top-1 agreement with fp32 (ParityError below tolerance).
        force: rebuild even when a variant made from this fp32 file exists.
        int4: settings of the int4 variant (ignored for int8).

    Raises:
        ConfigError: unknown precision.
        ArtifactError: the source is no fp32 decoder, or quantisation failed.
        ParityError: agreement below :data:`exporters.parity.TOLERANCES`.
    """
    if precision not in VARIANTS:
        raise ConfigError(
            f"unknown variant precision {precision!r}; choose one of {list(VARIANTS)}"
        )
    src_dir = Path(fp32_dir)
    base = load_manifest(src_dir)
    if base.kind != "decoder" or base.precision != "fp32":
        raise ArtifactError(
            f"{src_dir}: quantisation needs an fp32 decoder, got {base.kind}/{base.precision}"
        )
    out = Path(out_dir) if out_dir is not None else src_dir.parent / precision
    if not force and (out / MANIFEST_FILE).is_file():
        try:
            cached = load_manifest(out)
            if (
                cached.extra.get("parent_sha256") == base.model_sha256
                and cached.precision == precision
                and (precision != "int4" or _same_int4(cached.extra.get("quantization"), int4))
            ):
                return out
        except ArtifactError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    shutil.copyfile(src_dir / base.tokenizer_file, out / base.tokenizer_file)
    external = bool(base.extra.get("external_data"))
    t0 = time.perf_counter()
    try:
        if precision == "int8":
            qinfo = _quantize_int8(src_dir / base.model_file, out / base.model_file, external)
        else:
            qinfo = _quantize_int4(src_dir / base.model_file, out / base.model_file, external, int4)
    except Exception as exc:  # onnxruntime.quantization raises assorted types
        raise ArtifactError(f"{precision} quantisation of {src_dir} failed: {exc}") from exc
    quant_s = time.perf_counter() - t0
    extra = {
        **{k: v for k, v in base.extra.items() if k != "parity"},
        "parent": str(src_dir),
        "parent_sha256": base.model_sha256,
        "quantization": {**qinfo, "seconds": round(quant_s, 2)},
    }
    manifest = dataclasses.replace(base, precision=precision, model_sha256="", extra=extra)
    set_manifest_metadata(out / base.model_file, json.dumps(manifest.to_dict(), sort_keys=True))
    manifest = dataclasses.replace(manifest, model_sha256=sha256_file(out / base.model_file))
    write_manifest(out, manifest)
    if check:
        from edge_moe.runtime.runners import OrtRunner
        from exporters.parity import top1_agreement

        try:
            report = top1_agreement(OrtRunner(src_dir), OrtRunner(out))
        except ArtifactError:
            os.replace(out / MANIFEST_FILE, out / "manifest.parity-failed.json")
            raise
        extra["parity"] = report.to_dict()
        write_manifest(out, dataclasses.replace(manifest, extra=extra))
    logger.info("%s variant of %s written to %s in %.1f s", precision, base.name, out, quant_s)
    return out
