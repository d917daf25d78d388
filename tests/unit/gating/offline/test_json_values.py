"""gating.offline.json_values: records with numpy values and non-finite floats become plain JSON."""

from __future__ import annotations

import json
import math

import numpy as np

from gating.offline.json_values import json_number, jsonable


def test_json_number() -> None:
    assert json_number(None) is None
    assert json_number(math.nan) is None and json_number(np.float32("nan")) is None
    assert json_number(math.inf) == "inf" and json_number(-np.inf) == "-inf"
    assert json_number(np.float32(0.5)) == 0.5 and type(json_number(np.int64(3))) is float


def test_jsonable_round_trips_through_strict_json() -> None:
    record = {1: (np.int64(2), np.bool_(True), np.array([0.5, math.nan])), "f": np.float64(-math.inf),
              "nested": [{"ok": True, "s": "text", "none": None}]}
    out = jsonable(record)
    assert out == {"1": [2, True, [0.5, None]], "f": "-inf", "nested": [{"ok": True, "s": "text", "none": None}]}
    assert type(out["1"][0]) is int and type(out["1"][1]) is bool
    assert json.loads(json.dumps(out, allow_nan=False)) == out
