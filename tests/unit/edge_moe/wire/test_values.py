"""edge_moe.wire.values: the one NaN/inf → JSON rule, in its two documented conventions (NaN as
"nan" for messages and plan files, NaN as null for benchmark records), and finite_or_none."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_moe.wire import Result, finite_or_none, json_float, json_safe, short_repr, to_json


@pytest.mark.parametrize("nan_as_null, nan", [(False, "nan"), (True, None)], ids=["nan string", "nan null"])
def test_json_float_in_both_conventions(nan_as_null, nan):
    def f(v):
        return json_float(v, nan_as_null=nan_as_null)

    assert f(math.nan) == nan and f(np.float32("nan")) == nan
    assert f(math.inf) == "inf" and f(-np.inf) == "-inf"  # the infinities agree in both
    assert f(None) is None
    assert f(0.5) == 0.5 and type(f(np.float32(0.5))) is float and type(f(np.int64(3))) is float


def test_json_float_defaults_to_nan_as_a_string():
    assert json_float(math.nan) == "nan"


@pytest.mark.parametrize("nan_as_null, nan", [(False, "nan"), (True, None)], ids=["nan string", "nan null"])
def test_json_safe_walks_nested_values_and_is_strict_json(nan_as_null, nan):
    value = {"a": [1.0, math.inf, (math.nan, -math.inf)], "b": {"c": 2, "d": True, "e": "s", "f": None}}
    out = json_safe(value, nan_as_null=nan_as_null)
    assert out == {"a": [1.0, "inf", [nan, "-inf"]], "b": {"c": 2, "d": True, "e": "s", "f": None}}
    assert type(out["b"]["c"]) is int and type(out["b"]["d"]) is bool
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_to_json_writes_nan_as_a_string():
    r = Result("t", "e", math.nan, math.inf, "modelled", (-math.inf, 0.0))
    out = to_json(r)
    assert out["compute_ms"] == "nan" and out["energy_j"] == "inf" and out["logprobs"] == ["-inf", 0.0]
    json.dumps(out, allow_nan=False)


def test_finite_or_none_drops_nan_and_keeps_the_infinities():
    assert finite_or_none(math.nan) is None and finite_or_none(None) is None
    assert finite_or_none(math.inf) == math.inf and finite_or_none(3) == 3.0


def test_short_repr_cuts_long_values():
    assert short_repr("ab") == "'ab'"
    cut = short_repr("x" * 100, limit=20)
    assert len(cut) == 20 and cut.endswith("...")
