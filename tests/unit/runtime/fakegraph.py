"""A decoder graph in numpy, for the decoding tests that need no ONNX: :class:`FakeGraph`.

Its "KV cache" holds the token ids themselves, and the logits at a position depend on the
token there and on every real (unmasked) token up to it, so a wrong cache, wrong padding or
a wrong row after a sequence leaves the batch changes the tokens. All its sums are of small
integers, so a sequence gets bit-identical logits alone and in any batch: the tests can
ask for exact equality of sampled tokens.

It is also a runner (``generate``, ``prompt_ids``, ``decode_batch``; it declares
streaming, sampling, cancellation and batched generation), so a node can host it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from edge_moe.errors import RunnerError
from edge_moe.runtime.batch import DecodeBatch
from edge_moe.runtime.capabilities import Capability
from edge_moe.runtime.decoder import OrtRunner
from edge_moe.runtime.generation import Generation
from edge_moe.wire import Sampling

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def piece(tok: int) -> str:
    """A token's text: two letters, so a string can span two tokens."""
    return LETTERS[tok % 26] + LETTERS[(tok * 7 + 3) % 26]


class FakeGraph:
    """See the module docstring.

    Args:
        vocab: vocabulary size.
        eos: end-of-sequence token ids (none by default: sequences run to their length).
        max_context: prompt + generated tokens at most.
        delay_ms: a sleep in every forward pass (to model a slower model).
        seed: the random tables.
    """

    has_position_ids = True
    runner_name = "fake-graph"
    capabilities = frozenset({Capability.STREAM, Capability.SAMPLE, Capability.CANCEL,
                              Capability.BATCH_GENERATE})

    def __init__(self, vocab: int = 40, eos: Sequence[int] = (), max_context: int = 512,
                 delay_ms: float = 0.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.table = rng.normal(0, 2, (vocab, vocab)).astype(np.float32)  # (V, V) by token
        self.mix = rng.normal(0, 2, (97, vocab)).astype(np.float32)  # (97, V) by history
        self.manifest = SimpleNamespace(name="fake", eos_token_ids=list(eos))
        self.max_context = max_context
        self.delay_ms = delay_ms
        self.calls = 0  # forward passes so far
        self.on_forward: Callable[[int], None] | None = None  # called after each pass
        self._lock = threading.Lock()

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        ids = np.asarray(input_ids, np.int64)  # (B, T)
        b, t = ids.shape
        p = 0 if past is None else past[0].shape[2]
        mask = np.ones((b, p + t), np.int64) if attention_mask is None else np.asarray(attention_mask)
        new = ids[:, None, :, None].astype(np.float32)  # (B, 1, T, 1)
        cache = new if past is None else np.concatenate([past[0], new], axis=2)  # (B, 1, P+T, 1)
        real = (cache[:, 0, :, 0] + 1) * mask  # (B, P+T) pads count 0, token k counts k+1
        history = np.cumsum(real, axis=1)[:, p:].astype(np.int64) % 97  # (B, T)
        logits = self.table[ids] + self.mix[history]  # (B, T, V)
        if self.delay_ms:
            time.sleep(self.delay_ms / 1e3)
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.on_forward is not None:
            self.on_forward(n)
        return logits.astype(np.float32), [cache]

    def check_context(self, n: int, what: str = "prompt") -> None:
        if n == 0:
            raise RunnerError(f"{what} is empty after tokenisation")
        if n > self.max_context:
            raise RunnerError(f"{what} has {n} tokens, longer than the context of {self.max_context}")

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(piece(int(i)) for i in ids)

    # ---- the runner interface

    def prompt_ids(self, prompt: str) -> list[int]:
        return [b % self.vocab for b in prompt.encode()]

    def generate_ids(self, ids: Sequence[int], max_new_tokens: int, stop: Sequence[str] | None = None,
                     on_text: Callable[[str], None] | None = None, *, sampling: Sampling | None = None,
                     should_stop: Callable[[], bool] | None = None) -> Generation:
        """The real serial loop (``OrtRunner.generate_ids``) run on this graph."""
        return OrtRunner.generate_ids(self, ids, max_new_tokens, stop, on_text,  # type: ignore[arg-type]
                                      sampling=sampling, should_stop=should_stop)

    def generate(self, prompt: str, max_new_tokens: int = 32, *, on_text: Any = None,
                 sampling: Sampling | None = None, should_stop: Callable[[], bool] | None = None) -> Generation:
        if not prompt:
            raise RunnerError("prompt is empty")
        return self.generate_ids(self.prompt_ids(prompt), max_new_tokens, None, on_text,
                                 sampling=sampling, should_stop=should_stop)

    def score_options(self, prompt: str, options: Sequence[str], mode: str = "letter") -> Any:
        raise RunnerError("a fake graph does not score options")

    def decode_batch(self) -> DecodeBatch:
        return DecodeBatch(self)  # type: ignore[arg-type]
