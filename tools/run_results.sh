#!/usr/bin/env bash
# Reproduces docs/results.md and the quantized rows of docs/benchmarks.md on the bundled model.
# Usage: [OUT=DIR] tools/run_results.sh [N_A] [N_B] [STATS]   (defaults out/results, 200, 30, 64; n = 5000 takes ~25x longer)
# Use a fresh OUT after retraining the model: quantized files in OUT are reused, and evaluate refuses files
# quantized from other weights.
# Steps run in priority order; every command is printed before it runs; outputs go to $OUT.
set -euo pipefail
PTQD=${PTQD:-.build/release/ptqd}
NA=${1:-200}
NB=${2:-30}
STATS=${3:-64}
OUT=${OUT:-out/results}
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }
REF=(--reference-cache "$OUT/reference-stats.safetensors")
EVA=(--setting A --n "$NA" --fp-cache "$OUT/fp32-A-n$NA.safetensors" "${REF[@]}" --quiet)

# 1. Setting A: the W4A8 component ablation (baseline, +CNC, +BC, +VSC, D2) — also yields the fp32 row.
run $PTQD ablation --scheme w4a8 --weights rtn --setting A --n "$NA" --calib 64 --stats-trajectories "$STATS" --out "$OUT/ablation-A" --reuse --quiet
# 2. Setting A: other schemes and rounding methods, baseline and +PTQD.
for spec in "w8a8 rtn" "w4a4 rtn" "w4a8 gptq" "w4a8 adaround"; do
  set -- $spec
  f="$OUT/$1-$2-A.safetensors"
  [ -f "$f" ] || run $PTQD quantize --scheme "$1" --weights "$2" --setting A --calib 64 --stats-trajectories "$STATS" --correct ptqd --out "$f" --quiet
  run $PTQD evaluate "${EVA[@]}" --quantized "$f" --no-correct --out "$OUT/A-$1-$2-base"
  run $PTQD evaluate "${EVA[@]}" --quantized "$f" --out "$OUT/A-$1-$2-ptqd"
done
# 3. Setting A: step-aware mixed precision W4A4:W4A8 with PTQD.
f="$OUT/w4a4-w4a8-mixed-A.safetensors"
[ -f "$f" ] || run $PTQD quantize --scheme w4a8 --mixed w4a4:w4a8 --weights rtn --setting A --calib 64 --stats-trajectories "$STATS" --correct ptqd --out "$f" --quiet
run $PTQD evaluate "${EVA[@]}" --quantized "$f" --out "$OUT/A-mixed-w4a4-w4a8-ptqd"
# 4. Setting B (eta 1: VSC active): the W4A8 ablation.
run $PTQD ablation --scheme w4a8 --weights rtn --setting B --n "$NB" --calib 32 --stats-trajectories "$STATS" --out "$OUT/ablation-B" --reuse --quiet
# 5. Speed: fp32 vs int8 in one run.
run $PTQD bench --batches 1,16,64 --torch-python '' --quantized "$OUT/ablation-A/w4a8-rtn-A.safetensors,$OUT/w8a8-rtn-A.safetensors,$OUT/w4a4-rtn-A.safetensors" --json "$OUT/bench-int8.json"
