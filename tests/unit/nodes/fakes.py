"""In-process test doubles for the node's parts: a toy runner that batches, and one that
fails on purpose (each fault kind of the error policy, :mod:`nodes.execution`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_moe.config import CoordinatorConfig, DeviceClass
from edge_moe.energy import ModelledMeter
from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.batch import Generation, GenRequest, Outcome, ScoreRequest
from edge_moe.runtime.capabilities import Capability
from edge_moe.runtime.toy import ToyExpert
from nodes.execution import STREAM_FLUSH_MS, Executor, HostedExpert
from nodes.load import NodeLoad
from nodes.scheduler import Scheduler

CPU = DeviceClass("cpu", 5.0, 15.0, "test")
CFG = CoordinatorConfig(node="x", heartbeat_s=0.1, liveness=3, reconnect_min_s=0.05, reconnect_max_s=0.2)

# fault kind -> what the runner raises (None: it raises nothing, see BatchingToy)
RAISES: dict[str, BaseException | None] = {
    "ok": None,
    "bad_input": None,  # an empty prompt: ToyExpert itself raises RunnerError
    "runner_failure": RunnerError("the engine failed"),
    "edge_moe_error": ArtifactError("the engine file went away"),
    "bug": ZeroDivisionError("division by zero"),
    "unreadable": None,  # returns output the node cannot read
    "deadline": None,  # the task waits past its deadline
}


@dataclass
class _Seq:
    key: Any
    request: GenRequest
    outcome: Outcome


class ToyDecode:
    """A decode session over a :class:`BatchingToy`: every sequence ends at its first step
    (a toy generation is one token); the fault of ``runner.fault_at == 'step'`` is raised there."""

    def __init__(self, runner: BatchingToy) -> None:
        self.runner = runner
        self.seqs: list[_Seq] = []

    @property
    def active(self) -> int:
        return len(self.seqs)

    def add(self, items: Sequence[tuple[Any, GenRequest]]) -> list[tuple[Any, Outcome]]:
        done = []
        for key, req in items:
            seq = _Seq(key, req, Outcome())
            if not req.prompt_ids:
                seq.outcome.error = RunnerError("prompt is empty")
                done.append((key, seq.outcome))
            else:
                self.seqs.append(seq)
        return done

    def cancel(self, key: Any) -> Outcome | None:
        for s in self.seqs:
            if s.key == key:
                self.seqs.remove(s)
                s.outcome.value = Generation("", [], 0, 0.0, 0.0, "cancelled")
                return s.outcome
        return None

    def step(self) -> list[tuple[Any, Outcome]]:
        self.runner.fail("step")
        done = []
        for s in self.seqs:
            prompt = bytes(s.request.prompt_ids).decode()
            s.outcome.value = self.runner.generation(prompt, s.request.max_new_tokens)
            s.outcome.compute_ms += 1.0
            done.append((s.key, s.outcome))
        self.seqs = []
        return done


class BatchingToy:
    """A :class:`ToyExpert` that declares both batching capabilities and fails on purpose.

    Args:
        fault: a key of :data:`RAISES`.
        fault_at: where a generation batch raises it: ``prompt_ids`` (admitting a task) or
            ``step`` (a decode step); scoring raises in ``score_options`` / ``score_batch``.
    """

    runner_name = "toy-batching"
    capabilities = frozenset({Capability.BATCH_SCORE, Capability.BATCH_GENERATE})

    def __init__(self, fault: str = "ok", fault_at: str = "prompt_ids") -> None:
        self.toy = ToyExpert("toy")
        self.fault = fault
        self.fault_at = fault_at

    def fail(self, site: str) -> None:
        """Raise the fault at ``site``: always in the calls that serve a task alone or a
        scoring batch; in a generation batch only at ``fault_at``."""
        exc = RAISES[self.fault]
        if exc is not None and site in ("score", "generate", self.fault_at):
            raise exc

    def generation(self, prompt: str, max_new_tokens: int) -> Generation:
        if self.fault == "unreadable":
            return object()  # type: ignore[return-value]  # no .text: the node cannot read it
        return self.toy.generate(prompt, max_new_tokens)

    def score_options(self, prompt: str, options: Sequence[str], mode: str = "letter") -> Any:
        self.fail("score")
        if self.fault == "unreadable":
            return ["not a number"] * len(options)
        return self.toy.score_options(prompt, options, mode)

    def generate(self, prompt: str, max_new_tokens: int = 32) -> Generation:
        self.fail("generate")
        return self.generation(prompt, max_new_tokens)

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[Outcome]:
        self.fail("score")
        out = []
        for r in requests:
            o = Outcome(compute_ms=1.0)
            try:
                o.value = self.score_options(r.prompt, r.options, r.mode)
            except RunnerError as exc:
                o.error = exc
            out.append(o)
        return out

    def prompt_ids(self, prompt: str) -> list[int]:
        self.fail("prompt_ids")
        return list(prompt.encode())

    def decode_batch(self) -> ToyDecode:
        return ToyDecode(self)


def executor(runner: object, max_batch: int = 8, stream_flush_ms: float = STREAM_FLUSH_MS) -> Executor:
    """An in-process executor for one expert ``e`` (no sockets)."""
    experts = {"e": HostedExpert(runner)}  # type: ignore[arg-type]
    stats = {"results": 0, "errors": 0, "batches": 0, "batched_tasks": 0, "cancelled": 0}
    scheduler = Scheduler("n", {"e": runner}, max_batch=max_batch)  # type: ignore[dict-item]
    return Executor("n", experts, ModelledMeter(CPU), NodeLoad(), scheduler, stats, stream_flush_ms)
