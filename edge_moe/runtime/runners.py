"""Torch-free runners that execute exported artifacts on a node.

Every runner is built from an artifact folder's manifest (:mod:`edge_moe.runtime.manifest`) and
has the same interface:

- ``score_options(prompt, options, mode) -> np.ndarray``: log-probabilities over the K
  options, renormalised over them. ``letter`` reads the next-token log-probs of the
  option letters after the prompt; ``continuation`` sums each option's token log-probs,
  computing the prompt's KV cache once and reusing it for all K options in one batch
  (one option per call on graphs without ``position_ids``, see :class:`OrtRunner`).
- ``generate(prompt, max_new_tokens, stop, sampling=None) -> Generation``: decoding with the
  KV cache (greedy, or sampled as ``sampling`` says: :mod:`edge_moe.runtime.sampling`),
  timed as prefill and decode.

Runners are chosen by name from :data:`RUNNERS`; :class:`Runner` is the interface a node
needs, and the optional abilities a runner declares (streaming, batching) are in
:mod:`edge_moe.runtime.capabilities`. The implementations: :class:`~edge_moe.runtime.decoder.OrtRunner` (onnxruntime),
:class:`TrtRunner` (TensorRT), :class:`~edge_moe.runtime.gguf.GgufRunner` (llama.cpp on a GGUF
file, the ``gguf`` extra), and the sentence encoder
:class:`~edge_moe.runtime.encoder.EncoderRunner`; sessions and tokenizers are opened by
:mod:`edge_moe.runtime.session`. numpy, onnxruntime and `tokenizers` only: never torch or
transformers (a test checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_moe.errors import ConfigError, RunnerError
from edge_moe.runtime.capabilities import Capability, Runner
from edge_moe.runtime.decoder import Generation, OrtRunner
from edge_moe.runtime.encoder import EncoderRunner
from edge_moe.runtime.gguf import GgufRunner
from edge_moe.runtime.session import make_session

__all__ = ["RUNNERS", "EncoderRunner", "Generation", "GgufRunner", "OrtRunner", "Runner", "TrtRunner", "make_runner",
           "make_session"]


class TrtRunner:
    """A TensorRT engine artifact. Needs the ``tensorrt`` package, a CUDA GPU, and an
    engine built for this GPU and TensorRT version (see ``exporters/tensorrt.py``).

    Raises:
        RunnerError: ``tensorrt`` does not import, or engine execution is not
            available in this build.
    """

    name = "tensorrt"
    runner_name = "tensorrt"
    capabilities: frozenset[Capability] = frozenset()  # none until engine execution exists

    def __init__(self, artifact_dir: str | Path, **kwargs: Any) -> None:
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:
            raise RunnerError(
                "runner 'tensorrt' needs the `tensorrt` Python package, which does not import "
                f"here ({type(exc).__name__}: {exc}); use runner 'onnxruntime' (the CUDA or "
                "TensorRT execution providers give GPU speed without it)"
            ) from exc
        raise RunnerError(
            "TensorRT engine execution is not implemented yet; use runner 'onnxruntime' with "
            "providers=['TensorrtExecutionProvider', 'CUDAExecutionProvider']"
        )


RUNNERS: dict[str, type] = {"onnxruntime": OrtRunner, "tensorrt": TrtRunner, "llama.cpp": GgufRunner}


def make_runner(name: str, artifact_dir: str | Path, **kwargs: Any) -> Runner:
    """Build the runner called ``name`` for an artifact.

    Raises:
        ConfigError: unknown runner name (the message lists the known ones).
    """
    try:
        cls = RUNNERS[name]
    except KeyError:
        raise ConfigError(f"unknown runner {name!r}; choose one of {sorted(RUNNERS)}") from None
    return cls(artifact_dir, **kwargs)  # type: ignore[no-any-return]
