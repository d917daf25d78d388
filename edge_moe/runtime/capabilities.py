"""What a node may ask of an expert's runner: the interface every runner has, and the
abilities a runner *declares* it has.

Every runner is a :class:`Runner`: an :class:`OptionScorer` and a :class:`Generator`, with a
``runner_name`` (what READY says) and a ``capabilities`` set. The optional abilities:

====================  ===============================  ================================================
:class:`Capability`   protocol                         what the node may then call
====================  ===============================  ================================================
``STREAM``            :class:`StreamingGenerator`      ``generate(..., on_text=f)``: ``f`` gets
                                                       each piece of text as it decodes
``SAMPLE``            :class:`SamplingGenerator`       ``generate(..., sampling=s)``: tokens
                                                       drawn as a wire ``Sampling`` says (seed,
                                                       stop strings, log-probs)
``CANCEL``            :class:`CancellableGenerator`    ``generate(..., should_stop=f)``: ``f()``
                                                       True ends it ``cancelled`` between tokens
``BATCH_SCORE``       :class:`BatchScorer`             ``score_batch(requests)``: a batch gives
                                                       each request what it gets alone
``BATCH_GENERATE``    :class:`BatchGenerator`          ``prompt_ids(prompt)``, ``decode_batch()``
                                                       (continuous batching: a :class:`DecodeSession`,
                                                       honouring each request's ``sampling``;
                                                       ``cancel(key)`` between steps)
====================  ===============================  ================================================

**Declared, not sniffed.** A runner lists its abilities in ``capabilities`` and the node
asks :func:`streams` / :func:`samples` / :func:`cancels` / :func:`batch_scorer` /
:func:`batch_generator` (``TypeGuard``\\ s, so
mypy knows the methods), never ``getattr(runner, "score_batch", None)``. We chose an explicit
declaration over ``isinstance`` on ``@runtime_checkable`` protocols because:

1. an ability can belong to the *instance*, not the class: :class:`~edge_moe.runtime.decoder.OrtRunner`
   always has ``score_batch``, but an int8 ``quantize_dynamic`` graph must not batch (one row's
   log-probs depend on the other rows), and a graph without ``position_ids`` cannot decode in
   a batch; a structural check would say yes to both;
2. streaming is a keyword argument of ``generate``, and ``isinstance`` on a runtime-checkable
   protocol checks member *names* only, so it cannot tell a streaming ``generate`` from a plain one;
3. a structural check matches by accident (any object with a ``score_batch``), and a wrong
   answer silently changes what a node computes.

The protocols stay: they type the calls, and :func:`check_runner` checks each declaration
against them once, when a node is built, so a runner that declares an ability it lacks is
a :class:`~edge_moe.errors.ConfigError` at start-up, not an ``AttributeError`` mid-task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Protocol, TypeGuard, runtime_checkable

from edge_moe.errors import ConfigError
from edge_moe.runtime.batch import ScoreRequest
from edge_moe.runtime.generation import Generation, GenRequest, Outcome
from edge_moe.wire import Sampling

__all__ = ["BatchGenerator", "BatchScorer", "CancellableGenerator", "Capability", "DecodeSession",
           "Generator", "LiveSequence", "OptionScorer", "Runner", "SamplingGenerator", "StreamingGenerator",
           "batch_generator", "batch_scorer", "batches", "cancels", "check_runner", "samples", "streams"]


class Capability(StrEnum):
    """An optional ability a runner declares in its ``capabilities`` (module docstring)."""

    STREAM = "stream"
    SAMPLE = "sample"
    CANCEL = "cancel"
    BATCH_SCORE = "batch_score"
    BATCH_GENERATE = "batch_generate"


@runtime_checkable
class OptionScorer(Protocol):
    def score_options(self, prompt: str, options: Sequence[str], mode: str = ...) -> Any:
        """(K,) log-probabilities over the options, renormalised over them."""


@runtime_checkable
class Generator(Protocol):
    def generate(self, prompt: str, max_new_tokens: int = ...) -> Generation:
        """Greedy generation of at most ``max_new_tokens`` new tokens."""


@runtime_checkable
class Runner(OptionScorer, Generator, Protocol):
    """What a node needs of every expert (:class:`~edge_moe.runtime.decoder.OrtRunner`,
    :class:`~edge_moe.runtime.runners.TrtRunner`, :class:`~edge_moe.runtime.toy.ToyExpert`)."""

    @property
    def runner_name(self) -> str:
        """The runner's registry name, as READY reports it (``onnxruntime``, ``toy-onnx``)."""

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The optional abilities this runner (this instance) has."""


@runtime_checkable
class StreamingGenerator(Protocol):
    def generate(self, prompt: str, max_new_tokens: int = ..., *,
                 on_text: Callable[[str], None] | None = ...) -> Generation:
        """As :meth:`Generator.generate`, handing ``on_text`` each new piece of text as it
        decodes (the pieces concatenate to a prefix of the final text)."""


@runtime_checkable
class SamplingGenerator(Protocol):
    def generate(self, prompt: str, max_new_tokens: int = ..., *,
                 sampling: Sampling | None = ...) -> Generation:
        """As :meth:`Generator.generate`, picking tokens as ``sampling`` says (None: greedy):
        the same seed gives the same tokens; the text ends before a ``sampling.stop``
        string; ``token_logprobs`` when ``sampling.logprobs``."""


@runtime_checkable
class CancellableGenerator(Protocol):
    def generate(self, prompt: str, max_new_tokens: int = ..., *,
                 should_stop: Callable[[], bool] | None = ...) -> Generation:
        """As :meth:`Generator.generate`, calling ``should_stop()`` before each token; True
        ends the generation with ``stop_reason`` ``cancelled`` and the text so far."""


@runtime_checkable
class BatchScorer(Protocol):
    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[Outcome]:
        """Each request's log-probs or its own error, and its share of the compute ms."""


