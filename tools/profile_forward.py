#!/usr/bin/env python3
"""Where a UNet forward's time goes, by op category: `perf record` over `ptqd sample`, samples grouped by symbol.

Usage (Linux with Debian's linux-perf):
  tools/profile_forward.py --model out/bench-cifar [--quantized out/cifar-w8a8.safetensors] [--n 128 --steps 10 --batch 16]

Runs `perf record -F 499` on `ptqd sample` (the sampler loop around the UNet: guidance off for unconditional models)
and prints the share of CPU samples per category. Load time is excluded by subtracting a 1-step run's samples
(same model, same n): what remains is the steps' forwards. Categories (by symbol / shared object):
  conv+matmul (oneDNN JIT code and libdnnl), fused norm+SiLU→u8 (GroupNorm's affine + SiLU written straight into an
  integer layer's u8 input), norm (GroupNorm/LayerNorm statistics and the materialized affine+SiLU),
  quantize (activation u8 quantization), attention (softmax rows; its matmuls are oneDNN), elementwise (residual adds,
  SiLU, GEGLU, timestep embedding), copies (memmove/memset, concatenations, reshapes, upsampling), OpenMP runtime
  (libgomp: barriers, spin-waits), kernel (page faults, scheduling), other.
"""
import argparse, collections, os, re, subprocess, sys, tempfile

CATEGORIES = [
    ("fused norm+SiLU→u8", re.compile(r"affine_quantize_u8|affine_pixels_u8", re.I)),
    ("norm", re.compile(r"channel_affine|channel_sums|groupNorm|layerNorm|layer_norm", re.I)),
    ("quantize", re.compile(r"quantize_u8|plain_pixels_u8|fake_quantize|ActivationQuantization", re.I)),
    ("attention", re.compile(r"softmax", re.I)),
    ("elementwise", re.compile(r"residual|silu|geglu|gelu|addInPlace|timestepEmbedding|_add|scale", re.I)),
    ("copies", re.compile(r"memmove|memcpy|memset|concat|reshaped|slice|gather|upsample|copy|toNCHW|fromNCHW|pad", re.I)),
]


def run_perf(cmd, out):
    subprocess.run(["perf", "record", "-q", "-F", "499", "-o", out, "--"] + cmd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rep = subprocess.run(["perf", "report", "-i", out, "--sort", "dso,symbol", "--stdio", "-n", "--percent-limit", "0"],
                         capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in rep.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S.*?)\s{2,}\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        n, dso, kind, sym = int(m.group(1)), m.group(2).strip(), m.group(3), m.group(4).strip()
        counts[categorize(dso, kind, sym)] += n
    return counts


def categorize(dso, kind, sym):
    if dso.startswith("[JIT]") or "libdnnl" in dso:
        return "conv+matmul"
    if "libgomp" in dso:
        return "OpenMP runtime"
    if kind == "k" or "kernel" in dso:
        return "kernel"
    for name, rx in CATEGORIES:
        if rx.search(sym):
            return name
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ptqd", default=".build/release/ptqd")
    ap.add_argument("--model", required=True)
    ap.add_argument("--quantized")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--extra", default="", help="more ptqd sample arguments (e.g. '--context FILE --guidance 1')")
    args = ap.parse_args()
    base = [os.path.abspath(args.ptqd), "sample", "--model", args.model, "--n", str(args.n), "--batch", str(args.batch),
            "--quiet", "--out", os.path.join(tempfile.gettempdir(), "ptqd-profile.png")] + args.extra.split()
    if args.quantized:
        base += ["--quantized", args.quantized]
    with tempfile.TemporaryDirectory() as d:
        full = run_perf(base + ["--steps", str(args.steps)], os.path.join(d, "full.data"))
        load = run_perf(base + ["--steps", "1"], os.path.join(d, "one.data"))
    # (steps - 1) forwards' worth: full minus the 1-step run, per category, clamped at 0.
    diff = {k: max(full[k] - load.get(k, 0), 0) for k in full}
    total = sum(diff.values())
    what = "W8A8/int8 file " + args.quantized if args.quantized else "fp32"
    print(f"{what}: {args.model}, batch {args.batch}, {args.steps - 1} steps' forwards x {args.n // args.batch} batches; "
          f"{total} perf samples at 499 Hz")
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<15} {100 * v / max(total, 1):5.1f}%")


if __name__ == "__main__":
    main()
