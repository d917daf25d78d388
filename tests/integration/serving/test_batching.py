"""Dynamic batching: a batch gives each request what it gets alone (runner level, tiny random
Llama / Qwen2 / Gemma3 and real SmolLM2; greedy, and sampled with seeds), and the node's batcher (a hand-driven ROUTER)
batches concurrent TASKs, keeps deadlines, lets generation join between steps and never
makes a lone request wait."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_moe.config import CoordinatorConfig, DeviceClass
from edge_moe.errors import RunnerError
from edge_moe.runtime.batch import GenRequest, ScoreRequest, chunks, generate_batch, padded
from edge_moe.runtime.decoder import OrtRunner
from edge_moe.wire import Error, ErrorCode, Result, Sampling, Task
from nodes.server import HostedExpert, NodeServer
from tests.integration.serving.test_node_server import FakeCoordinator, running

pytestmark = pytest.mark.timeout(300)

CPU = DeviceClass("cpu", 5.0, 15.0, "test")
CFG = CoordinatorConfig(node="x", heartbeat_s=0.1, liveness=30, reconnect_min_s=0.05, reconnect_max_s=0.2)

PROMPTS = [
    "Hi",
    "The capital of France is",
    "Question: what is two plus two?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:",
    "Write a story about a cat who lived in a house near the sea and liked fish:",
    "1 2 3 4 5",
    "Which gas do plants take in? A. oxygen B. carbon dioxide C. argon D. neon. Answer:",
]
OPTIONS = (" Paris", " London is big", " no", " four")


_RUNNERS: dict[str, OrtRunner] = {}


def _tiny(arch: str, tmp_path_factory) -> OrtRunner:
    if arch not in _RUNNERS:
        from exporters.llm import export_decoder
        from exporters.tiny import make_tiny_checkpoint

        root = tmp_path_factory.mktemp(f"batch-{arch}")
        ckpt = make_tiny_checkpoint(arch, root / "ckpt", max_context=128)
        _RUNNERS[arch] = OrtRunner(export_decoder(ckpt, root / "artifact", name=f"tiny-{arch}"),
                                   intra_op_threads=1)
    return _RUNNERS[arch]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def tiny(request, tmp_path_factory) -> OrtRunner:
    """Each tiny architecture (for the runner's parity tests)."""
    return _tiny(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> OrtRunner:
    """One tiny architecture (for the node's batcher: its logic does not depend on it)."""
    return _tiny("llama", tmp_path_factory)


def _requests() -> list[ScoreRequest]:
    return ([ScoreRequest(p, ("A", "B", "C", "D"), "letter") for p in PROMPTS]
            + [ScoreRequest(p, OPTIONS, "continuation") for p in PROMPTS])


def _check_scores(runner: OrtRunner, atol: float) -> None:
    reqs = _requests()
    alone = [runner.score_options(r.prompt, r.options, r.mode) for r in reqs]
    batch = runner.score_batch(reqs)
    for r, a, o in zip(reqs, alone, batch, strict=True):
        assert o.error is None
        np.testing.assert_allclose(o.value, a, atol=atol, err_msg=f"{r.mode} {r.prompt!r}")
        assert o.compute_ms > 0


def _check_generation(runner: OrtRunner, n_new: list[int]) -> None:
    ids = [runner.encode(runner.format_prompt(p, True), formatted_chat=True) for p in PROMPTS]
    alone = [runner.generate_ids(i, n) for i, n in zip(ids, n_new, strict=True)]
    batch = generate_batch(runner, [GenRequest(tuple(i), n) for i, n in zip(ids, n_new, strict=True)])
    for a, o in zip(alone, batch, strict=True):
        assert o.error is None
        assert o.value.token_ids == a.token_ids
        assert o.value.text == a.text and o.value.stop_reason == a.stop_reason


def _check_sampled_joins(runner: OrtRunner, n_new: int = 12) -> None:
    """4 sequences with different seeds (temperature 0.8, top_p 0.95), two of them joining
    mid-decode, give alone and batched the same tokens."""
    ids = [runner.encode(runner.format_prompt(p, True), formatted_chat=True) for p in PROMPTS[:4]]
    samplings = [Sampling(temperature=0.8, top_p=0.95, seed=100 + k) for k in range(4)]
    alone = [runner.generate_ids(i, n_new, sampling=s).token_ids for i, s in zip(ids, samplings, strict=True)]
    reqs = [GenRequest(tuple(i), n_new, sampling=s) for i, s in zip(ids, samplings, strict=True)]
    batch = runner.decode_batch()
    got = dict(batch.add([(0, reqs[0]), (1, reqs[1])]))
    got.update(batch.step())
    got.update(batch.add([(2, reqs[2])]))
    for _ in range(3):
        got.update(batch.step())
    got.update(batch.add([(3, reqs[3])]))
    while batch.active:
        got.update(batch.step())
    assert [got[k].value.token_ids for k in range(4)] == alone
    greedy = [runner.generate_ids(i, n_new).token_ids for i in ids]
    assert alone != greedy  # it did sample


def test_padding_and_chunks_by_hand():
    ids, mask = padded([[5, 6], [7], [1, 2, 3]], left=True)
    assert ids.tolist() == [[0, 5, 6], [0, 0, 7], [1, 2, 3]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    ids, mask = padded([[5, 6], [7]], left=False)
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    # sorted by length, each chunk's rows x longest within the cap, one long row alone
    assert chunks([10, 3, 50, 4, 9], 30) == [[1, 3, 4], [0], [2]]


def test_tiny_batch_scores_equal_one_at_a_time(tiny):
    _check_scores(tiny, atol=1e-5)


def test_tiny_batch_generation_equals_one_at_a_time(tiny):
    _check_generation(tiny, [1, 3, 8, 12, 5, 20])


def test_tiny_sampled_sequences_joining_mid_decode_equal_one_at_a_time(tiny):
    _check_sampled_joins(tiny)


def test_tiny_sequences_joining_between_steps_equal_one_at_a_time(tiny):
    """Continuous batching: sequences added after some decode steps (their caches are
    left-padded to the running batch's length) decode as they do alone."""
    ids = [tiny.encode(tiny.format_prompt(p, True), formatted_chat=True) for p in PROMPTS]
    alone = [tiny.generate_ids(i, 10).token_ids for i in ids]
    batch = tiny.decode_batch()
    got = dict(batch.add([(0, GenRequest(tuple(ids[0]), 10)), (1, GenRequest(tuple(ids[1]), 10))]))
    for k in range(2, len(ids)):
        got.update(batch.step())
        got.update(batch.add([(k, GenRequest(tuple(ids[k]), 10))]))
    while batch.active:
        got.update(batch.step())
    assert [got[k].value.token_ids for k in range(len(ids))] == alone


def test_a_bad_request_fails_alone(llama):
    reqs = [ScoreRequest("Hi", ("A", "B")), ScoreRequest("x " * 500, ("A", "B")),
            ScoreRequest("Hi", ("A", "B"), "sideways"), ScoreRequest("The sky is", OPTIONS, "continuation")]
    out = llama.score_batch(reqs)
    assert out[0].error is None and out[3].error is None
    assert isinstance(out[1].error, RunnerError) and "context" in str(out[1].error)
    assert isinstance(out[2].error, RunnerError) and "sideways" in str(out[2].error)
    np.testing.assert_allclose(out[0].value, llama.score_options("Hi", ["A", "B"]), atol=1e-5)
    gen = generate_batch(llama, [GenRequest((), 4), GenRequest((1, 2, 3), 0), GenRequest((1, 2, 3), 2)])
    assert "empty" in str(gen[0].error) and "max_new_tokens" in str(gen[1].error)
    assert gen[2].error is None and gen[2].value.n_tokens <= 2


def test_int8_dynamic_quantisation_is_not_batched(llama, tmp_path):
    """quantize_dynamic computes activation scales over the whole batch, so such a graph
    must be served one request at a time; int4 (MatMulNBits) batches."""
    from exporters.quantize import quantize_decoder

    q8 = OrtRunner(quantize_decoder(llama.artifact_dir, "int8", tmp_path / "int8", check=False))
    assert not q8.batches and not q8.batches_generation
    q4 = OrtRunner(quantize_decoder(llama.artifact_dir, "int4", tmp_path / "int4", check=False))
    assert q4.batches and q4.batches_generation
    _check_scores(q4, atol=1e-4)


@pytest.fixture(scope="module")
def smollm2() -> OrtRunner:
    """Real SmolLM2-135M-Instruct, fp32 (exported once into the cache)."""
    from exporters.llm import export_decoder

    return OrtRunner(export_decoder("smollm2-135m-instruct"), intra_op_threads=2)


@pytest.mark.slow
def test_smollm2_batches_equal_one_at_a_time(smollm2):
    _check_scores(smollm2, atol=1e-4)
    _check_generation(smollm2, [4, 16, 16, 16, 8, 16])


@pytest.mark.slow
def test_smollm2_sampled_batches_equal_one_at_a_time(smollm2):
    """Seeded sampling (temperature 0.8, top_p 0.95, 12 tokens) on a real model: alone and
    in a batch that sequences join mid-decode, token for token."""
    _check_sampled_joins(smollm2, 12)


# ---------------------------------------------------------------- the node's batcher


def _node(runner: OrtRunner, endpoint: str, **kw) -> NodeServer:
    return NodeServer("n1", endpoint, {"e": HostedExpert(runner)}, CPU, CFG, **kw)


def _answers(coord: FakeCoordinator, n: int, timeout_s: float = 60.0) -> dict[str, object]:
    got: dict[str, object] = {}
    while len(got) < n:
        _, msg = coord.recv(timeout_s)
        if isinstance(msg, (Result, Error)):
            got[msg.id] = msg
    return got


def test_node_batches_concurrent_scoring_tasks(llama):
    coord = FakeCoordinator()
    try:
        with running(_node(llama, coord.endpoint, max_batch=8, batch_wait_ms=50)) as node:
            ident, _ = coord.recv()  # READY
            reqs = _requests()
            for i, r in enumerate(reqs):
                coord.send(ident, Task(f"t{i}", "e", r.prompt, 60_000, r.options, r.mode))
            got = _answers(coord, len(reqs))
            assert node.stats["batches"] >= 1 and node.stats["batched_tasks"] >= 2
            beat = node.load()
            assert beat.batch > 1
        for i, r in enumerate(reqs):
            res = got[f"t{i}"]
            assert isinstance(res, Result), res
            np.testing.assert_allclose(res.logprobs, llama.score_options(r.prompt, r.options, r.mode), atol=1e-5)
            assert res.compute_ms > 0 and res.energy_j > 0
    finally:
        coord.close()


def test_node_batches_generation_and_keeps_deadlines(llama):
    coord = FakeCoordinator()
    try:
        with running(_node(llama, coord.endpoint, max_batch=4, batch_wait_ms=20)) as node:
            ident, _ = coord.recv()
            for i, p in enumerate(PROMPTS):
                coord.send(ident, Task(f"g{i}", "e", p, 60_000, None, max_new_tokens=6 + 2 * i))
            coord.send(ident, Task("late", "e", "Hi", 0.001, ("A", "B")))  # expires while it waits
            got = _answers(coord, len(PROMPTS) + 1)
            # some decode batch held two sequences or more (at the start or by joining)
            assert node.stats["batched_tasks"] > node.stats["batches"], node.stats
        for i, p in enumerate(PROMPTS):
            res = got[f"g{i}"]
            assert isinstance(res, Result), res
            alone = llama.generate(p, 6 + 2 * i)
            assert res.text == alone.text and res.n_tokens == alone.n_tokens
        late = got["late"]
        assert isinstance(late, Error) and late.code == ErrorCode.DEADLINE
    finally:
        coord.close()


def test_a_lone_request_does_not_wait_for_a_batch(llama):
    """batch_wait_ms applies only under concurrent load: one request at a time answers far
    sooner than the (deliberately huge) wait."""
    coord = FakeCoordinator()
    try:
        with running(_node(llama, coord.endpoint, max_batch=8, batch_wait_ms=3000)):
            ident, _ = coord.recv()
            for i in range(3):
                t0 = time.monotonic()
                coord.send(ident, Task(f"s{i}", "e", PROMPTS[i], 60_000, ("A", "B")))
                (res,) = _answers(coord, 1).values()
                assert isinstance(res, Result)
                assert time.monotonic() - t0 < 1.5
    finally:
        coord.close()


def test_max_batch_one_serves_one_at_a_time(llama):
    coord = FakeCoordinator()
    try:
        with running(_node(llama, coord.endpoint, max_batch=1)) as node:
            ident, _ = coord.recv()
            for i, p in enumerate(PROMPTS):
                coord.send(ident, Task(f"t{i}", "e", p, 60_000, ("A", "B")))
            got = _answers(coord, len(PROMPTS))
            assert all(isinstance(m, Result) for m in got.values())
            assert node.stats["batches"] == 0
            assert node.load().batch == pytest.approx(1.0)
    finally:
        coord.close()
