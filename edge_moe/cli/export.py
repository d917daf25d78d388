"""``edge-moe export SOURCE [--precision ...]``: an HF checkpoint, GGUF or offline asset to an
ONNX artifact with its manifest and parity report; ``--gguf-type TYPE``: a GGUF to another
GGUF type for runner ``llama.cpp`` (:mod:`exporters.gguf_requant`).

Every artifact is parity-checked before it is kept: fp32 against torch (prefill, 8 decode
steps, a padded batch, 16 greedy tokens), int8/int4 by next-token top-1 agreement with the
fp32 artifact. The report is stored in the manifest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from edge_moe.cli.common import (
    JSON_HELP,
    app,
    deprecated,
    err_console,
    handles_errors,
    print_json,
    stdout_to_stderr,
)
from edge_moe.errors import ConfigError
from exporters.artifact import EXPORT_PRECISIONS

logger = logging.getLogger(__name__)

BUILDERS = ("torch", "ortgenai")
Precision = Literal["fp32", "int8", "int4"]  # exporters.artifact.EXPORT_PRECISIONS
Builder = Literal["torch", "ortgenai"]
Kind = Literal["decoder", "encoder"]


@app.command("export")
@handles_errors
def export_command(
    source: Annotated[str, typer.Argument(help="asset name, .gguf file or HF checkpoint folder")],
    precision: Annotated[Precision, typer.Option(help="int8 and int4 variants build on fp32")] = "fp32",
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="the artifact folder to write (default: under $EDGE_MOE_CACHE/artifacts)")] = None,
    expert_name: Annotated[str | None, typer.Option(help="the expert name recorded in the manifest (default: from the source)")] = None,
    kind: Annotated[Kind, typer.Option(help="decoder: a language model expert; encoder: the gate's sentence encoder (MiniLM, fp32)")] = "decoder",
    parity: Annotated[bool, typer.Option(help="check against torch / fp32, record the report")] = True,
    force: Annotated[bool, typer.Option("--force", help="re-export even if a cached artifact matches")] = False,
    builder: Annotated[Builder, typer.Option(
        help="torch: torch.onnx (dynamo) + onnxruntime.quantization variants; ortgenai: onnxruntime-genai's model "
             "builder (fused GroupQueryAttention, MatMulNBits int4/int8 built from the checkpoint)")] = "torch",
    builder_option: Annotated[list[str] | None, typer.Option(
        "--builder-option", metavar="KEY=VALUE",
        help="passed to the ortgenai builder's --extra_options (repeatable), e.g. algo_config=k_quant_mixed, "
             "accuracy_level=4, block_size=32")] = None,
    int4_from_fp32: Annotated[bool, typer.Option(
        "--int4-from-fp32",
        help="with --builder ortgenai --precision int4: build fp32, then quantise it with onnxruntime's "
             "MatMulNBits (asymmetric 4-bit blocks of 32, int8 activations) into ortgenai-fp32-int4; under half "
             "the builder's peak memory (Qwen-1.5B: 9.4 vs 21.7 GB)")] = False,
    gguf_type: Annotated[str | None, typer.Option(
        "--gguf-type", metavar="TYPE",
        help="instead of ONNX: requantise a GGUF source with llama.cpp's quantiser to TYPE (Q8_0, F16, BF16, Q4_0, "
             "Q4_K_M) for runner llama.cpp, e.g. SmolLM2's Q4_1 to Q8_0, which llama.cpp runs with its fast "
             "kernels; parity-checked against the source (next-token agreement); needs the gguf extra")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP + ": {path, source, kind, precision, builder}")] = False,
    old_out: Annotated[Path | None, typer.Option("--out", hidden=True, callback=deprecated("export --out", "--out-dir"))] = None,
    old_name: Annotated[str | None, typer.Option("--name", hidden=True, callback=deprecated("export --name", "--expert-name"))] = None,
    old_encoder: Annotated[bool, typer.Option("--encoder", hidden=True, callback=deprecated("export --encoder", "--kind encoder"))] = False,
) -> None:
    """Export a model to an ONNX artifact with its manifest and print the artifact folder. Every artifact is parity-checked before it is kept: fp32 against torch, int8 and int4 against fp32. With --gguf-type, write a requantised GGUF instead and print its path (e.g. --gguf-type Q8_0).

    Example: edge-moe export qwen2.5-coder-0.5b-instruct --precision int8
    """
    out = old_out if old_out is not None else out_dir
    name = old_name if old_name is not None else expert_name
    encoder = kind == "encoder" or old_encoder
    assert precision in EXPORT_PRECISIONS, precision
    if builder_option and builder != "ortgenai":
        raise ConfigError("--builder-option applies to --builder ortgenai only")
    if builder == "ortgenai" and encoder:
        raise ConfigError("--builder ortgenai builds decoders; export the encoder with --builder torch")
    if encoder and precision != "fp32":
        raise ConfigError("the encoder is exported in fp32 only")
    if int4_from_fp32 and (builder != "ortgenai" or precision != "int4" or builder_option):
        raise ConfigError("--int4-from-fp32 applies to --builder ortgenai --precision int4, "
                          "without --builder-option")
    if gguf_type is not None:
        _requantize(source, gguf_type, out, parity=parity, force=force, as_json=as_json,
                    onnx_options=bool(builder_option or int4_from_fp32 or encoder or builder != "torch"
                                      or precision != "fp32" or name))
        return
    options = None
    if builder_option:
        bad = [o for o in builder_option if "=" not in o or not o.split("=", 1)[0]]
        if bad:
            raise ConfigError(f"--builder-option takes KEY=VALUE, got {bad}")
        options = dict(o.split("=", 1) for o in builder_option)

    def job() -> Path:
        if int4_from_fp32:
            from exporters.ortgenai import export_ortgenai_int4

            return export_ortgenai_int4(source, out, name=name, parity=parity, force=force)
        if builder == "ortgenai":
            from exporters.ortgenai import export_ortgenai

            return export_ortgenai(source, out, precision=precision, options=options, name=name,
                                   parity=parity, force=force)
        if encoder:
            from exporters.encoder import export_encoder

            return export_encoder(source, out, name=name, parity=parity, force=force)
        from exporters.llm import export_decoder

        if precision == "fp32":
            return export_decoder(source, out, name=name, parity=parity, force=force)
        from exporters.quantize import quantize_decoder

        base = export_decoder(source, None, name=name, parity=parity)
        return quantize_decoder(base, precision, out, check=parity, force=force)

    # Exports take seconds (cached) to many minutes (a 1.5B model): say what is running.
    what = f"exporting {source} ({'encoder' if encoder else precision}, builder {builder})"
    t0 = time.perf_counter()
    with stdout_to_stderr(as_json), err_console.status(f"{what}: load, export, parity check ..."):
        path = job()
    logger.info("%s took %.1f s", what, time.perf_counter() - t0)
    if as_json:
        print_json({"path": str(path), "source": source, "kind": "encoder" if encoder else "decoder",
                    "precision": precision, "builder": builder})
        return
    typer.echo(path)


def _requantize(source: str, gguf_type: str, out: Path | None, *, parity: bool, force: bool, as_json: bool,
                onnx_options: bool) -> None:
    """``export --gguf-type``: :func:`exporters.gguf_requant.requantize_gguf`, its path printed."""
    from exporters.gguf_requant import GGUF_TYPES, requantize_gguf
    from exporters.gguf_requant import gguf_type as parse_type

    if onnx_options:
        raise ConfigError("--gguf-type writes a GGUF: --precision, --builder, --builder-option, --int4-from-fp32, "
                          "--kind and --expert-name apply to ONNX exports only")
    t = parse_type(gguf_type)
    with stdout_to_stderr(as_json), err_console.status(f"requantising {source} to {t} with llama.cpp, parity check ..."):
        path = requantize_gguf(source, t, out, check=parity, force=force)
    if as_json:
        print_json({"path": str(path), "source": source, "kind": "decoder", "precision": GGUF_TYPES[t],
                    "builder": "llama.cpp", "gguf_type": t})
        return
    typer.echo(path)
