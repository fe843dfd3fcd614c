# swift-ptqd — the two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
SWIFT ?= swift
# A plain release build, exactly what a package depending on us gets: the hot loops are C kernels compiled
# for baseline x86-64, AVX2 and AVX-512 and chosen at run time (Sources/CKernels), so no CPU flags are needed.
SWIFTFLAGS := -c release
PTQD := .build/release/ptqd
VENV := .venv-tools
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := libdnnl-dev libpng-dev liblapacke-dev zlib1g-dev libcairo2-dev fonts-dejavu-core dataset-fashion-mnist
TOOL_PACKAGES := python3-torch python3-venv python3-scipy libopenblas0-pthread

.PHONY: demo demo-pixel test build setup venv fixtures bench train-ddpm figures clean

## System packages (Debian): oneDNN, libpng, LAPACKE, zlib, cairo + DejaVu fonts (text in PNG plots and grids),
## Fashion-MNIST. Installs only what is missing. (chromium is optional: the HTML-report screenshot test uses it if present.)
setup:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

build: setup
	$(SWIFT) build $(SWIFTFLAGS) --product ptqd

## The main job, on the bundled latent model (models/fmnist-ldm: KL-f4 autoencoder + class-conditional
## cross-attention UNet, LDM-4 cin256 in miniature): quantize the denoiser W4A8 with PTQD (setting A: DDIM 20 steps,
## eta 0, guidance 3), then sample FP and quantized on identical noise side by side (decoded images) and print the
## report (FID on a small n, PSNR/SSIM vs FP, BOPs, file size, images/s). A few minutes on 2 cores after the build.
LDM := models/fmnist-ldm
demo: build
	@mkdir -p out
	$(PTQD) quantize --model $(LDM) --scheme w4a8 --weights adaround --correct ptqd --setting A --calib 64 --stats-trajectories 64 --out out/demo-ldm-w4a8.safetensors
	$(PTQD) evaluate --model $(LDM) --quantized out/demo-ldm-w4a8.safetensors --setting A --n 100 --out out/demo-ldm
	@echo "FP (left) and W4A8 AdaRound+PTQD (right), one row per class: out/demo-ldm/grid.png"

## The same job on the bundled pixel-space DDPM (models/fmnist-ddpm, a UNet2DModel on 32x32 images).
demo-pixel: build
	@mkdir -p out
	$(PTQD) quantize --scheme w4a8 --weights adaround --correct ptqd --setting A --calib 64 --stats-trajectories 64 --out out/demo-w4a8.safetensors
	$(PTQD) evaluate --quantized out/demo-w4a8.safetensors --setting A --n 100 --out out/demo
	@echo "FP (left) and W4A8 AdaRound+PTQD (right), one row per class: out/demo/grid.png"


## The test suite (release mode: C/oneDNN paths and Swift kernels are 50x slower in debug). The integer and
## kernel suites run a second time with oneDNN capped at AVX2 (no VNNI: 8-bit weights take the exact hi+lo
## path) and the C kernels at AVX2, so both int8 paths are tested on a VNNI machine; on an AVX2-only machine
## the two runs take the same paths (the VNNI direct path needs VNNI hardware).
INTEGER_SUITES := Int8KernelTests|IntegerVsSimulate|KernelISATests|KernelTests|AttentionTests
test: setup
	$(SWIFT) build $(SWIFTFLAGS) --build-tests -Xswiftc -enable-testing
	$(SWIFT) test $(SWIFTFLAGS) -Xswiftc -enable-testing --skip-build
	@echo "== integer kernels again: ONEDNN_MAX_CPU_ISA=AVX2 PTQD_MAX_ISA=avx2"
	ONEDNN_MAX_CPU_ISA=AVX2 PTQD_MAX_ISA=avx2 $(SWIFT) test $(SWIFTFLAGS) -Xswiftc -enable-testing --skip-build --filter '$(INTEGER_SUITES)'

