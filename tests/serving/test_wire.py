"""The wire protocol: every message round-trips; no input makes decode raise anything but
ProtocolError."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_moe.errors import ProtocolError
from edge_moe.wire import (
    CLASS_OF,
    PROTOCOL,
    Error,
    ErrorCode,
    ExpertInfo,
    ExpertUse,
    Heartbeat,
    MsgType,
    PlanInfo,
    Query,
    Ready,
    Reply,
    Result,
    Task,
    WireBudget,
    decode,
    encode,
    to_json,
)

text = st.text(max_size=20)
num = st.floats(allow_nan=False)  # NaN != NaN would break equality, not the protocol
opt_num = st.none() | num
names = st.tuples(text, text) | st.tuples(text)

use = st.builds(ExpertUse, text, text, num, st.sampled_from(["ok", "late", "lost", "error"]),
                num, num, num, text, st.none() | st.lists(num, max_size=4).map(tuple),
                st.none() | text, text)
plan = st.builds(PlanInfo, names, st.sampled_from(["optimal", "infeasible"]), opt_num, text,
                 names, st.none() | text, num, num, st.booleans(), opt_num, opt_num)
MESSAGES = {
    Query: st.builds(Query, text, text, st.none() | st.lists(text, max_size=5).map(tuple),
                     st.none() | text, st.none() | st.builds(WireBudget, opt_num, opt_num),
                     st.integers(1, 10_000), st.none() | st.integers(1, 10), opt_num, opt_num,
                     st.sampled_from(["letter", "continuation"])),
    Reply: st.builds(Reply, text, st.lists(use, max_size=3).map(tuple),
                     st.dictionaries(text, num, max_size=6), num, num, text, plan,
                     st.none() | st.integers(0, 25), st.none() | st.lists(num, max_size=4).map(tuple),
                     st.none() | text, st.booleans(), st.lists(text, max_size=3).map(tuple)),
    Error: st.builds(Error, text, st.sampled_from(list(ErrorCode)), text),
    Ready: st.builds(Ready, text, st.lists(st.builds(ExpertInfo, text, text, text), max_size=3).map(tuple),
                     text, text),
    Heartbeat: st.builds(Heartbeat, text),
    Task: st.builds(Task, text, text, text, num, st.none() | st.lists(text, max_size=4).map(tuple),
                    text, st.integers(1, 100)),
    Result: st.builds(Result, text, text, num, num, text,
                      st.none() | st.lists(st.floats(allow_nan=False), max_size=4).map(tuple),
                      st.none() | text, st.integers(0, 100)),
}


def test_every_type_has_a_strategy_and_a_distinct_byte():
    assert set(MESSAGES) == set(CLASS_OF.values())
    assert sorted(CLASS_OF) == sorted(int(t) for t in MsgType)


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls, data):
    msg = data.draw(MESSAGES[cls])
    frames = encode(msg)
    assert frames[0] == PROTOCOL and frames[1] == bytes([CLASS_OF_INV[cls]])
    assert decode(frames) == msg


CLASS_OF_INV = {c: t for t, c in CLASS_OF.items()}


def test_inf_survives_and_to_json_is_json_safe():
    r = Result("t", "e", 1.0, 0.5, "modelled", (-math.inf, 0.0))
    assert decode(encode(r)) == r
    assert to_json(r)["logprobs"] == ["-inf", 0.0] and to_json(r)["type"] == "RESULT"


def test_ints_are_accepted_where_floats_are_expected():
    body = msgpack.packb({"id": "t", "expert": "e", "prompt": "p", "timeout_ms": 5})
    t = decode([PROTOCOL, bytes([MsgType.TASK]), body])
    assert isinstance(t, Task) and t.timeout_ms == 5.0 and isinstance(t.timeout_ms, float)


@pytest.mark.parametrize("frames, needle", [
    ([], "got 0 frames, expected 3"),
    ([PROTOCOL, b"\x01"], "got 2 frames"),
    ([b"EMOE2", b"\x01", b"\x80"], "version frame b'EMOE2', expected b'EMOE1'"),
    ([PROTOCOL, b"\x00", b"\x80"], "type frame b'\\x00'"),
    ([PROTOCOL, b"\x01\x01", b"\x80"], "expected one byte"),
    ([PROTOCOL, b"\x05", msgpack.packb([1, 2])], "HEARTBEAT: expected a msgpack map, got list"),
    ([PROTOCOL, b"\x05", msgpack.packb({})], "HEARTBEAT: missing required field 'node'"),
    ([PROTOCOL, b"\x05", msgpack.packb({"node": 1})], "HEARTBEAT.node=1: expected a string"),
    ([PROTOCOL, b"\x05", msgpack.packb({"node": "a", "zz": 1})], "unknown field 'zz'"),
    ([PROTOCOL, b"\x05", msgpack.packb({"node": "a"}) + b"\x00"], "not one msgpack value"),
    ([PROTOCOL, b"\x01", msgpack.packb({"id": "q", "prompt": "p", "budget": {"energy_j": "lots"}})],
     "QUERY.budget.energy_j='lots': expected a number"),
    ([PROTOCOL, b"\x01", msgpack.packb({"id": "q", "prompt": "p", "options": ["a", 2]})],
     "QUERY.options[1]=2: expected a string"),
    ([PROTOCOL, b"\x01", msgpack.packb({"id": "q", "prompt": "p", "top_k": True})],
     "QUERY.top_k=True: expected an integer"),
    ([PROTOCOL, b"\x05", msgpack.packb({1: "a"})], "not one msgpack value"),
])
def test_decode_says_what_it_got_and_expected(frames, needle):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert needle in str(info.value)


def test_encode_refuses_non_messages():
    with pytest.raises(ProtocolError, match="not a wire message"):
        encode({"id": "x"})  # type: ignore[arg-type]


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_fuzz_random_frames_only_raise_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(CLASS_OF)), st.dictionaries(
    st.sampled_from(["id", "prompt", "options", "budget", "node", "experts", "expert", "timeout_ms",
                     "logprobs", "plan", "stage_ms", "code", "message", "x"]), msgpack_values, max_size=6))
def test_fuzz_plausible_maps_only_raise_protocol_error(kind, body):
    try:
        decode([PROTOCOL, bytes([kind]), msgpack.packb(body, use_bin_type=True)])
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(MESSAGES)).flatmap(lambda c: MESSAGES[c]), st.data())
def test_fuzz_corrupted_valid_messages_only_raise_protocol_error(msg, data):
    frames = encode(msg)
    body = bytearray(frames[2])
    if body:
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(body)))
        body = body[:cut]
    try:
        decode([frames[0], frames[1], bytes(body)])
    except ProtocolError:
        pass
