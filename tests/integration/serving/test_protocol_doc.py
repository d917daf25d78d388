"""docs/protocol.md against live messages: what the tables say a client receives is what a
real fleet sends.

The REPLY, expert use, token log-prob, plan, PARTIAL and ERROR tables are parsed (each key,
its type, whether it may be omitted, and its *values* column: bounds, intervals, enums,
item counts). A toy fleet runs as processes (the coordinator and three nodes, one of them
slow; generation cost models in its profiles), and a raw DEALER socket sends a spread of
QUERYs: options, greedy and sampled generation, streamed generation, a pinned expert,
infeasible options and generation budgets, a deadline miss, a degraded answer, a cancel, bad
requests and undecodable frames. Every message that comes back is validated against the
tables from its msgpack body (not the decoded dataclass, which would fill in omitted keys):
every documented key present unless documented as omitted, no undocumented key, types and
values as stated. The prose rules the tables point to (which stages appear when, the
infeasible REPLY, the objective's sign, when ``min_energy_j`` is nil, PARTIAL order) are
checked too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from edge_moe.wire import (
    PROTOCOL,
    Cancel,
    Error,
    ExpertUse,
    Partial,
    PlanInfo,
    Query,
    Reply,
    Sampling,
    TokenLogprob,
    WireBudget,
    encode,
)
from tests.toyfleet import make_assets

from .conftest import start_fleet

pytestmark = pytest.mark.timeout(240)

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
SLOW_NODE, SLOW_MS = "node-c", 400.0  # node-c hosts expert 3 (tests.toyfleet.NODES)
REPLY, ERROR, PARTIAL = 2, 3, 8

# the tables: name → how the doc introduces it (a heading, or the caption line before it)
TABLES = {
    "REPLY": "### REPLY (2)",
    "expert use": "Expert use (`experts[]`)",
    "token log-prob": "Token log-prob (`token_logprobs[]`",
    "plan": "Plan (`plan`)",
    "PARTIAL": "### PARTIAL (8)",
    "ERROR": "### ERROR (3)",
}
DATACLASS = {"REPLY": Reply, "expert use": ExpertUse, "token log-prob": TokenLogprob,
             "plan": PlanInfo, "PARTIAL": Partial, "ERROR": Error}
NESTED = {"expert use": "expert use", "plan map": "plan", "token log-prob": "token log-prob"}


# --------------------------------------------------------------------------- the doc's tables


@dataclass(frozen=True)
class Spec:
    """One row: the key's type (``kind``: str/int/float/bool/array/map or a nested table's
    name; ``item``: an array's item kind), nil allowed, omitted at its default, values."""

    key: str
    kind: str
    item: str | None
    nullable: bool
    omittable: bool
    values: tuple[tuple[str, Any], ...]
    allows_inf: bool


def _kind(text: str) -> tuple[str, str | None]:
    text = text.strip()
    if m := re.fullmatch(r"array<(.+)>", text):
        return "array", _kind(m.group(1))[0]
    if re.fullmatch(r"map<str,\s*float>", text):
        return "map", "float"
    if text in NESTED:
        return NESTED[text], None
    if text in ("str", "int", "float", "bool"):
        return text, None
    raise AssertionError(f"docs/protocol.md: unknown type {text!r}")


def _split(cell: str) -> list[str]:
    """The ';'-separated clauses of a values cell, its (comments) dropped; an interval's
    parenthesis stays."""
    cell = re.sub(r"\((?![^()]*\])[^()]*[A-Za-z`][^()]*\)", "", cell)
    return [c.strip() for c in cell.split(";") if c.strip()]


def _literals(text: str) -> tuple[str, ...]:
    return tuple("" if lit == '""' else lit for lit in re.findall(r"`([^`]*)`", text))


def _number(text: str) -> float | str:
    return "K" if text == "K" else float(text.replace("−", "-"))