## Reference tools (PyTorch peer, fixture generation, training): never needed at run time.
venv:
	@missing=""; for p in $(TOOL_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q "diffusers==0.27.2" safetensors "huggingface_hub<0.26"

fixtures: venv
	$(PY) tools/make_fixtures.py
	$(PY) tools/make_latent_fixtures.py
	$(PY) tools/make_dpm_fixtures.py
	$(PY) tools/make_eval_fixtures.py
	$(PY) tools/make_bundled_ldm_fixture.py

## fp32 throughput vs PyTorch (same weights, same threads), bundled model, a ddpm-cifar10-sized one, and SD-1.5- and
## cin256-shaped latent UNets (int8 and bf16 beside, peak memory per forward).
bench: build venv
	@mkdir -p out
	test -d out/bench-cifar || $(PY) tools/bench_torch.py --make-random-model out/bench-cifar --config cifar
	$(PTQD) bench --batches 1,16,64 --torch-python $(PY) --json out/bench-fmnist.json
	$(PTQD) bench --model out/bench-cifar --batches 1,16,64 --torch-python $(PY) --json out/bench-cifar.json
	@# Latent diffusion at scale (random weights, diffusers' own shapes): SD-1.5's UNet (4x64x64 latents, context
	@# [N, 77, 768]) and LDM-4 cin256's (3x64x64, one-token class context [N, 1, 512]); fp32, bf16 and W8A8 next to
	@# PyTorch, with each forward's peak memory. The W8A8 files are calibrated on one 2-step trajectory: timing only.
	test -d out/bench-sd15 || $(PY) tools/bench_torch.py --make-random-model out/bench-sd15 --config sd15
	test -f out/bench-sd15-w8a8.safetensors || $(PTQD) quantize --model out/bench-sd15 --scheme w8a8 --calib 1 --steps 2 --guidance 1 \
	  --calib-context out/bench-sd15/context.safetensors --group-size 64 --batch 2 --out out/bench-sd15-w8a8.safetensors
	test -f out/bench-sd15-w8a8-attn.safetensors || $(PTQD) quantize --model out/bench-sd15 --scheme w8a8 --calib 1 --steps 2 --guidance 1 \
	  --calib-context out/bench-sd15/context.safetensors --group-size 64 --batch 2 --quantize-attention --out out/bench-sd15-w8a8-attn.safetensors
	$(PTQD) bench --model out/bench-sd15 --batches 1,2 --seconds 1 --context-length 77 \
	  --quantized out/bench-sd15-w8a8.safetensors,out/bench-sd15-w8a8-attn.safetensors --torch-python $(PY) --json out/bench-sd15.json
	test -d out/bench-cin256 || $(PY) tools/bench_torch.py --make-random-model out/bench-cin256 --config cin256
	test -f out/bench-cin256-w8a8.safetensors || $(PTQD) quantize --model out/bench-cin256 --scheme w8a8 --calib 1 --steps 2 --guidance 1 \
	  --calib-context out/bench-cin256/context.safetensors --group-size 64 --batch 2 --out out/bench-cin256-w8a8.safetensors
	test -f out/bench-cin256-w8a8-attn.safetensors || $(PTQD) quantize --model out/bench-cin256 --scheme w8a8 --calib 1 --steps 2 --guidance 1 \
	  --calib-context out/bench-cin256/context.safetensors --group-size 64 --batch 2 --quantize-attention --out out/bench-cin256-w8a8-attn.safetensors
	$(PTQD) bench --model out/bench-cin256 --batches 1,2 --seconds 1 \
	  --quantized out/bench-cin256-w8a8.safetensors,out/bench-cin256-w8a8-attn.safetensors --torch-python $(PY) --json out/bench-cin256.json

train-ddpm: venv
	OMP_WAIT_POLICY=PASSIVE $(PY) tools/train_ddpm.py --work out/ddpm-train --minutes 90

## The figures of docs/results.md and docs/benchmarks.md, redrawn from the measured numbers in docs/data/*.json
## (plot sidecars and `ptqd bench --json` results; where each came from: docs/data/README.md). Seconds, no sampling.
D := docs/data
FIG := docs/images
STEP := --x-label "sampling step (0 = first, most noisy)"
SNRY := --y-label "SNR (power ratio, log scale)"
KSY := --y-label "k_t, σ_q (dimensionless; ε has unit variance)"
KSN := --names "k_t before clamping,σ_q (std of the residual Δ')"
figures: build
	$(PTQD) plot $(D)/snr-w4a8-rtn-A.json --out $(FIG)/snr-w4a8-rtn-A $(STEP) $(SNRY) --title "SNR per sampling step, W4A8 RTN, setting A" \
	  --subtitle "DDIM 20 steps, eta 0, guidance 3; statistics from 128 FP trajectories" --names "SNR^Q W4A8 (signal / quantization noise),SNR^F (signal / diffusion noise)"
	$(PTQD) plot $(D)/snr-w4a8-rtn-B-negk.json --out $(FIG)/snr-w4a8-rtn-B $(STEP) $(SNRY) --title "SNR per sampling step, W4A8 RTN, setting B" \
	  --subtitle "DDIM 100 steps, eta 1, guidance 1.5; statistics from 128 FP trajectories" --names "SNR^Q W4A8 (signal / quantization noise),SNR^F (signal / diffusion noise)"
	$(PTQD) plot $(D)/snr-w4a4-w4a8-mixed-B.json --out $(FIG)/snr-w4a4-w4a8-mixed-B $(STEP) $(SNRY) --title "SNR per sampling step and scheme, setting B" \
	  --subtitle "W4A4 and W4A8 RTN; DDIM 100 steps, eta 1, guidance 1.5; 64 FP trajectories" --names "SNR^Q W4A4,SNR^Q W4A8,SNR^F (signal / diffusion noise)"
	$(PTQD) plot $(D)/snr-w4a8-adaround-dpm20.json --out $(FIG)/snr-w4a8-adaround-dpm20 $(STEP) $(SNRY) --title "SNR per sampling step, W4A8 AdaRound, DPM-Solver++" \
	  --subtitle "DPM-Solver++(2M) 20 steps, guidance 3; statistics from 256 FP trajectories" --names "SNR^Q W4A8 (signal / quantization noise),SNR^F (signal / diffusion noise)"
	$(PTQD) plot $(D)/k-sigma-w4a8-rtn-A.json --out $(FIG)/k-sigma-w4a8-rtn-A $(STEP) $(KSY) $(KSN) --title "PTQD noise statistics per step, W4A8 RTN, setting A" \
	  --subtitle "DDIM 20 steps, eta 0, guidance 3; 128 FP trajectories"
	$(PTQD) plot $(D)/k-sigma-w4a8-rtn-B-negk.json --out $(FIG)/k-sigma-w4a8-rtn-B $(STEP) $(KSY) $(KSN) --title "PTQD noise statistics per step, W4A8 RTN, setting B" \
	  --subtitle "DDIM 100 steps, eta 1, guidance 1.5; 128 FP trajectories"
	$(PTQD) plot $(D)/k-sigma-w4a8-adaround-dpm20.json --out $(FIG)/k-sigma-w4a8-adaround-dpm20 $(STEP) $(KSY) $(KSN) \
	  --title "PTQD noise statistics per step, W4A8 AdaRound, DPM-Solver++" --subtitle "DPM-Solver++(2M) 20 steps, guidance 3; 256 FP trajectories"
	$(PTQD) plot $(D)/fid-vs-n-dpm20-fp32.json $(D)/fid-vs-n-dpm20-w4a8-adaround-baseline.json $(D)/fid-vs-n-dpm20-w4a8-adaround-ptqd.json \
	  $(D)/fid-vs-n-dpm20-w4a8-adaround-d2.json --out $(FIG)/fid-vs-n-dpm20 --log-x true --title "FID against the number of samples" \
	  --subtitle "DPM-Solver++(2M) 20 steps, guidance 3; class-balanced prefixes of the same 1,000 samples" \
	  --x-label "n (generated images, log scale)" --y-label "FID vs Fashion-MNIST test set (lower is better)" \
	  --names "fp32,W4A8 AdaRound,W4A8 AdaRound + PTQD,W4A8 AdaRound + D2"
	$(PTQD) plot $(D)/bench-fmnist-session7.json --out $(FIG)/speed-fmnist --title "int8 vs fp32 throughput by batch size, bundled model" \
	  --names "fp32 (ours),W8A8 RTN (int8 kernels),W4A8 RTN (int8 kernels),W4A8 AdaRound + PTQD (int8 kernels),PyTorch 1.13 fp32"
	$(PTQD) plot $(D)/bench-cifar-session7.json --out $(FIG)/speed-cifar --title "int8 vs fp32 throughput by batch size, cifar-sized UNet" \
	  --names "fp32 (ours),W8A8 RTN (int8 kernels),W4A8 RTN (int8 kernels),PyTorch 1.13 fp32"

clean:
	rm -rf .build out
