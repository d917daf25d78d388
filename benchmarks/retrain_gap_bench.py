"""Claim 1 (optimality-preserving gate), measured: masked θ* vs a gate retrained on S.

For R random subsets S of the experts, compare the test-split loss of the full gate
masked to S (no retraining) with a gate retrained on S alone, for a gate trained with the
plain full-set objective (``subset_dropout=0``) and with subset dropout (the default).
Run: ``.venv/bin/python benchmarks/retrain_gap_bench.py [--calibration T.npz] [--subsets 30]``
(default table: the committed SYNTHETIC example). Prints one line per gate variant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_moe.calibration import load_calibration  # noqa: E402
from gating.offline.retrain_gap import retrain_gap  # noqa: E402
from gating.planning.gate import GateConfig, train_gate  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    calibration: str = "configs/example/calibration.synthetic.npz",
    subsets: int = 30,
    seed: int = 0,
    json_path: Annotated[str | None, typer.Option("--json", help="also write the reports here")] = None,
) -> None:
    table = load_calibration(calibration)
    out = {}
    for rate in (0.0, 0.5):
        gate = train_gate(table, GateConfig(subset_dropout=rate, seed=seed))
        report = retrain_gap(table, gate, n_subsets=subsets, seed=seed)
        print(f"subset_dropout={rate}: full-set val NLL {gate.best_val_nll:.4f}; {report.summary()}")
        out[f"subset_dropout={rate}"] = {"full_val_nll": gate.best_val_nll, **report.to_json()}
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    app()