def _clause(text: str) -> tuple[str, Any]:
    """One values clause → a check: ('range', (lo, lo_open, hi, hi_open)), ('enum', literals),
    ('joined', sep), ('keys', literals), ('each', check), ('items', n|'K'), ('max_items', n),
    ('sum', 1.0), ('max_chars', n)."""
    if m := re.fullmatch(r"each (.+)", text):
        return "each", _clause(m.group(1))
    if m := re.fullmatch(r"keys one of (.+)", text):
        return "keys", _literals(m.group(1))
    if m := re.fullmatch(r"one of (.+)", text):
        return "enum", _literals(m.group(1))
    if m := re.fullmatch(r"joined by `(.+)`", text):
        return "joined", m.group(1)
    if m := re.fullmatch(r"(K|\d+) items", text):
        return "items", _number(m.group(1))
    if m := re.fullmatch(r"at most (\d+) items", text):
        return "max_items", int(m.group(1))
    if m := re.fullmatch(r"at most (\d+) characters", text):
        return "max_chars", int(m.group(1))
    if m := re.fullmatch(r"sum (\S+)", text):
        return "sum", float(m.group(1))
    if m := re.fullmatch(r"([\[(])\s*(\S+),\s*(\S+)\s*([\])])", text):
        return "range", (_number(m.group(2)), m.group(1) == "(", _number(m.group(3)), m.group(4) == ")")
    if m := re.fullmatch(r"(≥|>|≤|<)\s*(\S+)", text):
        op, x = m.group(1), _number(m.group(2))
        return "range", ((x, op == ">", math.inf, False) if op in "≥>" else (-math.inf, False, x, op == "<"))
    raise AssertionError(f"docs/protocol.md: a values clause no check understands: {text!r}")


def parse_tables(text: str) -> dict[str, dict[str, Spec]]:
    """Every ``| key | type | values | meaning |`` table of the doc that :data:`TABLES` names."""
    lines = text.splitlines()
    found: dict[str, dict[str, Spec]] = {}
    for i, line in enumerate(lines):
        if not line.startswith("| key | type | values | meaning |"):
            continue
        # named by its caption line, else by the heading above it
        intro = next(ln for ln in reversed(lines[:i]) if ln.strip() and not ln.startswith("|"))
        heading = next(ln for ln in reversed(lines[:i]) if ln.startswith("#"))
        name = next((n for n, s in TABLES.items() if intro.startswith(s)), None) \
            or next((n for n, s in TABLES.items() if heading.startswith(s)), None)
        if name is None or name in found:
            continue
        rows: dict[str, Spec] = {}
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
            assert len(cells) == 4, f"docs/protocol.md {name} table: a row without 4 cells: {row}"
            key_cell, type_cell, values_cell, _ = cells
            keys = re.findall(r"`([^`]+)`", key_cell)
            assert len(keys) == 1, f"docs/protocol.md {name} table: one key per row, got {key_cell!r}"
            type_part, _, flags = type_cell.partition(";")
            nullable = type_part.strip().endswith(" or nil")
            kind, item = _kind(type_part.replace(" or nil", ""))
            rows[keys[0]] = Spec(keys[0], kind, item, nullable, "omitted when nil" in flags,
                                 tuple(_clause(c) for c in _split(values_cell)),
                                 "`inf`" in values_cell)
        found[name] = rows
    return found


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, Spec]]:
    return parse_tables(DOC.read_text())


# --------------------------------------------------------------------------- validation


def _is(kind: str, v: Any) -> bool:
    return {"str": lambda: type(v) is str, "int": lambda: type(v) is int, "bool": lambda: type(v) is bool,
            "float": lambda: type(v) in (int, float), "array": lambda: type(v) is list,
            "map": lambda: type(v) is dict}.get(kind, lambda: type(v) is dict)()


def _in_range(v: float, bounds: tuple[Any, bool, Any, bool], k: int | None, where: str) -> str | None:
    lo, lo_open, hi, hi_open = bounds
    lo, hi = (k if lo == "K" else lo), (k if hi == "K" else hi)
    if lo is None or hi is None:
        return f"{where}: the range uses K, but the query had no options"
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return None if ok else f"{where}={v!r} outside {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _check(check: tuple[str, Any], v: Any, spec: Spec, k: int | None, where: str) -> list[str]:
    what, arg = check
    if what == "each":
        items = v.items() if isinstance(v, dict) else enumerate(v)
        return [p for i, x in items for p in _check(arg, x, spec, k, f"{where}[{i!r}]")]
    if what == "range":
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return [f"{where}={v!r} is not a number"]
        if math.isnan(v):
            return [f"{where} is NaN"]
        if math.isinf(v) and not spec.allows_inf:
            return [f"{where}={v!r}: the doc allows no inf here"]
        p = _in_range(v, arg, k, where)
        return [p] if p else []
    if what == "enum":
        sep = dict(spec.values).get("joined")
        parts = v.split(sep) if sep and v else [v]
        return [f"{where}={v!r} not one of {list(arg)}" for p in parts if p not in arg][:1]
    if what == "joined":
        return []
    if what == "keys":
        return [f"{where}: key {key!r} not one of {list(arg)}" for key in v if key not in arg]
    if what == "items":
        n = k if arg == "K" else arg
        return [] if len(v) == n else [f"{where}: {len(v)} items, the doc says {arg} ({n})"]
    if what == "max_items":
        return [] if len(v) <= arg else [f"{where}: {len(v)} items > {arg}"]
    if what == "max_chars":
        return [] if len(v) <= arg else [f"{where}: {len(v)} characters > {arg}"]
    if what == "sum":
        return [] if abs(sum(v) - arg) < 1e-6 else [f"{where}: sums to {sum(v)}, not {arg}"]
    raise AssertionError(what)


