#!/usr/bin/env bash
# Step 3 of the real run (issue 4): the MoE² report on the committed real MMLU table and the
# profiles measured on this machine (latency measured, energy modelled).
#   bash benchmarks/real_run/report.sh      -> benchmarks/results/moe2/REPORT.md + PNGs
set -euo pipefail
R=benchmarks/results/mmlu
.venv/bin/python benchmarks/reproduce_moe2.py --table "$R/calibration.npz" --profiles "$R/profiles.cpu.json" \
  --out benchmarks/results/moe2 --top-k 2 --tau 0.8 --subsets 30 --seed 0
