#!/usr/bin/env bash
# Step 2 of the real run (issue 4): score the fixed stratified MMLU subset with each expert.
# Resumable: the work folder under benchmarks/results/mmlu/ keeps every scored sample, so
# rerunning continues where a run stopped. Experts run one per process (1 onnxruntime thread
# each) so that two can share this 2-core machine; finish.sh then assembles the table.
#   bash benchmarks/real_run/calibrate.sh EXPERT     # score one expert (resumes)
# EXPERT is one of smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct
# qwen2.5-coder-0.5b-instruct:int8 qwen2.5-coder-1.5b-instruct qwen2.5-coder-1.5b-instruct:int8.
# The committed run: every expert but SmolLM2 first with LIMIT=627, then each again
# without LIMIT up to the full 1,254 (wall times are in the closing note of issue 4).
#   LIMIT=627 bash benchmarks/real_run/calibrate.sh EXPERT   # only the first 627 listed (11 per topic)
set -euo pipefail
EM=".venv/bin/edge-moe"
R=benchmarks/results/mmlu
COMMON=(--work "$R/work" --dataset mmlu --per-topic 22 --seed 0 --threads 1)
e="$1"
$EM calibrate --expert "$e" "${COMMON[@]}" ${LIMIT:+--limit "$LIMIT"} --out "$R/partial/${e//:/-}.npz"