def validate(body: Any, table: str, tables: dict[str, dict[str, Spec]], k: int | None,
             where: str) -> list[str]:
    """Every way ``body`` (a msgpack map) breaks the doc's ``table``; [] when it matches."""
    specs = tables[table]
    if type(body) is not dict:
        return [f"{where}: not a map"]
    problems = [f"{where}: key {key!r} is not in docs/protocol.md's {table} table"
                for key in body if key not in specs]
    for key, spec in specs.items():
        at = f"{where}.{key}"
        if key not in body:
            if not spec.omittable:
                problems.append(f"{at}: documented, not sent (and not documented as omitted)")
            continue
        v = body[key]
        if v is None:
            if not spec.nullable:
                problems.append(f"{at} is nil; the doc's type does not allow nil")
            continue
        if not _is(spec.kind, v):
            problems.append(f"{at}={v!r:.80}: not a {spec.kind}")
            continue
        if spec.kind == "array" and spec.item is not None:
            for i, x in enumerate(v):
                if spec.item in tables:
                    problems += validate(x, spec.item, tables, k, f"{at}[{i}]")
                elif not _is(spec.item, x):
                    problems.append(f"{at}[{i}]={x!r:.80}: not a {spec.item}")
        if spec.kind == "map" and spec.item is not None:
            problems += [f"{at}[{kk!r}]={x!r}: not a {spec.item}" for kk, x in v.items() if not _is(spec.item, x)]
        if spec.kind in tables:
            problems += validate(v, spec.kind, tables, k, at)
        for check in spec.values:
            problems += _check(check, v, spec, k, at)
    return problems


# --------------------------------------------------------------------------- the live fleet


@dataclass
class Exchange:
    """One scenario: what was sent (a QUERY, or raw frames) and every message that came back
    (type byte, msgpack body)."""

    label: str
    query: Query | None
    got: list[tuple[int, Any]] = field(default_factory=list)

    @property
    def answer(self) -> tuple[int, Any]:
        return self.got[-1]

    @property
    def k(self) -> int | None:
        return len(self.query.options) if self.query is not None and self.query.options else None


def _with_generation_model(profiles: Path) -> None:
    """Give every expert a generation cost model (prefill + per token), so generation
    queries are planned with it, as real profiles are."""
    doc = json.loads(profiles.read_text())
    for e in doc["experts"].values():
        e["generation"] = {c: {"prefill_ms": {"value": 50.0, "source": "measured"},
                               "per_token_ms": {"value": 10.0, "source": "measured"},
                               "prefill_j": {"value": 0.5, "source": "modelled"},
                               "j_per_token": {"value": 0.1, "source": "modelled"}}
                           for c in doc["categories"]}
    profiles.write_text(json.dumps(doc, indent=1))


