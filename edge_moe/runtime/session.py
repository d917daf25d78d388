"""An onnxruntime session and a tokenizer for an artifact folder, the way every runner opens them.

numpy, onnxruntime and `tokenizers` only (never torch or transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.manifest import Manifest

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def make_session(
    model_path: Path,
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int = 1,
    *,
    prepack: bool = True,
    arena: bool = False,
) -> Any:
    """An onnxruntime InferenceSession with explicit providers and threads.

    Args:
        model_path: the ONNX file.
        providers: provider names (or ``(name, options)``), in priority order; default CPU.
        intra_op_threads: threads inside one op (None: onnxruntime's default, all cores).
        inter_op_threads: threads across ops.
        prepack: let MLAS keep a packed copy of the MatMul weights (faster GEMMs; the
            copy costs about as much memory again as the fp32 weights it packs).
        arena: onnxruntime's CPU memory arena. Off by default: it keeps the peak of a run's
            intermediate buffers allocated between runs (a batch of 8 MMLU prompts on SmolLM2
            fp32 left 300 MB in it, see ``benchmarks/batching_bench.py``).

    Raises:
        RunnerError: a provider is not available here (the message lists those that are).
        ArtifactError: onnxruntime cannot load the file.
    """
    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    for p in providers:
        pname = p[0] if isinstance(p, tuple) else p
        if pname not in available:
            raise RunnerError(
                f"onnxruntime provider {pname!r} is not available; available: {available}"
            )
    opts = ort.SessionOptions()
    if intra_op_threads is not None:
        opts.intra_op_num_threads = int(intra_op_threads)
    opts.inter_op_num_threads = int(inter_op_threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = bool(arena)
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ArtifactError(f"onnxruntime cannot load {model_path}: {exc}") from exc


def load_tokenizer(artifact_dir: Path, manifest: Manifest) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(artifact_dir / manifest.tokenizer_file))
    except Exception as exc:
        raise ArtifactError(f"cannot load {artifact_dir / manifest.tokenizer_file}: {exc}") from exc


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
