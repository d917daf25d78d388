"""edge_moe.wire.checks: the value rules, each written once (a QUERY's limits, top_k or tau,
budgets, the prompt size, the id an ERROR echoes, a RESULT against its TASK)."""

from __future__ import annotations

import math

import pytest

from edge_moe.wire import (
    MAX_ID_CHARS,
    Query,
    Result,
    WireBudget,
    budget_problem,
    check_query,
    check_result,
    echo_id,
    k_or_tau_problem,
    prompt_size_problem,
)

# ---------------------------------------------------------------- top_k or tau


@pytest.mark.parametrize("top_k, tau", [(None, None), (3, None), (None, 0.5)],
                         ids=["neither", "top_k alone", "tau alone"])
def test_k_or_tau_takes_one_or_neither(top_k, tau):
    assert k_or_tau_problem(top_k, tau) is None


def test_k_or_tau_refuses_both_and_names_them():
    assert k_or_tau_problem(2, 0.5) == "give top_k or tau, not both (got top_k=2, tau=0.5)"
    assert k_or_tau_problem(1, 1.0) is not None  # any values: the rule is about presence


def test_check_query_applies_the_one_k_or_tau_rule():
    q = Query("q", "p", top_k=2, tau=0.5)
    assert check_query(q) == k_or_tau_problem(2, 0.5) == "give top_k or tau, not both (got top_k=2, tau=0.5)"
    assert check_query(Query("q", "p", top_k=2)) is None
    assert check_query(Query("q", "p", tau=0.5)) is None


# ---------------------------------------------------------------- budgets and queries


@pytest.mark.parametrize("budget, message", [  # docs/protocol.md's example text, word for word
    (WireBudget(energy_j=math.nan), "budget.energy_j=nan must be a number >= 0 (inf for no budget)"),
    (WireBudget(latency_ms=-1.0), "budget.latency_ms=-1.0 must be a number >= 0 (inf for no budget)"),
])
def test_budget_problem_refuses_nan_and_negative(budget, message):
    assert budget_problem(budget) == message
    assert check_query(Query("q", "p", budget=budget)) == message


@pytest.mark.parametrize("budget", [WireBudget(), WireBudget(math.inf, math.inf), WireBudget(0.0, 5.0)])
def test_budget_problem_takes_defaults_inf_and_zero(budget):
    assert budget_problem(budget) is None


@pytest.mark.parametrize("query, needle", [
    (Query("", "p"), "id must be 1..256 characters, got 0"),
    (Query("x" * (MAX_ID_CHARS + 1), "p"), "id must be 1..256"),
    (Query("q", "  "), "prompt is empty"),
    (Query("q", "p", options=()), "options must hold 1..26"),
    (Query("q", "p", mode="guess"), "mode='guess' is not one of ['letter', 'continuation']"),
    (Query("q", "p", max_new_tokens=0), "max_new_tokens=0 must be in 1..4096"),
    (Query("q", "p", top_k=0), "top_k=0 must be >= 1"),
    (Query("q", "p", tau=1.5), "tau=1.5 must be in (0, 1]"),
    (Query("q", "p", deadline_ms=0.0), "deadline_ms=0.0 must be in (0, 600000]"),
    (Query("q", "p", expert=""), "expert must be 1..256 characters"),
])
def test_check_query_names_the_rule_broken(query, needle):
    problem = check_query(query)
    assert problem is not None and needle in problem


def test_check_query_passes_a_plain_query():
    assert check_query(Query("q", "Which?", ("a", "b"), category="math", deadline_ms=100.0)) is None


# ---------------------------------------------------------------- prompt size and echoed ids


def test_prompt_size_counts_utf8_bytes_and_options():
    assert prompt_size_problem("a" * 10, 10) is None
    assert "prompt is 11 bytes" in prompt_size_problem("a" * 11, 10)  # type: ignore[operator]
    assert "prompt is 12 bytes" in prompt_size_problem("é" * 6, 10)  # type: ignore[operator]
    assert "prompt and options are 12 bytes" in prompt_size_problem("a" * 8, 10, ("ab", "cd"))  # type: ignore[operator]


def test_echo_id_only_echoes_a_valid_id():
    assert echo_id("q1") == "q1"
    assert echo_id("") == "" and echo_id("x" * (MAX_ID_CHARS + 1)) == ""


# ---------------------------------------------------------------- results

LOGPROBS = (math.log(0.25), math.log(0.75))


def result(**kw) -> Result:
    base = dict(id="t", expert="e", compute_ms=1.0, energy_j=0.5, energy_source="modelled", logprobs=LOGPROBS)
    return Result(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("r, options, needle", [
    (result(expert="f"), ("a", "b"), "the TASK went to expert 'e'"),
    (result(compute_ms=math.nan), ("a", "b"), "compute_ms=nan must be a finite number >= 0"),
    (result(energy_j=-1.0), ("a", "b"), "energy_j=-1.0 must be a finite number >= 0"),
    (result(energy_source="guessed"), ("a", "b"), "energy_source='guessed' is not one of"),
    (result(logprobs=LOGPROBS[:1]), ("a", "b"), "got 1 log-probs for 2 options"),
    (result(logprobs=(0.0, 0.0)), ("a", "b"), "not renormalised"),
    (result(logprobs=(0.0, -math.inf)), ("a", "b"), "must all be finite"),
    (result(text="x"), ("a", "b"), "got a text too"),
    (result(logprobs=None), None, "needs a text"),
    (result(text="x"), None, "takes a text, got 2 log-probs"),
])
def test_check_result_names_the_problem(r, options, needle):
    problem = check_result(r, "e", options)
    assert problem is not None and needle in problem


def test_check_result_passes_sane_results():
    assert check_result(result(), "e", ("a", "b")) is None
    assert check_result(result(logprobs=None, text="hi", n_tokens=2), "e", None) is None
