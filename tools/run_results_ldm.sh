#!/usr/bin/env bash
# Issue 16's table on the latent reference model (models/fmnist-ldm: KL-f4 + class-conditional cross-attention UNet),
# the paper's Table 1 / ablation in miniature. Resumable: quantized files in OUT are reused, evaluations resume from
# their checkpoints; every command is printed before it runs.
# Usage: [OUT=DIR] [MODEL=DIR] tools/run_results_ldm.sh [N_MAIN] [N_OTHER] [STATS]
#   defaults: out/results-ldm, 5000 (FP, W4A8 baseline, W4A8+PTQD at setting A), 1000 (every other row), 1024
# Long: on 2 cores, one n = 5,000 setting-A evaluation of this model is a few minutes; setting B (100 steps) 5x that.
set -euo pipefail
PTQD=${PTQD:-.build/release/ptqd}
MODEL=${MODEL:-models/fmnist-ldm}
NM=${1:-5000}
NO=${2:-1000}
STATS=${3:-1024}
OUT=${OUT:-out/results-ldm}
mkdir -p "$OUT"
# Each ablation overwrites OUT/X/ablation.md; its table (stdout) is also appended to OUT/tables.md.
run() { echo "+ $*" >&2; echo "+ $*" >> "$OUT/tables.md"; "$@" | tee -a "$OUT/tables.md"; }
COMMON=(--model "$MODEL" --calib 256 --stats-trajectories "$STATS" --reuse --quiet)

# FP first: setting B at n = N_MAIN (setting A's FP row is the first row of the ablation below), and setting A's
# steps and eta at other guidance scales (n = N_OTHER), to show what guidance 3 does to this model's FID.
run $PTQD evaluate --model "$MODEL" --setting B --n "$NM" --out "$OUT/B-fp32" --quiet
for g in 1 1.5 2; do
  run $PTQD evaluate --model "$MODEL" --setting A --guidance "$g" --n "$NO" --out "$OUT/A-fp32-g$g" --quiet
done
# Setting A (DDIM 20, eta 0, guidance 3): W4A8 ablation with both roundings (FP row included), n = N_MAIN.
run $PTQD ablation "${COMMON[@]}" --scheme w4a8 --weights adaround --setting A --n "$NM" --out "$OUT/A"
run $PTQD ablation "${COMMON[@]}" --scheme w4a8 --weights rtn --setting A --n "$NO" --out "$OUT/A"
# Setting A: W8A8, W4A4, mixed W4A4:W4A8 (+PTQD rows), and W4A8 with quantized attention.
run $PTQD ablation "${COMMON[@]}" --scheme w8a8 --weights rtn --setting A --n "$NO" --out "$OUT/A"
run $PTQD ablation "${COMMON[@]}" --scheme w4a4 --weights rtn --setting A --n "$NO" --out "$OUT/A"
run $PTQD ablation "${COMMON[@]}" --scheme w4a4:w4a8 --weights rtn --setting A --n "$NO" --out "$OUT/A"
run $PTQD ablation "${COMMON[@]}" --scheme w4a8 --weights adaround --quantize-attention --setting A --n "$NO" --out "$OUT/A"
# Setting B (DDIM 100, eta 1, guidance 1.5): the same rows at n = N_OTHER.
for spec in "w8a8 rtn" "w4a8 rtn" "w4a8 adaround" "w4a4 rtn" "w4a4:w4a8 rtn"; do
  set -- $spec
  run $PTQD ablation "${COMMON[@]}" --scheme "$1" --weights "$2" --setting B --n "$NO" --out "$OUT/B"
done
# One 250-step FP row at setting B's eta and guidance (the paper's setting B), to show what 100 steps lose.
run $PTQD evaluate --model "$MODEL" --setting B --steps 250 --n "$NO" --out "$OUT/B-fp32-250" --quiet
