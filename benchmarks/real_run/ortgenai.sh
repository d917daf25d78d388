#!/usr/bin/env bash
# The onnxruntime-genai builder beside the torch exporter (benchmarks/results/ortgenai.md):
# build fp32 (parity against torch), int8 and int4 (top-1 agreement with the fp32 build) for
# SmolLM2 and Qwen-0.5B, then the runner benchmark on both models.
#   bash benchmarks/real_run/ortgenai.sh
# SmolLM2's int4 fails the 0.8 agreement gate (0.700), so it is built with --no-parity here
# and measured by the benchmark; without --no-parity the export stops with a ParityError.
set -euo pipefail
EM=".venv/bin/edge-moe"
$EM export smollm2-135m-instruct --builder ortgenai --precision fp32
$EM export smollm2-135m-instruct --builder ortgenai --precision int8
$EM export smollm2-135m-instruct --builder ortgenai --precision int4 --no-parity
for p in fp32 int8 int4; do $EM export qwen2.5-coder-0.5b-instruct --builder ortgenai --precision "$p"; done
.venv/bin/python benchmarks/runner_bench.py --rounds 3 --json benchmarks/results/runner_bench.json
.venv/bin/python benchmarks/runner_bench.py --rounds 2 --asset qwen2.5-coder-0.5b-instruct \
  --backends torch,ort-fp32,ort-int8,genai-fp32,genai-int8,genai-int4 \
  --json benchmarks/results/runner_bench_qwen0.5b.json
