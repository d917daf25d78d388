#!/usr/bin/env bash
# Step 2 of the real run (issue 4): score the fixed stratified MMLU subset with each expert.
# Resumable: the work folder under benchmarks/results/mmlu/ keeps every scored sample, so
# rerunning continues where a run stopped. Experts run one per process (1 onnxruntime thread
# each) so that two can share this 2-core machine; the last command only assembles the table.
#   bash benchmarks/real_run/calibrate.sh EXPERT     # score one expert (resumes)
#   LIMIT=627 bash benchmarks/real_run/calibrate.sh EXPERT   # only the first 627 listed (11 per topic)
#   bash benchmarks/real_run/calibrate.sh table      # write the table over all experts
set -euo pipefail
EM=".venv/bin/edge-moe"
R=benchmarks/results/mmlu
COMMON=(--work "$R/work" --dataset mmlu --per-topic 22 --seed 0 --threads 1)
EXPERTS=(smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-0.5b-instruct:int8
         qwen2.5-coder-1.5b-instruct qwen2.5-coder-1.5b-instruct:int8)
if [ "${1:-}" = "table" ]; then
  args=(); for e in "${EXPERTS[@]}"; do args+=(--expert "$e"); done
  $EM calibrate "${args[@]}" "${COMMON[@]}" --out "$R/calibration.npz"
  $EM profile "$R/calibration.latency.json" --device-class cpu --out "$R/profiles.cpu.json"
  $EM profile "$R/calibration.latency.json" --device-class jetson-agx-orin --out "$R/profiles.orin.json"
else
  e="$1"
  $EM calibrate --expert "$e" "${COMMON[@]}" ${LIMIT:+--limit "$LIMIT"} --out "$R/partial/${e//:/-}.npz"
fi
