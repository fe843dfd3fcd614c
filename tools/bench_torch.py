#!/usr/bin/env python3
"""The PyTorch/diffusers peer for `ptqd`'s benchmark: UNet2DModel forward throughput on the CPU.

Reference tool only (Debian's python3-torch 1.13 + diffusers==0.27.2, venv /opt/ptqd-venv).

Measure:
  bench_torch.py --model DIR [--batches 1,16,64] [--threads 2] [--iters N] [--warmup 2]
                 [--layout nchw|channels_last|both] [--attention stock|fast|both] [--fast-attention]
                 [--min-seconds 3] [--json]
    DIR is a diffusers folder (DIR/unet/config.json) or a bare UNet folder (DIR/config.json).
    For every (attention, layout, batch) it runs `warmup` forwards, then `iters` timed forwards
    (default: enough that the timed part lasts >= --min-seconds) and reports the median.
    Inputs are seeded random: sample ~ N(0,1), timesteps spread evenly over 0..T-1, class labels
    cycling over the classes when the model is class-conditional.
    --json prints one JSON object on stdout:
      {"torch", "diffusers", "threads", "model", "params", "gmac_per_image", "gmac_breakdown",
       "results": [{"batch", "layout", "attention", "iters", "images_per_s", "ms_per_forward", ...}], ...}
    gmac_per_image counts multiply-accumulates of one UNet forward per image: every Conv2d and Linear
    (forward hooks, output elements x fan-in) plus the attention matmuls QK^T and PV
    (2 x heads x tokens^2 x head_dim per Attention module). GroupNorm/SiLU/softmax/adds are not counted.

  --attention stock (default) benchmarks diffusers' own AttnProcessor, which IS the peer. On Debian's
    torch 1.13, nn.Linear on 3-D inputs takes a slow (~3 GFLOP/s) batched path; --attention fast
    (or --fast-attention) installs tools/torch_attention.py's FlatAttnProcessor (same math, 2-D views);
    --attention both reports both.

Make a model to benchmark:
  bench_torch.py --make-random-model OUT --config cifar|sd15|cin256 [--seed 0]
    writes OUT/unet (config.json + diffusion_pytorch_model.safetensors) and OUT/scheduler/scheduler_config.json:
    a randomly initialised (seeded) UNet with google/ddpm-cifar10-32's architecture (35.7M parameters), Stable
    Diffusion 1.5's UNet2DConditionModel (860M), or LDM-4 ImageNet cin256-v2's in diffusers form (~400M).
    Cross-attention UNets get a seeded random context [N, --context-length, cross_attention_dim] when timed, and
    OUT/context.safetensors ('context' and 'null_context' [1, L, D], L = 77 for sd15, 1 for cin256) for
    `ptqd quantize --calib-context` of a file made only to be timed.

Memory: each result carries the resident set after warm-up (weights, caches) and the high-water mark of one
more forward above it (VmHWM after resetting it through /proc/self/clear_refs): the activation memory.

Environment: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE change OpenBLAS's kernel choice; a warning is printed to
stderr when they are set (the benchmark caller unsets them for the peer command).
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import safetensors.torch  # noqa: F401  (diffusers 0.27 uses safetensors.torch without importing the submodule)

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.utils import logging as dlogging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_attention import FlatAttnProcessor  # noqa: E402

# google/ddpm-cifar10-32's unet/config.json (diffusers layout). Its JSON says "attention_head_dim": null,
# i.e. ONE attention head of 256 channels (not UNet2DModel's default of 8-channel heads), and it also sets
# downsample_padding 0, flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6.
CONFIGS = {
    "cifar": dict(
        sample_size=32, in_channels=3, out_channels=3,
        block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        norm_eps=1e-6, norm_num_groups=32, mid_block_scale_factor=1, act_fn="silu",
        center_input_sample=False, time_embedding_type="positional",
    ),
    # Stable Diffusion 1.5's unet/config.json (runwayml/stable-diffusion-v1-5): 860M parameters, 4x64x64 latents,
    # CLIP context [N, 77, 768]; "attention_head_dim": 8 is the number of heads (diffusers' naming quirk).
    "sd15": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu", center_input_sample=False,
    ),
    # LDM-4 ImageNet (cin256-v2) in diffusers terms: 3x64x64 VQ-f4 latents, model_channels 192 x [1, 2, 3, 5],
    # attention at 32, 16 and 8 (no attention at 64x64), 32-channel heads (6/12/18/30 heads: the list is the head
    # count), ClassEmbedder context [N, 1, 512], 2 res blocks per level.
    "cin256": dict(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(192, 384, 576, 960),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=512, attention_head_dim=(6, 12, 18, 30), norm_num_groups=32, norm_eps=1e-5,
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu", center_input_sample=False,
    ),
}
CONDITIONAL = {"sd15", "cin256"}
# DDPMScheduler defaults (linear 1e-4..0.02, 1000 steps); not used by the benchmark, written so the folder
# is a complete diffusers layout.
SCHEDULERS = {
    "cifar": dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  clip_sample=True, variance_type="fixed_small", prediction_type="epsilon"),
    # LDM / SD: scaled_linear 0.00085..0.012, DDIM leading spacing with steps_offset 1.
    "sd15": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"),
    "cin256": dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"),
}


def warn_env():
    warnings = []
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            msg = f"{var}={os.environ[var]} is set: OpenBLAS kernel selection is altered for this process"
            warnings.append(msg)
            print(f"warning: {msg}", file=sys.stderr)
    return warnings


def make_random_model(out, config, seed):
    if config not in CONFIGS:
        sys.exit(f"unknown --config {config!r} (known: {', '.join(CONFIGS)})")
    torch.manual_seed(seed)
    cls = UNet2DConditionModel if config in CONDITIONAL else UNet2DModel
    model = cls(**CONFIGS[config]).eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    sched = DDIMScheduler if config in CONDITIONAL else DDPMScheduler
    sched(**SCHEDULERS[config]).save_pretrained(os.path.join(out, "scheduler"))
    if config in CONDITIONAL:
        # A seeded random context (and null context) for calibrating a file that is quantized only to be timed.
        from safetensors.torch import save_file
        length = 77 if config == "sd15" else 1
        g = torch.Generator().manual_seed(seed + 1)
        width = CONFIGS[config]["cross_attention_dim"]
        save_file({"context": torch.randn((1, length, width), generator=g),
                   "null_context": torch.randn((1, length, width), generator=g)}, os.path.join(out, "context.safetensors"))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}/unet and {out}/scheduler ({config}, seed {seed}, {n} parameters)", file=sys.stderr)


def resolve_model_dir(path):
    if os.path.isfile(os.path.join(path, "unet", "config.json")):
        return os.path.join(path, "unet")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    sys.exit(f"{path}: neither {path}/unet/config.json nor {path}/config.json exists")


def load_unet(mdir):
    with open(os.path.join(mdir, "config.json")) as f:
        name = json.load(f).get("_class_name", "UNet2DModel")
    cls = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}.get(name)
    if cls is None:
        sys.exit(f"{mdir}: _class_name {name} is not benchmarked")
    return cls.from_pretrained(mdir).eval()


CONTEXT_LENGTH = 1


def call(model, sample, timesteps, labels):
    """One forward; labels is the class tensor (UNet2DModel) or the context (UNet2DConditionModel)."""
    if isinstance(model, UNet2DConditionModel):
        return model(sample, timesteps, encoder_hidden_states=labels)
    return model(sample, timesteps, labels)


def make_inputs(model, batch, seed=0):
    cfg = model.config
    if isinstance(model, UNet2DConditionModel):
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        g = torch.Generator().manual_seed(seed + batch)
        sample = torch.randn((batch, cfg.in_channels, h, w), generator=g)
        timesteps = ((torch.arange(batch, dtype=torch.float64) + 0.5) * 1000 / batch).long().clamp(0, 999)
        context = torch.randn((batch, CONTEXT_LENGTH, cfg.cross_attention_dim), generator=g)
        return sample, timesteps, context
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(seed + batch)
    sample = torch.randn((batch, cfg.in_channels, h, w), generator=g)
    T = cfg.num_train_timesteps or 1000
    timesteps = ((torch.arange(batch, dtype=torch.float64) + 0.5) * T / batch).long().clamp(0, T - 1)
    labels = None
    if cfg.class_embed_type is None and cfg.num_class_embeds is not None:
        labels = torch.arange(batch) % cfg.num_class_embeds
    elif cfg.class_embed_type == "timestep":
        labels = (torch.arange(batch) % 10).float()
    elif cfg.class_embed_type == "identity":
        labels = torch.randn((batch, 4 * cfg.block_out_channels[0]), generator=g)
    return sample, timesteps, labels


def count_macs(model):
    """MACs of one forward at batch 1: Conv2d + Linear via hooks, attention matmuls from the Attention modules."""
    counts = {"conv": 0, "linear": 0, "attention_matmul": 0}
    hooks = []

    def conv_hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        counts["conv"] += out.numel() * k

    def linear_hook(mod, inp, out):
        counts["linear"] += out.numel() * mod.in_features

    # QK^T and PV: query tokens x key tokens x inner width each (keys = the context for cross-attention),
    # from the row counts of to_q and to_k (batch 1).
    seen = {}

    def q_hook(mod, inp, out):
        seen[id(mod)] = out.numel() // out.shape[-1]

    def make_k_hook(q):
        def k_hook(mod, inp, out):
            tq, tk = seen.get(id(q), 0), out.numel() // out.shape[-1]
            counts["attention_matmul"] += 2 * tq * tk * out.shape[-1]
        return k_hook

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    for m in model.modules():
        if isinstance(m, Attention):
            hooks.append(m.to_q.register_forward_hook(q_hook))
            hooks.append(m.to_k.register_forward_hook(make_k_hook(m.to_q)))
    try:
        sample, timesteps, labels = make_inputs(model, 1)
        with torch.no_grad():
            call(model, sample, timesteps, labels)
    finally:
        for h in hooks:
            h.remove()
    return counts


def set_attention(model, mode):
    for m in model.modules():
        if isinstance(m, Attention):
            m.set_processor(FlatAttnProcessor() if mode == "fast" else AttnProcessor())


def bench_one(model, batch, layout, warmup, iters, min_seconds):
    sample, timesteps, labels = make_inputs(model, batch)
    if layout == "channels_last":
        sample = sample.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(warmup):
            call(model, sample, timesteps, labels)
        # Memory: resident set after warm-up, then the high-water mark of one more forward above it.
        base = memory_status()["VmRSS"]
        reset_peak()
        call(model, sample, timesteps, labels)
        peak = memory_status()["VmHWM"]
        if iters is None:
            t0 = time.perf_counter()
            call(model, sample, timesteps, labels)
            one = time.perf_counter() - t0
            iters = max(3, math.ceil(min_seconds / max(one, 1e-6)))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            call(model, sample, timesteps, labels)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return dict(batch=batch, iters=iters, ms_per_forward=med * 1e3, ms_min=min(times) * 1e3,
                images_per_s=batch / med, seconds_timed=sum(times),
                rss_after_warmup_bytes=base, peak_above_rss_bytes=max(peak - base, 0))


def memory_status():
    """VmRSS / VmHWM of this process in bytes (Linux /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak():
    """Resets VmHWM to the current RSS (writing 5 to /proc/self/clear_refs, Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="diffusers folder (with unet/) or a bare UNet folder")
    ap.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes (default 1,16,64)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--iters", type=int, default=None, help="timed forwards per measurement (default: >= --min-seconds)")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="target timed duration when --iters is not given")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layout", choices=["nchw", "channels_last", "both"], default="nchw")
    ap.add_argument("--attention", choices=["stock", "fast", "both"], default="stock",
                    help="stock = diffusers' AttnProcessor (the peer); fast = tools/torch_attention.py")
    ap.add_argument("--fast-attention", action="store_true", help="same as --attention fast")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--make-random-model", metavar="OUT", help="write a seeded random model (see --config) and exit")
    ap.add_argument("--config", default="cifar", help="architecture for --make-random-model: cifar, sd15, cin256")
    ap.add_argument("--context-length", type=int, default=1, help="context tokens L of a cross-attention UNet (SD: 77)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dlogging.set_verbosity_error()
    env_warnings = warn_env()

    if args.make_random_model:
        make_random_model(args.make_random_model, args.config, args.seed)
        return
    if not args.model:
        ap.error("--model DIR is required (or --make-random-model OUT)")
    if args.fast_attention:
        args.attention = "fast"
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    layouts = ["nchw", "channels_last"] if args.layout == "both" else [args.layout]
    attentions = ["stock", "fast"] if args.attention == "both" else [args.attention]

    torch.set_num_threads(args.threads)
    global CONTEXT_LENGTH
    CONTEXT_LENGTH = args.context_length
    mdir = resolve_model_dir(args.model)
    model = load_unet(mdir)
    set_attention(model, "stock")
    macs = count_macs(model)
    gmac = sum(macs.values()) / 1e9

    results = []
    for attention in attentions:
        set_attention(model, attention)
        for layout in layouts:
            m = model.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
            for b in batches:
                r = bench_one(m, b, layout, args.warmup, args.iters, args.min_seconds)
                r = dict(batch=r["batch"], layout=layout, attention=attention, **{k: v for k, v in r.items() if k != "batch"})
                r["gmac_per_s"] = r["images_per_s"] * gmac
                results.append(r)
                print(f"batch {b:>4} {layout:>13} {attention:>5}: {r['images_per_s']:9.2f} img/s  "
                      f"{r['ms_per_forward']:9.2f} ms/forward  ({r['iters']} iters, {r['gmac_per_s']:.1f} GMAC/s, "
                      f"peak +{r['peak_above_rss_bytes'] / 2**30:.2f} GiB over {r['rss_after_warmup_bytes'] / 2**30:.2f} GiB)",
                      file=sys.stderr)
    model.to(memory_format=torch.contiguous_format)

    report = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "model": os.path.abspath(mdir),
        "params": sum(p.numel() for p in model.parameters()),
        "gmac_per_image": gmac,
        "gmac_breakdown": {k: v / 1e9 for k, v in macs.items()},
        "warmup": args.warmup,
        "results": results,
        "env_warnings": env_warnings,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"torch {report['torch']}, diffusers {report['diffusers']}, threads {args.threads}, "
              f"{report['params']} params, {gmac:.4f} GMAC/image "
              f"(conv {macs['conv'] / 1e9:.4f}, linear {macs['linear'] / 1e9:.4f}, attention {macs['attention_matmul'] / 1e9:.4f})")
        print(f"{'batch':>6} {'layout':>13} {'attention':>9} {'img/s':>10} {'ms/forward':>11} {'iters':>6}")
        for r in results:
            print(f"{r['batch']:>6} {r['layout']:>13} {r['attention']:>9} {r['images_per_s']:>10.2f} "
                  f"{r['ms_per_forward']:>11.2f} {r['iters']:>6}")


if __name__ == "__main__":
    main()
