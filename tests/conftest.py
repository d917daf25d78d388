"""Fixtures shared by both tiers: the toy fleet's files (:mod:`tests.toyfleet`)."""

from __future__ import annotations

import pytest

from tests.toyfleet import Assets, make_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """The serving tests' toy fleet: 4 experts on 3 nodes, seed 3."""
    return make_assets(tmp_path_factory.mktemp("serving"), "serving-test", seed=3)
