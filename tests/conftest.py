"""Fixtures shared by both tiers: the toy fleet's files (:mod:`tests.toyfleet`), and the
``SKIP_SLOW`` switch."""

from __future__ import annotations

import os

import pytest

from tests.toyfleet import Assets, make_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """The serving tests' toy fleet: 4 experts on 3 nodes, seed 3."""
    return make_assets(tmp_path_factory.mktemp("serving"), "serving-test", seed=3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``SKIP_SLOW=1`` skips the tests marked ``slow`` (real models, long runs), saying so."""
    if os.environ.get("SKIP_SLOW", "") not in ("1", "true", "yes"):
        return
    skip = pytest.mark.skip(reason="SKIP_SLOW=1: a real-model or long-running test")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
