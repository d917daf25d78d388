"""Decoding one sequence and many (edge_moe.runtime.generation, edge_moe.runtime.batch) on a
numpy graph: seeded sampling gives the same tokens alone and batched (joins mid-decode too),
stop strings are found across token boundaries and never streamed, a cancelled sequence
leaves the batch at once; and the toy expert samples with the same rule."""

from __future__ import annotations

import numpy as np
import pytest

from edge_moe.runtime.batch import DecodeBatch, GenRequest, generate_batch
from edge_moe.runtime.generation import Decoding, finish_reason, held_back, stop_strings
from edge_moe.runtime.toy import WORDS, ToyExpert
from edge_moe.wire import Sampling
from tests.unit.runtime.fakegraph import FakeGraph

pytestmark = pytest.mark.timeout(60)

PROMPTS = [[1, 2, 3], [7], [4, 4, 4, 4, 4, 4, 4], [9, 8, 7, 6, 5], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [11, 12]]
SAMPLED = Sampling(temperature=0.8, top_p=0.95)


def _seeded(i: int, **kw) -> Sampling:
    return Sampling(**{**SAMPLED.__dict__, "seed": 1000 + i, **kw})


def test_finish_reasons_and_stop_strings():
    assert [finish_reason(r) for r in ("eos", "stop", "length", "context", "cancelled")] == [
        "stop", "stop", "length", "length", "cancelled"]
    with pytest.raises(ValueError, match="unknown stop_reason"):
        finish_reason("tired")
    assert stop_strings(["a", "", "b"], Sampling(stop=("b", "c"))) == ("a", "b", "c")
    assert stop_strings(None, None) == ()
    assert held_back("hello wor", ["world"]) == 3 and held_back("hello w", ["xyz", "wo", "w"]) == 1
    assert held_back("hello", ["world"]) == 0 and held_back("ab", ["b"]) == 0  # a whole stop is no prefix


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_batched_equals_alone_token_for_token(sampled):
    g = FakeGraph()
    reqs = [GenRequest(tuple(p), 6 + 2 * i, sampling=_seeded(i) if sampled else None)
            for i, p in enumerate(PROMPTS)]
    alone = [g.generate_ids(r.prompt_ids, r.max_new_tokens, sampling=r.sampling) for r in reqs]
    batch = generate_batch(g, reqs)  # type: ignore[arg-type]
    for a, o in zip(alone, batch, strict=True):
        assert o.error is None
        assert o.value.token_ids == a.token_ids and o.value.text == a.text
        assert o.value.stop_reason == a.stop_reason == "length"
    if sampled:  # and not greedy: another seed, other tokens
        greedy = [g.generate_ids(r.prompt_ids, r.max_new_tokens).token_ids for r in reqs]
        assert greedy != [a.token_ids for a in alone]


def test_sequences_joining_mid_decode_sample_as_they_do_alone():
    """4 sequences, different seeds, temperature 0.8, top_p 0.95, 12 tokens, two of them
    joining after 2 and 5 decode steps (their caches left-padded to the batch's)."""
    g = FakeGraph()
    reqs = [GenRequest(tuple(PROMPTS[i]), 12, sampling=_seeded(i)) for i in range(4)]
    alone = [g.generate_ids(r.prompt_ids, 12, sampling=r.sampling).token_ids for r in reqs]
    batch = DecodeBatch(g)  # type: ignore[arg-type]
    got = dict(batch.add([(0, reqs[0]), (1, reqs[1])]))
    for step in range(1, 30):
        if step == 2:
            got.update(batch.add([(2, reqs[2])]))
        if step == 5:
            got.update(batch.add([(3, reqs[3])]))
        if batch.active == 0 and step > 5:
            break
        got.update(batch.step())
    assert [got[k].value.token_ids for k in range(4)] == alone
    assert len({tuple(a) for a in alone}) == 4


def test_a_stop_string_across_two_tokens_is_found_excluded_and_never_streamed():
    g = FakeGraph()
    ids = PROMPTS[0]
    full = g.generate_ids(ids, 10, sampling=_seeded(0))
    text = full.text  # two letters a token: the stop string below spans tokens 3 and 4
    stop = text[7:10]
    assert text.index(stop) == 7  # (this seed's text has it nowhere earlier)
    for alone in (True, False):
        pieces: list[str] = []
        req = GenRequest(tuple(ids), 10, pieces.append, (stop,), _seeded(0))
        if alone:
            got = g.generate_ids(ids, 10, on_text=pieces.append, sampling=_seeded(0, stop=(stop,)))
        else:
            (o,) = generate_batch(g, [req])  # type: ignore[arg-type]
            got = o.value
        assert got.text == text[:7] and got.stop_reason == "stop" and finish_reason(got.stop_reason) == "stop"
        assert got.token_ids == full.token_ids[:5]  # it ended at the token that completed the stop
        assert "".join(pieces) == got.text  # flushed to the final text at the end
        streamed = ""
        for p in pieces:  # always a prefix of the final text: never a part of the stop string
            streamed += p
            assert got.text.startswith(streamed), (streamed, got.text)
        assert len(pieces) > 1  # it did stream token by token
    # without the stop string within reach: max_new_tokens ends it, "length"
    got = g.generate_ids(ids, 3, sampling=_seeded(0, stop=(stop,)))
    assert got.stop_reason == "length" and got.text == text[:6]