class Raw:
    """A DEALER on the frontend that keeps every frame: the answers' bodies as sent."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart([b"", *frames])

    def collect(self, ex: Exchange, timeout_s: float = 20.0, cancel_after_partials: int | None = None) -> Exchange:
        """Receive until the REPLY or ERROR of ``ex`` (an id of "" answers too)."""
        end = time.monotonic() + timeout_s
        qid = ex.query.id if ex.query is not None else ""
        while time.monotonic() < end:
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            assert frames[0] == b"" and frames[1] == PROTOCOL, frames[:2]
            kind, body = frames[2][0], msgpack.unpackb(frames[3], raw=False)
            if body.get("id") not in (qid, ""):
                continue  # a late answer of an earlier scenario
            ex.got.append((kind, body))
            if kind == PARTIAL and cancel_after_partials is not None \
                    and sum(t == PARTIAL for t, _ in ex.got) == cancel_after_partials:
                self.send(encode(Cancel(qid)))
            if kind in (REPLY, ERROR):
                return ex
        raise AssertionError(f"{ex.label}: no REPLY or ERROR in {timeout_s} s; got {ex.got}")

    def ask(self, label: str, q: Query, **kw: Any) -> Exchange:
        self.send(encode(q))
        return self.collect(Exchange(label, q), **kw)


OPTS = ("Mars", "Jupiter", "Venus", "Earth")
PLANET = "Which planet is largest? A. Mars B. Jupiter C. Venus D. Earth Answer:"
PARIS = "Tell me about Paris."


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exchange]:
    """The spread of queries against a toy fleet whose node-c answers 400 ms late."""
    assets = make_assets(tmp_path_factory.mktemp("protocol-doc"), "protocol-doc", seed=3)
    _with_generation_model(assets.profiles)
    fleet = start_fleet(assets, {SLOW_NODE: SLOW_MS})
    raw = Raw(fleet.frontend)
    slow = assets.experts[3]
    out: dict[str, Exchange] = {}

    def ask(label: str, q: Query, **kw: Any) -> None:
        out[label] = raw.ask(label, q, **kw)

    try:
        end = time.monotonic() + 30  # every node READY: a plan over all four experts
        while True:
            ex = raw.ask("warm-up", Query("warm", PLANET, options=OPTS, expert=slow))
            kind, body = ex.answer
            if kind == REPLY and len(body["plan"]["live"]) == 4 or time.monotonic() > end:
                break
            time.sleep(0.1)
        ask("degraded: tau 1, a 200 ms deadline, node-c late",
            Query("late", PLANET, options=OPTS, tau=1.0, deadline_ms=200.0))
        ask("deadline miss: pinned to the slow expert, 100 ms",
            Query("miss", PLANET, options=OPTS, expert=slow, deadline_ms=100.0))
        ask("options", Query("opt", PLANET, options=OPTS))
        ask("options, category, budget, continuation, top_k 1",
            Query("opt2", PLANET, options=OPTS[:2], category=assets.categories[1],
                  budget=WireBudget(energy_j=1e6, latency_ms=60_000.0), mode="continuation", top_k=1))
        ask("options, pinned expert", Query("pin", PLANET, options=OPTS, expert=assets.experts[0]))
        ask("greedy generation (vote of k)", Query("gen", PARIS, max_new_tokens=8))
        ask("greedy generation, streamed, k 1", Query("gens", PARIS, max_new_tokens=8, top_k=1, stream=True))
        ask("sampled generation, streamed, log-probs, stop",
            Query("samp", PARIS, max_new_tokens=12, stream=True,
                  sampling=Sampling(temperature=0.8, top_p=0.95, seed=7, stop=("paris",), logprobs=True,
                                    top_logprobs=2)))
        ask("sampled generation, pinned expert",
            Query("samppin", PARIS, max_new_tokens=6, expert=assets.experts[1],
                  sampling=Sampling(temperature=1.0, seed=3)))
        ask("infeasible options budget", Query("inf-opt", PLANET, options=OPTS, budget=WireBudget(energy_j=0.001)))
        ask("infeasible generation latency (max_new_tokens)",
            Query("inf-gen", PARIS, max_new_tokens=4000, budget=WireBudget(latency_ms=1000.0)))
        ask("infeasible generation energy",
            Query("inf-gen-j", PARIS, max_new_tokens=4000, budget=WireBudget(energy_j=1.0)))
        ask("cancelled mid-stream",
            Query("cancel", PARIS, max_new_tokens=32, expert=slow, stream=True,
                  sampling=Sampling(temperature=1.0, seed=1)), cancel_after_partials=1)
        ask("bad request: NaN budget", Query("nan", PLANET, options=OPTS, budget=WireBudget(energy_j=math.nan)))
        ask("bad request: unknown category", Query("cat", PLANET, options=OPTS, category="no-such-category"))
        ask("bad request: sampling with options",
            Query("sopt", PLANET, options=OPTS, sampling=Sampling(temperature=0.5)))
        ask("bad request: top_k and tau", Query("ktau", PLANET, options=OPTS, top_k=1, tau=0.5))
        ask("bad request: unknown pinned expert", Query("who", PLANET, options=OPTS, expert="nobody"))
        ask("bad request: an id over 256 characters", Query("x" * 300, PLANET, options=OPTS))
        raw.send([PROTOCOL, bytes([1]), b"\xc1 not msgpack"])
        out["protocol: undecodable body"] = raw.collect(Exchange("protocol: undecodable body", None))
        raw.send([PROTOCOL, bytes([1]), msgpack.packb({"id": "u", "prompt": "p", "colour": "red"})])
        out["protocol: unknown key"] = raw.collect(Exchange("protocol: unknown key", None))
        yield out
    finally:
        raw.close()
        fleet.stop()


EXPECTED = {  # scenario → the answer's type and (ERROR) code or (REPLY) plan status
    "degraded: tau 1, a 200 ms deadline, node-c late": (REPLY, "optimal"),
    "deadline miss: pinned to the slow expert, 100 ms": (ERROR, "deadline"),
    "options": (REPLY, "optimal"),
    "options, category, budget, continuation, top_k 1": (REPLY, "optimal"),
    "options, pinned expert": (REPLY, "optimal"),
    "greedy generation (vote of k)": (REPLY, "optimal"),
    "greedy generation, streamed, k 1": (REPLY, "optimal"),
    "sampled generation, streamed, log-probs, stop": (REPLY, "optimal"),
    "sampled generation, pinned expert": (REPLY, "optimal"),
    "infeasible options budget": (REPLY, "infeasible"),
    "infeasible generation latency (max_new_tokens)": (REPLY, "infeasible"),
    "infeasible generation energy": (REPLY, "infeasible"),
    "cancelled mid-stream": (ERROR, "cancelled"),
    "bad request: NaN budget": (ERROR, "bad_request"),
    "bad request: unknown category": (ERROR, "bad_request"),
    "bad request: sampling with options": (ERROR, "bad_request"),
    "bad request: top_k and tau": (ERROR, "bad_request"),
    "bad request: unknown pinned expert": (ERROR, "bad_request"),
    "bad request: an id over 256 characters": (ERROR, "bad_request"),
    "protocol: undecodable body": (ERROR, "protocol"),
    "protocol: unknown key": (ERROR, "protocol"),
}
TABLE_OF = {REPLY: "REPLY", ERROR: "ERROR", PARTIAL: "PARTIAL"}


# --------------------------------------------------------------------------- the tests


def test_the_tables_parse_and_name_every_field_of_the_messages(tables):
    """Each table is found, and its keys are the message's fields; a key documented as
    omitted when nil is exactly a field added after the first release."""
    assert set(tables) == set(TABLES), f"tables found in docs/protocol.md: {sorted(tables)}"
    for name, cls in DATACLASS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(tables[name]) == set(fields), (name, sorted(tables[name]), sorted(fields))
        for key, spec in tables[name].items():
            assert spec.omittable == bool(fields[key].metadata.get("added")), (name, key)


def test_every_scenario_got_the_answer_it_should(live):
    got = {label: (ex.answer[0], ex.answer[1].get("code") if ex.answer[0] == ERROR else ex.answer[1]["plan"]["status"])
           for label, ex in live.items() if label in EXPECTED}
    assert got == EXPECTED


def test_every_live_message_matches_the_tables(live, tables):
    problems, seen = [], set()
    for label, ex in live.items():
        for i, (kind, body) in enumerate(ex.got):
            seen.add(TABLE_OF[kind])
            problems += validate(body, TABLE_OF[kind], tables, ex.k, f"[{label}] message {i} {TABLE_OF[kind]}")
            if kind == REPLY:
                seen.add("plan")
                for use in body["experts"]:
                    seen.add("expert use")
                    seen.update({"token log-prob"} if use.get("token_logprobs") else set())
    assert not problems, "live messages that docs/protocol.md does not describe:\n" + "\n".join(problems)
    assert seen == set(TABLES), f"tables never exercised: {set(TABLES) - seen}"


def test_which_stages_appear_when(live):
    """docs/protocol.md, *Which stages appear when*."""
    all_seven = {"embed", "gate", "queue", "select", "fanout", "aggregate", "total"}
    for label, ex in live.items():
        kind, body = ex.answer
        if kind != REPLY:
            continue
        stages = body["stage_ms"]
        assert math.isclose(stages["total"], body["total_ms"]), label
        if body["plan"]["status"] == "optimal":
            assert set(stages) == all_seven, (label, stages)
        else:  # decided at admission, before the prompt was embedded
            assert set(stages) == all_seven - {"queue"}, (label, stages)
            assert stages["embed"] == stages["gate"] == stages["fanout"] == stages["aggregate"] == 0.0, label


def test_an_infeasible_reply_is_as_documented(live):
    for label in ("infeasible options budget", "infeasible generation latency (max_new_tokens)",
                  "infeasible generation energy"):
        r = live[label].answer[1]
        plan = r["plan"]
        assert r["answer_index"] is None and r["probabilities"] is None and r["text"] is None, label
        assert r["experts"] == [] and plan["experts"] == [] and plan["objective"] is None, label
        assert r["energy_j"] == 0.0 and r["energy_source"] == "" and r["degraded"] is False, label
        assert r["reasons"] and r["reasons"][0] in plan["message"], label
        assert "finish_reason" not in r and "token_logprobs" not in r, label
    # min_energy_j is nil when the latency budget binds for every expert, whatever the joules
    gen = live["infeasible generation latency (max_new_tokens)"].answer[1]["plan"]
    assert gen["min_energy_j"] is None and gen["min_latency_ms"] > 1000.0, gen
    opt = live["infeasible options budget"].answer[1]["plan"]
    assert opt["min_energy_j"] > 0.001 and opt["min_latency_ms"] is None, opt
    energy = live["infeasible generation energy"].answer[1]["plan"]
    assert energy["min_energy_j"] > 1.0 and energy["min_latency_ms"] is None, energy


def test_the_objective_is_the_planners_log_likelihood(live):
    """With the default objective (``loglik``) plan.objective is a mean log-likelihood: ≤ 0,
    not an accuracy."""
    objectives = [ex.answer[1]["plan"]["objective"] for ex in live.values()
                  if ex.answer[0] == REPLY and ex.answer[1]["plan"]["status"] == "optimal"]
    assert objectives and all(o is not None and o <= 0 for o in objectives), objectives
    assert any(o < 0 for o in objectives), objectives


def test_answers_degraded_late_pinned_and_sampled_as_documented(live):
    late = live["degraded: tau 1, a 200 ms deadline, node-c late"].answer[1]
    statuses = {u["name"]: u["status"] for u in late["experts"]}
    assert late["degraded"] and "late" in statuses.values() and "ok" in statuses.values(), late
    assert len(late["reasons"]) == sum(s != "ok" for s in statuses.values()), late
    for use in late["experts"]:
        if use["status"] == "late":
            assert use["compute_ms"] == use["energy_j"] == 0.0 and use["energy_source"] == "" and use["error"], use
    assert math.isclose(sum(u["weight"] for u in late["experts"]), 1.0), late
    pinned = live["options, pinned expert"].answer[1]
    assert [u["name"] for u in pinned["experts"]] == [pinned["plan"]["experts"][0]] == [pinned["experts"][0]["name"]]
    sampled = live["sampled generation, streamed, log-probs, stop"].answer[1]
    assert len(sampled["experts"]) == 1, "a sampled generation is answered by one expert"
    (use,) = sampled["experts"]
    assert sampled["finish_reason"] == use["finish_reason"] in ("stop", "length")
    assert sampled["token_logprobs"] == use["token_logprobs"] and len(use["token_logprobs"]) == use["n_tokens"]
    for t in use["token_logprobs"]:
        assert len(t["top_tokens"]) == len(t["top_logprobs"]) == 2, t
        assert t["top_logprobs"] == sorted(t["top_logprobs"], reverse=True), t
    greedy = live["greedy generation (vote of k)"].answer[1]
    assert greedy["text"] is not None and greedy["finish_reason"] in ("stop", "length")
    assert "token_logprobs" not in greedy, "omitted when nil"


def test_partials_come_in_order_and_build_a_prefix_of_the_text(live):
    for label in ("greedy generation, streamed, k 1", "sampled generation, streamed, log-probs, stop"):
        ex = live[label]
        parts = [b for t, b in ex.got if t == PARTIAL]
        reply = ex.answer[1]
        assert parts, f"{label}: streamed, yet no PARTIAL"
        assert [p["index"] for p in parts] == list(range(len(parts))), label
        assert reply["text"].startswith("".join(p["text"] for p in parts)), label
        assert {p["expert"] for p in parts} == {reply["experts"][0]["name"]}, label
    cancelled = live["cancelled mid-stream"]
    assert [t for t, _ in cancelled.got][0] == PARTIAL and cancelled.answer[0] == ERROR


def test_errors_echo_the_id_or_empty_and_retry_after_only_when_overloaded(live):
    for label, ex in live.items():
        kind, body = ex.answer
        if kind != ERROR:
            continue
        assert body["retry_after_ms"] is None or body["code"] == "overloaded", (label, body)
        sent = ex.query.id if ex.query is not None else None
        if body["code"] == "protocol" or sent is None or len(sent) > 256:
            assert body["id"] == "", (label, body)
        else:
            assert body["id"] == sent, (label, body)
