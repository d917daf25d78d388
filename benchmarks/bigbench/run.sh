#!/usr/bin/env bash
# The BIG-bench run (issue 14, item 4), step by step; the rule is benchmarks/bigbench/RULE.md.
#   bash benchmarks/bigbench/run.sh dataset          # the JSONL from the sdist (RULE.md)
#   bash benchmarks/bigbench/run.sh export           # the experts' artifacts (cached)
#   bash benchmarks/bigbench/run.sh score EXPERT     # score one expert (resumable, 1 thread;
#                                                  LIMIT=N: only the first N listed)
#   bash benchmarks/bigbench/run.sh table            # the table over what every expert finished
#   bash benchmarks/bigbench/run.sh report           # profiles + REPORT.md (MMLU's report code)
# The same with each question's options shuffled (seeded), on the committed table's 150 questions
# (LIMIT, default 150: the first N listed, the samples every expert finished in the file-order run):
#   bash benchmarks/bigbench/run.sh dataset-shuffled # bigbench_mc.jsonl, options permuted (seed 0)
#   bash benchmarks/bigbench/run.sh score-shuffled EXPERT
#   bash benchmarks/bigbench/run.sh table-shuffled EXPERT...   # default: every expert of EXPERTS
#   bash benchmarks/bigbench/run.sh report-shuffled
#   bash benchmarks/bigbench/run.sh compare-shuffled # baselines + file order vs shuffled (compare.md)
# Experts run one per process (1 onnxruntime thread each, nice 10) so two share the 2 cores.
set -euo pipefail
EM=".venv/bin/edge-moe"
PY=".venv/bin/python"
R=benchmarks/results/bigbench
DATA=benchmarks/bigbench/bigbench_mc.jsonl
COMMON=(--work "$R/work" --dataset "$DATA" --per-topic 0 --seed 0 --threads 1 --no-progress --generation-prompts 0)
RS=benchmarks/results/bigbench_shuffled
DATA_S="$RS/bigbench_mc_shuffled.jsonl"
COMMON_S=(--work "$RS/work" --dataset "$DATA_S" --per-topic 0 --seed 0 --threads 1 --no-progress --generation-prompts 0)
# The experts scored, in RULE.md's priority; the 1.5B model through onnxruntime-genai's builder.
EXPERTS=(smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-0.5b-instruct:int8
         qwen2.5-coder-1.5b-instruct:ortgenai-fp32 gemma3-270m)
case "${1:-}" in
  dataset) $PY benchmarks/bigbench/make_dataset.py ;;
  export)
    $EM export smollm2-135m-instruct
    $EM export qwen2.5-coder-0.5b-instruct
    $EM export qwen2.5-coder-0.5b-instruct --precision int8
    /usr/bin/time -v $EM export qwen2.5-coder-1.5b-instruct --builder ortgenai --precision fp32
    $EM export gemma3-270m ;;
  score)
    e="$2"
    nice -n 10 $EM calibrate --expert "$e" "${COMMON[@]}" ${LIMIT:+--limit "$LIMIT"} --out "$R/partial/${e//:/-}.npz" ;;
  table)
    args=(); for e in "${EXPERTS[@]}"; do args+=(--expert "$e"); done
    $EM calibrate "${args[@]}" "${COMMON[@]}" --no-score --out "$R/calibration.npz" ;;
  report)
    $EM profile "$R/calibration.latency.json" --device-class cpu --out "$R/profiles.cpu.json"
    $PY benchmarks/reproduce_moe2.py --table "$R/calibration.npz" --profiles "$R/profiles.cpu.json" \
      --out "$R" --top-k 2 --tau 0.8 --subsets 30 --seed 0 \
      --energy-points 10 --latency-points 8 --random-draws 5 --objective loglik --folds 0 \
      --guard-confidence 0.95 --cv-folds 5 --no-progress
    $PY benchmarks/bigbench/report_header.py "$R/REPORT.md" ;;
  dataset-shuffled) $PY benchmarks/resplit_spread.py shuffle-bigbench --out "$DATA_S" --seed 0 ;;
  score-shuffled)
    e="$2"
    nice -n 10 $EM calibrate --expert "$e" "${COMMON_S[@]}" --limit "${LIMIT:-150}" --out "$RS/partial/${e//:/-}.npz" ;;
  table-shuffled)
    shift; names=("$@"); [ ${#names[@]} -gt 0 ] || names=("${EXPERTS[@]}")
    args=(); for e in "${names[@]}"; do args+=(--expert "$e"); done
    $EM calibrate "${args[@]}" "${COMMON_S[@]}" --no-score --out "$RS/calibration.npz" ;;
  report-shuffled)
    $EM profile "$RS/calibration.latency.json" --device-class cpu --out "$RS/profiles.cpu.json"
    $PY benchmarks/reproduce_moe2.py --table "$RS/calibration.npz" --profiles "$RS/profiles.cpu.json" \
      --out "$RS" --top-k 2 --tau 0.8 --subsets 30 --seed 0 \
      --energy-points 10 --latency-points 8 --random-draws 5 --objective loglik --folds 0 \
      --guard-confidence 0.95 --cv-folds 5 --no-progress
    $PY benchmarks/bigbench/shuffled_compare.py header "$RS/REPORT.md" ;;
  compare-shuffled) $PY benchmarks/bigbench/shuffled_compare.py ;;
  *) echo "usage: $0 dataset|export|score EXPERT|table|report|dataset-shuffled|score-shuffled EXPERT|table-shuffled [EXPERT...]|report-shuffled|compare-shuffled" >&2; exit 2 ;;
esac
