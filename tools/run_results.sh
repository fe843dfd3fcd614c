#!/usr/bin/env bash
# Reproduces docs/results.md and the quantized rows of docs/benchmarks.md on the bundled model.
# Usage: tools/run_results.sh [N_A] [N_B]   (defaults 500 and 100; the n = 5000 takes ~10x longer)
# Every command is printed before it runs; outputs go to out/results/.
set -euo pipefail
PTQD=${PTQD:-.build/release/ptqd}
NA=${1:-500}
NB=${2:-100}
OUT=out/results
mkdir -p "$OUT"
run() { echo "+ $*" >&2; "$@"; }
REF=(--reference-cache "$OUT/reference-stats.safetensors")

# Setting A: schemes and weight-rounding methods (each file also carries PTQD statistics for setting A).
for spec in "w8a8 rtn" "w4a8 rtn" "w4a8 adaround" "w4a8 gptq" "w4a4 rtn" "w4a4 gptq"; do
  set -- $spec
  f="$OUT/$1-$2-A.safetensors"
  [ -f "$f" ] || run $PTQD quantize --scheme "$1" --weights "$2" --setting A --calib 256 --stats-trajectories 256 --correct ptqd --out "$f" --quiet
  run $PTQD evaluate --setting A --n "$NA" --quantized "$f" --no-correct --fp-cache "$OUT/fp32-A-n$NA.safetensors" "${REF[@]}" --out "$OUT/A-$1-$2-base" --quiet
  run $PTQD evaluate --setting A --n "$NA" --quantized "$f" --fp-cache "$OUT/fp32-A-n$NA.safetensors" "${REF[@]}" --out "$OUT/A-$1-$2-ptqd" --quiet
done
# Setting A: the component ablation and D2 on W4A8 (RTN weights).
run $PTQD ablation --scheme w4a8 --weights rtn --setting A --n "$NA" --calib 256 --stats-trajectories 256 --out "$OUT/ablation-A" --quiet
# Setting A: step-aware mixed precision.
f="$OUT/w4a4-w4a8-mixed-A.safetensors"
[ -f "$f" ] || run $PTQD quantize --scheme w4a8 --mixed w4a4:w4a8 --weights rtn --setting A --calib 256 --stats-trajectories 256 --correct ptqd --out "$f" --quiet
run $PTQD evaluate --setting A --n "$NA" --quantized "$f" --fp-cache "$OUT/fp32-A-n$NA.safetensors" "${REF[@]}" --out "$OUT/A-mixed-w4a4-w4a8-ptqd" --quiet
# Setting B (VSC active): the ablation on W4A8.
run $PTQD ablation --scheme w4a8 --weights rtn --setting B --n "$NB" --calib 128 --stats-trajectories 128 --out "$OUT/ablation-B" --quiet
# Speed: fp32 vs int8 in one run.
run $PTQD bench --batches 1,16,64 --torch-python '' --quantized "$OUT/w8a8-rtn-A.safetensors,$OUT/w4a8-rtn-A.safetensors,$OUT/w4a4-rtn-A.safetensors" --json "$OUT/bench-int8.json"