def test_streaming_holds_back_a_possible_stop_and_sends_it_when_it_is_not_one():
    """The text so far ends in the start of a stop string: held back; the next token shows
    it was not the stop string: sent, and the pieces still add up to the text."""
    seq = Decoding("k", GenRequest((1,), 5, on_text=(sent := []).append, stop=("cdXY",)))
    words = {10: "ab", 11: "cd", 12: "ef", 13: "cdX", 14: "Z"}

    def decode(ids):
        return "".join(words[i] for i in ids)

    assert seq.take(10, set(), decode, 99) is None and sent == ["ab"]
    assert seq.take(11, set(), decode, 99) is None and sent == ["ab"]  # "cd" may start "cdXY"
    assert seq.take(12, set(), decode, 99) is None and sent == ["ab", "cdef"]
    assert seq.take(13, set(), decode, 99) is None and sent == ["ab", "cdef"]
    assert seq.take(14, set(), decode, 99) == "length"
    gen = seq.result("length", decode)
    assert gen.text == "abcdefcdXZ" and "".join(sent) == gen.text


def test_cancelling_eight_live_sequences_frees_the_batch_at_once():
    """8 sequences, cancelled after 3 tokens each: the batch is empty before the next step,
    every outcome is a 'cancelled' generation of its 3 tokens with its compute so far."""
    g = FakeGraph()
    batch = DecodeBatch(g)  # type: ignore[arg-type]
    reqs = [(k, GenRequest(tuple(PROMPTS[k % len(PROMPTS)]) + (k,), 50, sampling=_seeded(k, logprobs=True)))
            for k in range(8)]
    assert batch.add(reqs) == []  # prefill: token 1
    batch.step()
    batch.step()  # tokens 2 and 3
    calls = g.calls
    outcomes = {}
    for k, _ in reqs:
        outcomes[k] = batch.cancel(k)
        assert batch.cancel(k) is None  # not live any more
    steps = g.calls - calls
    print(f"\n8 sequences cancelled after 3 tokens: active {batch.active} after {steps} more steps")
    assert batch.active == 0 and steps <= 1 and batch.past is None and batch.step() == []
    for k, _ in reqs:
        o = outcomes[k]
        assert o is not None and o.error is None and o.compute_ms > 0
        assert o.value.stop_reason == "cancelled" and o.value.n_tokens == 3
        assert o.value.text == g.decode(o.value.token_ids) and len(o.value.token_logprobs) == 3
    assert batch.cancel("nobody") is None


def test_the_others_go_on_as_alone_after_one_is_cancelled():
    """Cancelling a row in the middle trims its row and cache columns; the rest decode as alone."""
    g = FakeGraph()
    reqs = [GenRequest(tuple(PROMPTS[i]), 10, sampling=_seeded(i)) for i in range(4)]
    alone = [g.generate_ids(r.prompt_ids, 10, sampling=r.sampling).token_ids for r in reqs]
    batch = DecodeBatch(g)  # type: ignore[arg-type]
    got = dict(batch.add(list(enumerate(reqs))))
    got.update(batch.step())
    cancelled = batch.cancel(2)  # the longest prompt: its cache columns go too
    assert cancelled is not None and cancelled.value.token_ids == alone[2][:2]
    assert batch.active == 3
    while batch.active:
        got.update(batch.step())
    assert [got[k].value.token_ids for k in (0, 1, 3)] == [alone[k] for k in (0, 1, 3)]


def test_should_stop_cancels_a_lone_generation_before_its_next_step():
    g = FakeGraph()
    asked = []

    def should_stop() -> bool:
        asked.append(g.calls)
        return g.calls >= 4  # prefill + 3 decode steps

    got = g.generate_ids(PROMPTS[0], 50, sampling=_seeded(0), should_stop=should_stop)
    assert got.stop_reason == "cancelled" and got.n_tokens == 4 and g.calls == 4
    assert g.generate_ids(PROMPTS[0], 5, should_stop=lambda: True).n_tokens == 0  # before the prefill


# ---------------------------------------------------------------- the toy expert


def test_the_toy_expert_stays_greedy_by_default():
    toy = ToyExpert("fast")
    g = toy.generate("Say hi", 8)
    assert g.n_tokens == 1 and g.stop_reason == "length" and g.token_logprobs is None
    assert g.text == toy.generate("Say hi", 8, sampling=Sampling()).text


def test_the_toy_expert_samples_with_seeds_stops_and_logprobs():
    toy = ToyExpert("fast")
    s = Sampling(temperature=1.2, seed=5, logprobs=True, top_logprobs=2)
    a, b = toy.generate("Say hi", 10, sampling=s), toy.generate("Say hi", 10, sampling=s)
    assert a.text == b.text and a.n_tokens == 10 and a.stop_reason == "length"
    assert all(w in WORDS for w in a.text.split()) and len(a.text.split()) == 10
    assert a.token_logprobs is not None and len(a.token_logprobs) == 10
    assert all(t.logprob <= 0 and len(t.top_tokens) == 2 for t in a.token_logprobs)
    others = {toy.generate("Say hi", 10, sampling=Sampling(temperature=1.2, seed=k)).text for k in range(6)}
    assert len(others) > 1
    # a stop string spanning two words: found, excluded, never streamed
    words = a.text.split()
    stop = f"{words[2][-1]} {words[3][0]}"
    first = a.text.index(stop)
    pieces: list[str] = []
    cut = toy.generate("Say hi", 10, on_text=pieces.append, sampling=Sampling(temperature=1.2, seed=5, stop=(stop,)))
    assert cut.text == a.text[:first] and cut.stop_reason == "stop" and "".join(pieces) == cut.text
    # cancelled between words
    n = iter(range(100))
    stopped = toy.generate("Say hi", 10, sampling=s, should_stop=lambda: next(n) >= 4)
    assert stopped.stop_reason == "cancelled" and stopped.n_tokens == 4 and a.text.startswith(stopped.text)
    assert np.all(np.array([t.logprob for t in stopped.token_logprobs]) <= 0)
