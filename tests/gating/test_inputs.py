"""gating.inputs: the profiles' generation cost model, aligned like the scoring costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gating.inputs import load_inputs
from gating.synthetic import write_toy_inputs


def _gen(pre: float, tok: float) -> dict:  # type: ignore[type-arg]
    return {"prefill_ms": {"value": pre, "source": "measured"}, "per_token_ms": {"value": tok, "source": "measured"},
            "prefill_j": {"value": pre / 100, "source": "modelled"},
            "j_per_token": {"value": tok / 100, "source": "modelled"}}


def test_generation_costs_in_gate_and_table_order(tmp_path: Path) -> None:
    table, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=3, embedding_dim=8, seed=1, n_samples=120,
                                              n_categories=2)
    plain = load_inputs(cal, prof, gate)
    assert plain.generation is None and plain.generation_missing == plain.experts  # an old file: none
    assert "lack a generation cost model" in plain.generation_message and str(prof) in plain.generation_message
    doc = json.loads(prof.read_text())
    # the file lists experts and categories in reverse: the inputs must put them back in order
    doc["experts"] = dict(reversed(list(doc["experts"].items())))
    doc["categories"] = list(reversed(doc["categories"]))
    for i, e in enumerate(table.experts):
        doc["experts"][e]["generation"] = {c: _gen(100.0 * (i + 1) + j, float(i + 1))
                                           for j, c in enumerate(table.category_names)}
    prof.write_text(json.dumps(doc))
    inputs = load_inputs(cal, prof, gate)
    assert inputs.generation is not None and inputs.generation_missing == () and inputs.generation_message == ""
    n, c = len(inputs.experts), len(inputs.categories)
    assert inputs.generation.prefill_ms.shape == inputs.latency_ms.shape == (n, c)
    want = np.array([[100.0 * (table.experts.index(e) + 1) + table.category_names.index(k) + 8 * (
        table.experts.index(e) + 1) for k in inputs.categories] for e in inputs.experts])
    np.testing.assert_allclose(inputs.generation.latency_ms(8), want)
    np.testing.assert_allclose(inputs.generation.energy_j(8), want / 100)
    # one expert without it: None, and the message names it
    del doc["experts"][table.experts[1]]["generation"]
    prof.write_text(json.dumps(doc))
    inputs = load_inputs(cal, prof, gate)
    assert inputs.generation is None and inputs.generation_missing == (table.experts[1],)
    assert repr([table.experts[1]]) in inputs.generation_message
