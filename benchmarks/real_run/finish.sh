#!/usr/bin/env bash
# Step 3 of the real run (issue 4), after calibrate.sh has scored every expert:
#  a) the table over the samples every expert finished (--no-score: nothing more is scored);
#  b) latency re-measured with the machine otherwise idle: each expert alone, one after
#     another, 2 onnxruntime threads (the whole machine, as a node would use it), on the first
#     114 listed samples (2 per topic). The main
#     run shared the 2 cores between several experts and exports, which inflates its
#     latencies; its sidecar is kept beside the table for comparison;
#  c) profiles: measured latency + modelled energy on this machine's class (cpu), and the
#     same projected to a Jetson AGX Orin with its cited throughput factor.
#   bash benchmarks/real_run/finish.sh
set -euo pipefail
EM=".venv/bin/edge-moe"
R=benchmarks/results/mmlu
EXPERTS=(smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-0.5b-instruct:int8
         qwen2.5-coder-1.5b-instruct qwen2.5-coder-1.5b-instruct:int8)
args=(); for e in "${EXPERTS[@]}"; do args+=(--expert "$e"); done
$EM calibrate "${args[@]}" --work "$R/work" --dataset mmlu --per-topic 22 --seed 0 --threads 1 --no-score \
  --out "$R/calibration.npz"
L="$R/latency-work"
mkdir -p "$L" && cp "$R/work/samples.jsonl" "$R/work/embeddings.npy" "$L/"   # same list: reuse the embeddings
$EM calibrate "${args[@]}" --work "$L" --dataset mmlu --per-topic 22 --seed 0 --threads 2 --limit 114 \
  --out "$R/latency-idle.npz"
$EM profile "$R/latency-idle.latency.json" --device-class cpu --out "$R/profiles.cpu.json"
$EM profile "$R/latency-idle.latency.json" --device-class jetson-agx-orin --out "$R/profiles.orin.json"
