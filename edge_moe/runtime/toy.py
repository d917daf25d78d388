"""Trivial ONNX models for tests, smoke runs and the coordinator benchmark.

They are real onnxruntime sessions over tiny graphs built with ``onnx.helper`` (no torch,
no download), so the serving path runs end to end in milliseconds:

- :class:`ToyExpert`: a hashed bag of words of the prompt → one MatMul → 26 letter logits.
  It has the runner interface (``score_options``, ``generate``) of :mod:`edge_moe.runtime.capabilities`,
  is deterministic, and is seeded by its expert name, so a test can rebuild the exact
  expert a node process serves. ``delay_ms`` adds a sleep to model a slower expert.
  Greedy generation answers one word; a sampled one (``sampling.temperature > 0``) draws up
  to ``max_new_tokens`` words, each from the 26 letter logits of the prompt and the text so
  far, with the same sampler as a real runner (seeds, stop strings, log-probs,
  ``should_stop``), so a toy fleet can exercise them.
- :class:`ToyEncoder`: the same features → MatMul → L2 norm, the ``embed`` interface of
  :class:`edge_moe.runtime.runners.EncoderRunner`.
- :func:`write_linear_gate`: a linear gate ONNX with the manifest that
  :class:`edge_moe.runtime.gate.OnnxGate` loads.

Nothing here says anything about real LLMs.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.errors import RunnerError
from edge_moe.runtime.capabilities import Capability
from edge_moe.runtime.generation import Decoding, Generation, GenRequest, stop_strings
from edge_moe.wire import Sampling

logger = logging.getLogger(__name__)

N_FEATURES = 64
N_LETTERS = 26
OPSET = 17
WORDS = ("yes", "no", "maybe", "paris")  # a toy generation picks one, so experts can agree


def features(texts: Sequence[str], n: int = N_FEATURES) -> np.ndarray:
    """(M, n) float32 hashed bag of words (crc32, stable across processes)."""
    out = np.zeros((len(texts), n), np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            out[i, zlib.crc32(w.encode()) % n] += 1.0
    return out


def seed_of(name: str) -> int:
    """A stable seed from a name."""
    return zlib.crc32(name.encode())


def _session(model: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def _linear_model(w: np.ndarray, b: np.ndarray, in_name: str, out_name: str,
                  normalise: bool = False) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", [in_name, "W"], ["xw"]),
             helper.make_node("Add", ["xw", "B"], ["z" if normalise else out_name])]
    if normalise:
        nodes += [helper.make_node("ReduceL2", ["z"], ["norm"], axes=[1], keepdims=1),
                  helper.make_node("Max", ["norm", "EPS"], ["safe"]),
                  helper.make_node("Div", ["z", "safe"], [out_name])]
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"),
             numpy_helper.from_array(b.astype(np.float32), "B")]
    if normalise:
        inits.append(numpy_helper.from_array(np.array([1e-12], np.float32), "EPS"))
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", w.shape[1]])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=8)


class ToyExpert:
    """A trivial expert with the runner interface (see the module docstring).

    Args:
        name: the expert name; seeds the weights.
        delay_ms: extra sleep per request, to model a slower expert.
    """

    runner_name = "toy-onnx"
    precision = "fp32"
    capabilities = frozenset({Capability.STREAM, Capability.SAMPLE, Capability.CANCEL})

    def __init__(self, name: str, delay_ms: float = 0.0) -> None:
        rng = np.random.default_rng(seed_of(name))
        self.name = name
        self.delay_ms = float(delay_ms)
        self.session = _session(_linear_model(rng.normal(0, 0.4, (N_FEATURES, N_LETTERS)),
                                              rng.normal(0, 0.5, N_LETTERS), "features", "logits"))

    def _logits(self, text: str) -> np.ndarray:
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000.0)
        (out,) = self.session.run(["logits"], {"features": features([text])})
        return np.asarray(out[0], np.float64)  # (26,)

    def score_options(self, prompt: str, options: Sequence[str], mode: str = "letter",
                      **_: Any) -> np.ndarray:
        """(K,) float64 log-probabilities over the options (log-softmax of K logits)."""
        if isinstance(options, str) or not 0 < len(options) <= N_LETTERS:
            raise RunnerError(f"options must be 1..{N_LETTERS} strings, got {len(options)}")
        if not prompt:
            raise RunnerError("prompt is empty")
        z = self._logits(prompt + " " + " ".join(options))[: len(options)]
        return z - (z.max() + np.log(np.exp(z - z.max()).sum()))

    def generate(self, prompt: str, max_new_tokens: int = 32,
                 stop: Sequence[str] | None = None, on_text: Callable[[str], None] | None = None,
                 *, sampling: Sampling | None = None, should_stop: Callable[[], bool] | None = None,
                 **_: Any) -> Generation:
        """Greedy: one 'token', a word picked by the argmax letter (handed to ``on_text``
        too). Sampled: words drawn one at a time (see the module docstring)."""
        if max_new_tokens < 1:
            raise RunnerError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompt:
            raise RunnerError("prompt is empty")
        stops = stop_strings(stop, sampling)
        if sampling is not None and sampling.sampled:
            return self._sampled(prompt, GenRequest((), max_new_tokens, on_text, stops, sampling),
                                 should_stop)
        if should_stop is not None and should_stop():
            return Generation("", [], 0, 0.0, 0.0, "cancelled", () if sampling and sampling.logprobs else None)
        t0 = time.perf_counter()
        logits = self._logits(prompt)
        idx = int(np.argmax(logits))
        ms = (time.perf_counter() - t0) * 1e3
        word = WORDS[idx % len(WORDS)]
        text = f"{word.capitalize()}." if idx % 2 else word  # case/punctuation vary; votes normalise
        reason = "length"
        hits = [text.index(x) for x in stops if x in text]
        if hits:
            text, reason = text[: min(hits)], "stop"
        if on_text is not None and text:
            on_text(text)
        logprobs = None
        if sampling is not None and sampling.logprobs:
            lp = Decoding(None, GenRequest((), 1, sampling=sampling), token_text=_word).pick(logits)[1]
            logprobs = (lp,) if lp is not None else None
        return Generation(text, [idx], 1, ms, 0.0, reason, logprobs)

    def _sampled(self, prompt: str, req: GenRequest, should_stop: Callable[[], bool] | None) -> Generation:
        """Up to ``max_new_tokens`` words, each drawn from the letter logits of the prompt
        and the words so far, by the one decision rule of :mod:`edge_moe.runtime.generation`."""
        seq = Decoding(None, req, token_text=_word)
        t0 = time.perf_counter()
        reason: str | None = None
        while reason is None:
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            tok, lp = seq.pick(self._logits(f"{prompt} {_words(seq.new)}"))
            reason = seq.take(tok, set(), _words, 1 << 62, lp)
        seq.decode_ms = (time.perf_counter() - t0) * 1e3
        return seq.result(reason, _words)

    def letter(self, prompt: str, options: Sequence[str]) -> str:
        return string.ascii_uppercase[int(np.argmax(self.score_options(prompt, options)))]


def _word(idx: int) -> str:
    """A toy token's text: the word of a letter index."""
    return WORDS[idx % len(WORDS)]


