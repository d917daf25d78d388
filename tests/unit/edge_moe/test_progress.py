"""Progress and logging: library code reports through the callback and draws nothing; the
``edge-moe`` callback sets the log level from ``-v``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from edge_moe.cli import app
from edge_moe.jobs.logs import THIRD_PARTY_LOGGERS
from edge_moe.jobs.progress_bar import progress_bar
from edge_moe.paths import CONFIGS
from edge_moe.progress import ProgressCallback
from gating.offline.synthetic import make_synthetic_table
from gating.planning.gate import PROGRESS_TASK, GateConfig, train_gate


class Recorder:
    """A ProgressCallback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def __call__(self, task: str, completed: int, total: int | None) -> None:
        self.calls.append((task, completed, total))


@pytest.mark.parametrize(("max_epochs", "patience", "early"), [(4, 50, False), (300, 1, True)])
def test_train_gate_reports_every_epoch_and_draws_nothing(max_epochs: int, patience: int, early: bool,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    table, _ = make_synthetic_table(n_samples=120, n_experts=3, embedding_dim=8, seed=1)
    rec = Recorder()
    callback: ProgressCallback = rec
    gate = train_gate(table, GateConfig(hidden_dim=8, max_epochs=max_epochs, patience=patience),
                      progress=callback)
    epochs = len(gate.history)
    assert (epochs < max_epochs) == early
    assert {task for task, _, _ in rec.calls} == {PROGRESS_TASK}
    assert rec.calls[0] == (PROGRESS_TASK, 0, max_epochs)
    assert [c for _, c, _ in rec.calls] == list(range(epochs + 1))  # one report per epoch, in order
    assert rec.calls[-1] == (PROGRESS_TASK, epochs, epochs)  # done: completed == total (early stop or not)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_bar_draws_nothing_off_a_terminal() -> None:
    with progress_bar(True) as bar:  # pytest's captured stderr is not a terminal
        assert bar is None
    with progress_bar(False) as bar:
        assert bar is None


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", *THIRD_PARTY_LOGGERS)
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


@pytest.mark.parametrize(("args", "level"), [([], logging.WARNING), (["-v"], logging.INFO),
                                             (["-vv"], logging.DEBUG), (["--verbose"], logging.INFO)])
def test_verbose_sets_the_root_level(args: list[str], level: int, restore_logging: None) -> None:
    res = CliRunner().invoke(app, [*args, "check-config", str(CONFIGS / "fleet.example.yaml")])
    assert res.exit_code == 0, res.output
    assert logging.getLogger().level == level
    quiet = logging.getLogger("ray").level == logging.ERROR
    assert quiet == (level != logging.DEBUG)  # the third-party filter, lifted by -vv
