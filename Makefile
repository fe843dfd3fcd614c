# swift-ptqd — the two commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
SWIFT ?= swift
# A plain release build, exactly what a package depending on us gets: the hot loops are C kernels compiled
# for baseline x86-64, AVX2 and AVX-512 and chosen at run time (Sources/CKernels), so no CPU flags are needed.
SWIFTFLAGS := -c release
PTQD := .build/release/ptqd
VENV := .venv-tools
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := libdnnl-dev libpng-dev liblapacke-dev zlib1g-dev dataset-fashion-mnist
TOOL_PACKAGES := python3-torch python3-venv python3-scipy libopenblas0-pthread

.PHONY: demo test build setup venv fixtures bench train-ddpm clean

## System packages (Debian): oneDNN, libpng, LAPACKE, Fashion-MNIST. Installs only what is missing.
setup:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

build: setup
	$(SWIFT) build $(SWIFTFLAGS) --product ptqd

## The main job on the bundled model: quantize W4A8 with PTQD noise correction (setting A: DDIM 20 steps,
## eta 0, guidance 3), then sample FP and quantized on identical noise side by side and print the report
## (FID on a small n, PSNR/SSIM vs FP, BOPs, file size, images/s). Under 10 minutes on 2 cores.
demo: build
	@mkdir -p out
	$(PTQD) quantize --scheme w4a8 --weights adaround --correct ptqd --setting A --calib 64 --stats-trajectories 64 --out out/demo-w4a8.safetensors
	$(PTQD) evaluate --quantized out/demo-w4a8.safetensors --setting A --n 100 --out out/demo
	@echo "FP (left) and W4A8 AdaRound+PTQD (right), one row per class: out/demo/grid.png"


## The test suite (release mode: C/oneDNN paths and Swift kernels are 50x slower in debug). The integer and
## kernel suites run a second time with oneDNN capped at AVX2 (no VNNI: 8-bit weights take the exact hi+lo
## path) and the C kernels at AVX2, so both int8 paths are tested on a VNNI machine; on an AVX2-only machine
## the two runs take the same paths (the VNNI direct path needs VNNI hardware).
INTEGER_SUITES := Int8KernelTests|IntegerVsSimulate|KernelISATests|KernelTests
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
	$(PTQD) bench --model out/bench-sd15 --batches 1,2 --seconds 1 --context-length 77 --quantized out/bench-sd15-w8a8.safetensors \
	  --torch-python $(PY) --json out/bench-sd15.json
	test -d out/bench-cin256 || $(PY) tools/bench_torch.py --make-random-model out/bench-cin256 --config cin256
	test -f out/bench-cin256-w8a8.safetensors || $(PTQD) quantize --model out/bench-cin256 --scheme w8a8 --calib 1 --steps 2 --guidance 1 \
	  --calib-context out/bench-cin256/context.safetensors --group-size 64 --batch 2 --out out/bench-cin256-w8a8.safetensors
	$(PTQD) bench --model out/bench-cin256 --batches 1,2 --seconds 1 --quantized out/bench-cin256-w8a8.safetensors \
	  --torch-python $(PY) --json out/bench-cin256.json

train-ddpm: venv
	OMP_WAIT_POLICY=PASSIVE $(PY) tools/train_ddpm.py --work out/ddpm-train --minutes 90

clean:
	rm -rf .build out
