"""The coordinator's objective: read from the fleet file, used by the router, temperatures in the mix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_moe.config import BudgetConfig, load_fleet
from edge_moe.errors import ConfigError
from gating.coordinator.aggregate import mix_options
from gating.coordinator.routing import load_router
from gating.offline.synthetic import write_toy_inputs

CONFIGS = Path(__file__).resolve().parents[4] / "configs"


def _fleet(tmp_path: Path, **coordinator: object) -> Path:
    raw = yaml.safe_load((CONFIGS / "fleet.local.yaml").read_text())
    raw["device_classes"] = yaml.safe_load((CONFIGS / "device_classes.yaml").read_text())
    raw["coordinator"].update(coordinator)
    p = tmp_path / "fleet.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_fleet_objective_defaults_to_loglik_and_is_checked(tmp_path: Path) -> None:
    assert load_fleet(CONFIGS / "fleet.local.yaml").coordinator.objective == "loglik"
    assert load_fleet(_fleet(tmp_path, objective="accuracy")).coordinator.objective == "accuracy"
    with pytest.raises(ConfigError, match=r"coordinator\.objective='nll' is not one of \['accuracy', 'loglik'\]"):
        load_fleet(_fleet(tmp_path, objective="nll"))


def test_router_plans_with_the_named_objective(tmp_path: Path) -> None:
    _, cal, prof, gate = write_toy_inputs(tmp_path, n_experts=3, embedding_dim=8, seed=6, n_samples=150,
                                          n_categories=2)
    mask = np.array([True, True, False])
    ll = load_router(gate, cal, prof, BudgetConfig()).objective(2, None)
    acc = load_router(gate, cal, prof, BudgetConfig(), objective="accuracy").objective(2, None)
    assert ll.metric == "neg_nll" and acc.metric == "accuracy"
    assert ll(mask) < 0 < acc(mask) <= 1


def test_mix_options_applies_temperature_after_the_prior() -> None:
    lp = {"a": np.log([0.7, 0.1, 0.1, 0.1]), "b": np.log([0.25, 0.25, 0.25, 0.25])}
    prior = {"a": np.log([0.25] * 4), "b": np.log([0.25] * 4)}  # flat: the prior changes nothing
    plain, corrected = mix_options({"a": 1.0}, lp, prior)
    assert corrected and plain == pytest.approx([0.7, 0.1, 0.1, 0.1])
    hot, _ = mix_options({"a": 1.0}, lp, prior, {"a": 2.0})
    z = np.array([0.7, 0.1, 0.1, 0.1]) ** 0.5  # softmax(log p / 2)
    assert hot == pytest.approx(z / z.sum())
    same, _ = mix_options({"a": 1.0}, lp, prior, {"b": 9.0})  # a missing from the map: T = 1
    assert same == pytest.approx(plain)
    assert float(mix_options({"a": 0.5, "b": 0.5}, lp, prior, {"a": 2.0})[0].sum()) == pytest.approx(1.0, abs=1e-6)
