"""``--builder ortgenai``: onnxruntime-genai's model builder as an alternative exporter.

The builder (``python -m onnxruntime_genai.models.builder``) writes one decoder graph with
fused operators (``GroupQueryAttention`` with rotary embedding inside,
``SkipSimplifiedLayerNormalization``, packed QKV) and, for ``int4``, ``MatMulNBits``
weights straight from the checkpoint. Its I/O differs from the torch exporter's
(:mod:`exporters.decoder_graph`) in one way that matters to a runner::

    inputs   input_ids (batch, seq), attention_mask (batch, total),
             past_key_values.{i}.key ... (all keys, then all values)
    outputs  logits, present.{i}.key ... (the same order)

There is no ``position_ids``: positions come from the attention mask, so batches must be
right-padded and share one past length (:class:`edge_moe.runtime.runners.OrtRunner` handles both).

The artifact is an ordinary edge-moe artifact: the builder's files plus our
``tokenizer.json`` (checked against transformers) and a manifest with
``extra.builder = "ortgenai"``. Parity: fp32 against torch exactly as the torch exporter
(:func:`exporters.parity.check_decoder_parity`); int8/int4 by top-1 agreement with the
ortgenai fp32 artifact of the same source (:func:`exporters.parity.top1_agreement`).
The builder runs in a subprocess, so its peak memory is gone before torch loads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_moe.errors import ArtifactError, ConfigError
from edge_moe.paths import artifacts_dir
from edge_moe.runtime.manifest import MANIFEST_FILE, Manifest, write_manifest
from exporters.artifact import EXPORT_PRECISIONS, MODEL_FILE, set_manifest_metadata
from exporters.assets import sha256_file
from exporters.decoder_graph import kv_geometry, load_causal_lm
from exporters.llm import decoder_manifest_fields
from exporters.source import resolve_source
from exporters.tokenizer import load_tokenizer, save_tokenizer

if TYPE_CHECKING:
    from exporters.quantize import Int4Options

logger = logging.getLogger(__name__)

BUILDER = "ortgenai"
BUILDER_VERSION = 1  # bump when this module changes what it writes; invalidates caches
LOG_FILE = "builder.log"
# int4: k_quant with the llama.cpp mixed strategy (sensitive MatMuls 8-bit) agreed best
# with fp32 on SmolLM2-135M among the variants tried (benchmarks/results/ortgenai.md).
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {"int4": {"algo_config": "k_quant_mixed"}}


def builder_available() -> str | None:
    """The installed onnxruntime-genai version, or None."""
    try:
        import onnxruntime_genai
    except ImportError:
        return None
    return str(getattr(onnxruntime_genai, "__version__", "unknown"))


def default_dir(name: str, precision: str) -> Path:
    return artifacts_dir() / name / f"{BUILDER}-{precision}"


def _cached(out: Path, source_sha: str, precision: str, options: dict[str, str],
            need_parity: bool = False) -> bool:
    """A finished build of the same source, precision and options (one that passed its
    parity check when ``need_parity``)."""
    path = out / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    extra = data.get("extra", {})
    return (
        data.get("source", {}).get("sha256") == source_sha
        and data.get("precision") == precision
        and extra.get("builder") == BUILDER
        and extra.get("builder_version") == BUILDER_VERSION
        and extra.get("builder_options") == options
        and (out / MODEL_FILE).is_file()
        and (not need_parity or bool(extra.get("parity", {}).get("passed")))
    )


def run_builder(
    hf_dir: Path, out: Path, precision: str, options: dict[str, str] | None = None,
    *, timeout_s: float = 3600,
) -> float:
    """Run the builder on an HF folder into ``out``; return its wall seconds.

    Its output goes to ``out/builder.log`` (it prints a progress line per tensor).

    Raises:
        ArtifactError: the builder failed or ran past ``timeout_s``; the message holds
            the log's tail.
    """
    out.mkdir(parents=True, exist_ok=True)
    log = out / LOG_FILE
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", "cpu",
        "-c", str(out / ".builder-cache"),
    ]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        except subprocess.TimeoutExpired as exc:
            raise ArtifactError(f"onnxruntime-genai builder ran past {timeout_s:.0f} s on {hf_dir}") from exc
    shutil.rmtree(out / ".builder-cache", ignore_errors=True)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise ArtifactError(
            f"onnxruntime-genai builder failed (exit {proc.returncode}) on {hf_dir}; "
            f"log {log}:\n{tail}"
        )
    if not (out / MODEL_FILE).is_file():
        raise ArtifactError(f"onnxruntime-genai builder wrote no {MODEL_FILE} in {out}; log {log}")
    return time.perf_counter() - t0


def _graph_io(model_path: Path) -> tuple[list[str], list[str], int]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    opset = next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    return [i.name for i in m.graph.input], [o.name for o in m.graph.output], opset


def export_ortgenai(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    precision: str = "fp32",
    options: dict[str, str] | None = None,
    name: str | None = None,
    parity: bool = True,
    force: bool = False,
) -> Path:
    """Build a decoder artifact with onnxruntime-genai's model builder; return its folder.

    Args:
        source: asset name, GGUF file, or HF checkpoint folder (as ``edge-moe export``).
        out_dir: artifact folder (default ``$EDGE_MOE_CACHE/artifacts/<name>/ortgenai-<precision>``).
        precision: ``fp32``, ``int8`` or ``int4`` (the builder's CPU precisions).
        options: the builder's ``--extra_options`` (default :data:`DEFAULT_OPTIONS` for
            the precision), e.g. ``{"algo_config": "k_quant_mixed", "accuracy_level": "4"}``.
        name: expert name recorded in the manifest.
        parity: check fp32 against torch, int8/int4 against the ortgenai fp32 artifact.
        force: rebuild even if a cached artifact matches.

    Raises:
        ConfigError: unknown precision, or onnxruntime-genai is not installed.
        ArtifactError: bad source, builder failure, tokenizer mismatch.
        ParityError: the artifact disagrees with its reference beyond tolerance.
    """
    if precision not in EXPORT_PRECISIONS:
        raise ConfigError(
            f"--builder ortgenai: precision {precision!r} is not one of {list(EXPORT_PRECISIONS)}"
        )
    version = builder_available()
    if version is None:
        raise ConfigError("--builder ortgenai needs onnxruntime-genai: pip install 'edge-moe[export]'")
    src = resolve_source(source, name)
    out = Path(out_dir) if out_dir is not None else default_dir(src.name, precision)
    opts = dict(DEFAULT_OPTIONS.get(precision, {}) if options is None else options)
    if not force and _cached(out, src.sha256, precision, opts, need_parity=parity):
        logger.info("reusing cached ortgenai build %s", out)
        return out
    # Build beside the target and move it in at the end: a failed build leaves no artifact.
    work = out.with_name(f".{out.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    build_s = run_builder(src.hf_dir, work, precision, opts)
    t0 = time.perf_counter()
    model = load_causal_lm(src.hf_dir)
    tok = load_tokenizer(src.hf_dir)
    save_tokenizer(tok, work)
    inputs, outputs, opset = _graph_io(work / MODEL_FILE)
    genai_cfg = json.loads((work / "genai_config.json").read_text())
    external = sorted(p.name for p in work.iterdir() if p.name.startswith(MODEL_FILE) and p.name != MODEL_FILE)
    fields = decoder_manifest_fields(src, model, tok, precision, opset, inputs, outputs, kv_geometry(model))
    manifest: dict[str, Any] = {
        **fields,
        "decoder": {**fields["decoder"], "padding": "right"},
        "extra": {
            "builder": BUILDER,
            "builder_version": BUILDER_VERSION,
            "onnxruntime_genai": version,
            "builder_options": opts,
            "build_s": round(build_s, 2),
            "external_data": external,
            "genai_context_length": genai_cfg.get("model", {}).get("context_length"),
        },
    }
    set_manifest_metadata(work / MODEL_FILE, json.dumps(manifest, sort_keys=True))
    manifest["model_sha256"] = sha256_file(work / MODEL_FILE)
    write_manifest(work, Manifest(**manifest))
    if parity:
        from edge_moe.runtime.runners import OrtRunner
        from exporters.parity import check_decoder_parity, top1_agreement

        if precision == "fp32":
            report = check_decoder_parity(model, work, tok=tok)
        else:
            del model
            ref_dir = export_ortgenai(source, None, precision="fp32", name=name, parity=True)
            report = top1_agreement(OrtRunner(ref_dir), OrtRunner(work))
            manifest["extra"]["parity_reference"] = str(ref_dir)
        manifest["extra"]["parity"] = report.to_dict()
    manifest["extra"]["check_s"] = round(time.perf_counter() - t0, 2)
    write_manifest(work, Manifest(**manifest))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work.replace(out)
    logger.info("built %s (%s, ortgenai) in %s (%.1f s)", src.name, precision, out, build_s)
    return out


def export_ortgenai_int4(
    source: str | Path,
    out_dir: str | Path | None = None,
    *,
    fp32_dir: str | Path | None = None,
    name: str | None = None,
    parity: bool = True,
    force: bool = False,
    int4: Int4Options | None = None,
) -> Path:
    """The low-memory int4 route: the builder's fp32 artifact (cached), then weight-only
    ``MatMulNBits`` by :func:`exporters.quantize.quantize_decoder` (default
    :data:`exporters.quantize.FAST_CPU_INT4`) into ``ortgenai-fp32-int4`` beside it.

    The builder's own int4 holds the fp32 model twice while it quantises: for
    Qwen2.5-Coder-1.5B it peaked at 21.7 GB RSS (k_quant_mixed, 14 min on 2 cores) where this
    route peaks at 9.4 GB (fp32 build 8.7 GB in 60 s, quantisation 9.3 GB in 63 s).
    ``fp32_dir``: where the fp32 build goes (default ``ortgenai-fp32`` in the cache);
    ``out_dir``: the int4 artifact (default: beside it). ``parity`` checks fp32 against
    torch and int4 by top-1 agreement with that fp32.
    """
    from exporters.quantize import FAST_CPU_INT4, quantize_decoder

    fp32 = export_ortgenai(source, fp32_dir, precision="fp32", name=name, parity=parity)
    out = Path(out_dir) if out_dir is not None else fp32.parent / f"{fp32.name}-int4"
    return quantize_decoder(fp32, "int4", out, check=parity, force=force, int4=int4 or FAST_CPU_INT4)