def _words(ids: Sequence[int]) -> str:
    """A toy generation's text: its words joined by spaces."""
    return " ".join(_word(i) for i in ids)


class ToyEncoder:
    """A trivial sentence encoder: unit-norm (M, dim) float32 embeddings."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.session = _session(_linear_model(rng.normal(0, 1, (N_FEATURES, dim)),
                                              rng.normal(0, 0.1, dim), "features", "embeddings",
                                              normalise=True))

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str) or len(texts) == 0:
            raise RunnerError("texts must be a non-empty list of strings")
        (out,) = self.session.run(["embeddings"], {"features": features(list(texts))})
        return np.asarray(out, np.float32)


def fit_linear_gate(embeddings: np.ndarray, label_logprobs: np.ndarray,
                    ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of each expert's log p(label) on the embedding: a cheap gate.

    Args:
        embeddings: (M, D).
        label_logprobs: (M, N) each expert's log-probability of the right option.

    Returns:
        (W (D, N), b (N,)).
    """
    x = np.hstack([embeddings, np.ones((len(embeddings), 1))])  # (M, D+1)
    a = x.T @ x + ridge * np.eye(x.shape[1])
    wb = np.linalg.solve(a, x.T @ label_logprobs)  # (D+1, N)
    return wb[:-1], wb[-1]


def write_linear_gate(path: str | Path, experts: Sequence[str], dim: int,
                      prior: np.ndarray | None = None, seed: int = 0, scale: float = 2.0,
                      weights: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write a linear gate ``gate.onnx`` that OnnxGate loads.

    Args:
        path: the .onnx file.
        experts: N expert names (the gate's output order).
        dim: embedding dim D.
        prior: (N, K) log option prior per expert (default zeros, K = 4).
        seed, scale: random weights when ``weights`` is None.
        weights: (W (D, N), b (N,)), e.g. from :func:`fit_linear_gate`.
    """
    import onnx

    rng = np.random.default_rng(seed)
    n = len(experts)
    w, b = weights if weights is not None else (rng.normal(0, scale, (dim, n)), rng.normal(0, 0.5, n))
    model = _linear_model(np.asarray(w), np.asarray(b), "embeddings", "gate_logits")
    pr = np.zeros((n, 4)) if prior is None else np.asarray(prior, np.float64)
    meta = {"format_version": "1", "kind": "gate", "experts": json.dumps(list(experts)),
            "prior": json.dumps(pr.tolist()), "embedding_dim": str(dim),
            "input_name": "embeddings", "output_name": "gate_logits", "note": "toy linear gate"}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = "edge_moe." + k, v
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(p))
    return p