class LiveSequence(Protocol):
    """A sequence in a :class:`DecodeSession`: its key and its outcome so far."""

    @property
    def key(self) -> Any: ...

    @property
    def outcome(self) -> Outcome: ...


class DecodeSession(Protocol):
    """Decoding of many sequences at once (:class:`edge_moe.runtime.batch.DecodeBatch`):
    :meth:`add` sequences at any time, :meth:`step` while :attr:`active`; both return the
    ``(key, outcome)`` pairs of the sequences that ended. :meth:`cancel` ends one between
    steps (its outcome: the generation so far, ``stop_reason`` ``cancelled``; None when
    ``key`` is not live)."""

    @property
    def active(self) -> int: ...

    @property
    def seqs(self) -> Sequence[LiveSequence]: ...

    def add(self, items: Sequence[tuple[Any, GenRequest]]) -> list[tuple[Any, Outcome]]: ...

    def step(self) -> list[tuple[Any, Outcome]]: ...

    def cancel(self, key: Any) -> Outcome | None: ...


@runtime_checkable
class BatchGenerator(Protocol):
    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids a generation of ``prompt`` decodes from."""

    def decode_batch(self) -> DecodeSession:
        """An empty decode session over this runner."""


PROTOCOLS: dict[Capability, type] = {Capability.STREAM: StreamingGenerator,
                                     Capability.SAMPLE: SamplingGenerator,
                                     Capability.CANCEL: CancellableGenerator,
                                     Capability.BATCH_SCORE: BatchScorer,
                                     Capability.BATCH_GENERATE: BatchGenerator}


def check_runner(runner: object, where: str) -> Runner:
    """``runner``, checked: a :class:`Runner` whose every declared capability has its methods.

    Args:
        runner: the object to host.
        where: what to name in the message (e.g. ``node 'n1': expert 'e'``).

    Raises:
        ConfigError: not a Runner, an unknown capability, or one declared without its methods.
    """
    if not isinstance(runner, Runner):
        raise ConfigError(f"{where}: a {type(runner).__name__} is not a runner (a runner has "
                          "runner_name, capabilities, score_options and generate)")
    for cap in runner.capabilities:
        proto = PROTOCOLS.get(cap)
        if proto is None:
            raise ConfigError(f"{where}: unknown capability {cap!r}; choose from {[c.value for c in Capability]}")
        if not isinstance(runner, proto):
            raise ConfigError(f"{where}: {type(runner).__name__} declares {cap.value} but is not a "
                              f"{proto.__name__}")
    return runner


def streams(runner: Runner) -> TypeGuard[StreamingGenerator]:
    """Whether ``runner`` declared :attr:`Capability.STREAM`."""
    return Capability.STREAM in runner.capabilities


def samples(runner: Runner) -> TypeGuard[SamplingGenerator]:
    """Whether ``runner`` declared :attr:`Capability.SAMPLE`."""
    return Capability.SAMPLE in runner.capabilities


def cancels(runner: Runner) -> TypeGuard[CancellableGenerator]:
    """Whether ``runner`` declared :attr:`Capability.CANCEL`."""
    return Capability.CANCEL in runner.capabilities


def batch_scorer(runner: Runner) -> TypeGuard[BatchScorer]:
    """Whether ``runner`` declared :attr:`Capability.BATCH_SCORE`."""
    return Capability.BATCH_SCORE in runner.capabilities


def batch_generator(runner: Runner) -> TypeGuard[BatchGenerator]:
    """Whether ``runner`` declared :attr:`Capability.BATCH_GENERATE`."""
    return Capability.BATCH_GENERATE in runner.capabilities


def batches(runner: Runner, scoring: bool) -> bool:
    """Whether ``runner`` serves a batch of option-scoring (``scoring``) or generation tasks."""
    return batch_scorer(runner) if scoring else batch_generator(runner)
