#!/bin/sh
# Re-records the sample fixtures of Tests/CLITests/Compat (never the v1 file itself), natively and with oneDNN and
# our kernels capped at AVX2. Only after an intended numeric change: say what moved in Compat/README.md.
set -e
P=${P:-.build/release/ptqd}; C=Tests/CLITests/Compat  # run from the package root
for cap in "" avx2; do
  if [ -n "$cap" ]; then export ONEDNN_MAX_CPU_ISA=AVX2 PTQD_MAX_ISA=avx2; pre=avx2-; else pre=; fi
  $P sample --n 10 --classes all --out /tmp/c1.png --save-tensors $C/${pre}fp32-ddim20-g3.safetensors --quiet
  $P sample --n 10 --classes all --quantized $C/v1-mixed-ptqd.safetensors --out /tmp/c2.png --save-tensors $C/${pre}v1-integer-ddim20-g3.safetensors --quiet
  $P sample --n 10 --classes all --quantized $C/v1-mixed-ptqd.safetensors --simulate --out /tmp/c3.png --save-tensors $C/${pre}v1-simulate-ddim20-g3.safetensors --quiet
  $P sample --n 10 --classes all --scheduler ddpm --steps 10 --guidance 1.5 --seed 7 --out /tmp/c4.png --save-tensors $C/${pre}fp32-ddpm10-g1.5-seed7.safetensors --quiet
  $P sample --n 10 --classes all --quantized $C/v1-mixed-ptqd.safetensors --steps 20 --eta 1 --force --out /tmp/c5.png --save-tensors $C/${pre}v1-integer-ddim20-eta1-force.safetensors --quiet
done
