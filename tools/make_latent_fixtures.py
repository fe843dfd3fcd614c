#!/usr/bin/env python3
"""Latent-diffusion conformance fixtures for the Swift `Diffusion` tests (random weights, diffusers 0.27.2).

Reference tool only (never needed at run time or in CI; the Swift tests read the committed files). Uses the tools
venv (Debian torch 1.13, diffusers==0.27.2, safetensors). Deterministic and re-runnable:

    .venv-tools/bin/python tools/make_latent_fixtures.py             # (re)writes the folders below, then verifies
    .venv-tools/bin/python tools/make_latent_fixtures.py --verify    # only re-derive every case from the files

Everything goes under Tests/DiffusionTests/Fixtures/ (each folder is deleted and rewritten; other folders are not
touched) and a marked section of Tests/DiffusionTests/Fixtures/README.md is replaced (or appended):

A. UNet2DConditionModel folders `ldm_unet_heads8/`, `ldm_unet_cin/`, `ldm_unet_linear/`:
       unet/{config.json, diffusion_pytorch_model.safetensors}   (save_pretrained, safe_serialization, float32)
       cases.safetensors   unet.sample [N,C,H,W], unet.timesteps [N] (integers stored as float32),
                           unet.encoder_hidden_states [N,L,D], unet.class_labels [N] (ldm_unet_linear only),
                           unet.emb [N,4*C0] (time MLP + class embedding, debugging aid), unet.out [N,C,H,W]
       cases.json          config summary, shapes, max|out|, fp32-vs-fp64 sensitivity, self-checks
   heads8 = diffusers' Stable Diffusion dummy UNet (8 heads of size 1), cin = LDM cin256 shape scaled down (one head,
   one-token context), linear = use_linear_projection + per-block head list + num_class_embeds + flip/shift.

B. Decoders `ldm_vae_kl/` (vae/ = AutoencoderKL) and `ldm_vqvae/` (vqvae/ = VQModel):
       cases.safetensors   decoder.latents [N,c,h,w] (the input of `.decode()`, i.e. already / scaling_factor),
                           decoder.out [N,C,H,W] = model.decode(latents).sample (VQModel: force_not_quantize=False,
                           i.e. nearest-code lookup first), VQ only: decoder.codes [N,h,w] (nearest-code indices)
   The VQ codebook is overwritten with well-separated random codes and the latents are codes + noise, redrawn
   until every position's nearest code beats the second nearest by a clear margin (cases.json: codebook_gap).

C. Pipeline folders `ldm_pipe_cin_vq/`, `ldm_pipe_cin_kl/` in the project's ClassConditionalLDMPipeline layout
   (the layout tools/train_ldm.py exports and tools/sample_ldm.py samples):
       model_index.json, unet/, vqvae/ or vae/, scheduler/ (DDIMScheduler, LDM schedule),
       class_embedder/{config.json, model.safetensors (embedding.weight [5, D])}, cases.safetensors, cases.json
   Sampling as LDM cin256: context = embedding[cat([null]*N, labels)][:, None, :] ([2N,1,D]); per step one
   batched UNet forward of cat([x, x]) (unconditional half first), eps = u + 3 (c - u); DDIM 10 steps;
   latents = final x; samples = first_stage.decode(latents / scaling_factor).sample (before any clamping).
       ddim.{noise [N,c,h,w], class_labels [N], timesteps [10], latents [N,c,h,w], samples [N,C,H,W]}   eta 0
       ddim_eta1.{same} + ddim_eta1.variance_noise [10,N,c,h,w]  (the `variance_noise` of step i)      eta 1
       VQ only: ddim.codes, ddim_eta1.codes [N,h,w] (the codes the decode looked up)
   The VQ codebook is drawn AFTER sampling (sampling does not depend on it), scaled to the latents (a random UNet
   gives final latents of std ~40, like the pixel fixtures' samples), best of 64 seeded draws (widest min gap
   between nearest and second-nearest code distance; asserted > 100x the float32 pipeline's latent error).

How the references are made:
- Weights: default diffusers init under torch.manual_seed(seed), then p += 0.05*randn for tensors with >= 2 dims
  and p += 0.1*randn for 1-D ones (biases, GroupNorm/LayerNorm affine), from a seeded generator, so zero biases
  and unit norms become non-trivial.
- Reference outputs come from float64 copies (model.double()) of the float32 weights that were saved; inputs are
  drawn in float32 and stored as float32; outputs are computed in float64 and cast to float32 for storage.
  diffusers still computes the sinusoidal timestep projection in float32 (Timesteps; then cast to the model
  dtype), and the scheduler tables (alphas_cumprod) are float32; the fixtures keep that (it IS the reference) and
  cases.json records how much it matters (`timeproj64`).
- Every model with attention gets tools/torch_attention.py's BmmAttnProcessor (diffusers' AttnProcessor math
  with bmm instead of baddbmm over torch.empty: with the default processor torch 1.13 on this CPU gives NaN
  outputs, always for ldm_unet_heads8/ldm_unet_linear and sporadically for the one-token ldm_unet_cin).
- `fp32_vs_fp64` = the same computation with the float32 model, relative max error max|a-b|/max|b|: how far a
  correct float32 port can be expected to land from the stored reference.
- Runs single-threaded with deterministic algorithms; all seeds are fixed below.
"""
import argparse
import copy
import json
import os
import re
import shutil
import stat
import sys

import safetensors.torch  # noqa: F401  (import before diffusers: 0.27 uses it without importing it)
from safetensors.torch import load_file, save_file

import numpy as np
import torch

import diffusers
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, VQModel
from diffusers.utils import logging as dlogging

sys.dont_write_bytecode = True  # no __pycache__ for the imported tools modules
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_attention import install_bmm_attention  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures")
README = os.path.join(OUT_DIR, "README.md")
README_BEGIN = "<!-- BEGIN tools/make_latent_fixtures.py (generated section; rerun the script to update) -->"
README_END = "<!-- END tools/make_latent_fixtures.py -->"

PERTURB = 0.05      # added noise std for weights with >= 2 dims
PERTURB_1D = 0.1    # ... and for 1-D parameters (biases, norm affine)
GUIDANCE = 3.0
DDIM_STEPS = 10
MAX_FOLDER_BYTES = 400 * 1024
VQ_GAP_MIN = 0.05   # required min over positions of (2nd nearest - nearest code distance), decoder cases
CODEBOOK_TRIES = 64  # pipelines: seeded codebook draws; the one with the widest nearest/2nd-nearest gap is kept

LDM_SCHEDULER = dict(  # LDM's "linear" schedule (tools/train_ldm.py SCHEDULER_CONFIG)
    num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading",
)

# ---------------------------------------------------------------------------------------------------------------
# A. UNet2DConditionModel cases
# ---------------------------------------------------------------------------------------------------------------
UNETS = [
    dict(
        name="ldm_unet_heads8",
        seed=2001,
        summary="diffusers' Stable Diffusion dummy UNet (tests/pipelines/stable_diffusion): 4x16x16, (4, 8), "
                "attention_head_dim 8 = 8 HEADS (of size 1 at 8 channels; mid block too), groups 2, "
                "cross_attention_dim 32, 5-token context",
        unet=dict(
            sample_size=16, in_channels=4, out_channels=4,
            block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8,
        ),
        timesteps=[999, 0], context_len=5, class_labels=None,
    ),
    dict(
        name="ldm_unet_cin",
        seed=2002,
        summary="LDM cin256 shape, scaled down to fit 400 KB: 3x8x8 (8->4->2), (8, 8, 16), Down/CrossAttnDown/"
                "CrossAttnDown, attention_head_dim 1 = ONE head (head size = channels), groups 8 (1 and 2 "
                "channels/group), cross_attention_dim 24, one-token context (a class embedding)",
        unet=dict(
            sample_size=8, in_channels=3, out_channels=3,
            block_out_channels=(8, 8, 16), layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=24, attention_head_dim=1,
        ),
        timesteps=[1, 500, 999], context_len=1, class_labels=None,
    ),
    dict(
        name="ldm_unet_linear",
        seed=2003,
        summary="SD2-style use_linear_projection (proj_in/proj_out Linear on [B,HW,C]), attention_head_dim [2, 4] "
                "per down block (heads: down 2, 4; mid 4 = last entry; up 4, 2 = reversed), (8, 16), groups 4, "
                "num_class_embeds 5 (nn.Embedding added to the time embedding), flip_sin_to_cos false, "
                "freq_shift 1, cross_attention_dim 16, 3-token context, 2x8x8",
        unet=dict(
            sample_size=8, in_channels=2, out_channels=2,
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, attention_head_dim=[2, 4], use_linear_projection=True,
            num_class_embeds=5, flip_sin_to_cos=False, freq_shift=1,
        ),
        timesteps=[0, 999, 1, 500], context_len=3, class_labels=[4, 0, 3, 1],
    ),
]

# ---------------------------------------------------------------------------------------------------------------
# B. first-stage decoders
# ---------------------------------------------------------------------------------------------------------------
AE_COMMON = dict(
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),  # must be given: the default is ONE block
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16,
)
KL_CONFIG = dict(AE_COMMON, in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.5, force_upcast=False)
VQ_CONFIG = dict(AE_COMMON, in_channels=1, out_channels=1, latent_channels=3, num_vq_embeddings=16,
                 scaling_factor=1.0)

DECODERS = [
    dict(name="ldm_vae_kl", kind="kl", seed=2101, folder="vae", config=KL_CONFIG, n=2,
         summary="AutoencoderKL decoder: latent 4x8x8 -> 3x16x16 (post_quant_conv 1x1, conv_in, mid resnet/attn/resnet, "
                 "2 UpDecoderBlock2D of 2 resnets, one Upsample2D), groups 4, every GroupNorm eps 1e-6, "
                 "scaling_factor 0.5"),
    dict(name="ldm_vqvae", kind="vq", seed=2102, folder="vqvae", config=VQ_CONFIG, n=2,
         summary="VQModel decoder: latent 3x8x8 -> nearest of 16 codes -> post_quant_conv -> decoder -> 1x16x16, "
                 "groups 4, scaling_factor 1.0"),
]

# ---------------------------------------------------------------------------------------------------------------
# C. pipelines
# ---------------------------------------------------------------------------------------------------------------
EMBED_DIM = 16
PIPE_UNET = dict(  # cin-shaped (Down, CrossAttn; one head; one-token context), sized so the folder stays < 400 KB
    sample_size=8, block_out_channels=(8, 10), layers_per_block=1, norm_num_groups=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=EMBED_DIM, attention_head_dim=1,
)
PIPES = [
    dict(name="ldm_pipe_cin_vq", kind="vq", seed=2201, folder="vqvae", first_stage=VQ_CONFIG,
         unet=dict(PIPE_UNET, in_channels=3, out_channels=3),
         embedder=dict(num_classes=5, embed_dim=EMBED_DIM, null_class=4), labels=[3, 0]),
    dict(name="ldm_pipe_cin_kl", kind="kl", seed=2202, folder="vae", first_stage=KL_CONFIG,
         unet=dict(PIPE_UNET, in_channels=4, out_channels=4),
         embedder=dict(num_classes=5, embed_dim=EMBED_DIM, null_class=4), labels=[1, 2]),
]


# ---------------------------------------------------------------------------------------------------------------
def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            s = PERTURB_1D if p.dim() == 1 else PERTURB
            p.add_(s * torch.randn(p.shape, generator=g, dtype=torch.float32))
    return model.eval()


def build(cls, config, seed):
    torch.manual_seed(seed)
    return perturb(cls(**config), seed + 1)


def prepared(model):
    """eval + BmmAttnProcessor (required on torch 1.13: see tools/torch_attention.py)."""
    return install_bmm_attention(model.eval())


def ref64(model):
    return prepared(copy.deepcopy(model).double())


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def rel_err(a, b):
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def fp64_time_proj_hook(mod, inp, out):
    """Sensitivity probe only: diffusers' sinusoidal projection computed in float64 instead of float32."""
    t = inp[0].to(torch.float64)
    half = mod.num_channels // 2
    exponent = -np.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - mod.downscale_freq_shift)
    emb = t[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if mod.flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


def folder_bytes(d):
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(d) for f in fs)


def fresh_dir(name):
    d = os.path.join(OUT_DIR, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def compact_json(obj):
    """indent=2, but lists of scalars on one line."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]" if m.group(1) else "[]",
                  text)


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(compact_json(obj) + "\n")


def write_cases(d, tensors, info, script_note):
    for k, v in tensors.items():
        assert v.dtype == torch.float32 and v.is_contiguous(), k
        assert torch.isfinite(v).all(), k
    save_file(tensors, os.path.join(d, "cases.safetensors"), metadata={"generator": "tools/make_latent_fixtures.py"})
    info["tensors"] = {k: list(v.shape) for k, v in sorted(tensors.items())}
    info["notes"] = script_note
    write_json(os.path.join(d, "cases.json"), info)


def config_of(model):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}


def unet_embedding(ref, timesteps, class_labels):
    """The embedding every ResnetBlock2D receives (time MLP + class embedding), from the float64 reference."""
    t_emb = ref.time_proj(timesteps).to(torch.float64)
    emb = ref.time_embedding(t_emb)
    if ref.class_embedding is not None:
        emb = emb + ref.class_embedding(class_labels)
    return emb


def heads_summary(model):
    """[(block, heads, head size)] of every Transformer2DModel's first attention, as diffusers built them."""
    rows = []
    for name, m in model.named_modules():
        if type(m).__name__ == "Transformer2DModel":
            a = m.transformer_blocks[0].attn1
            rows.append(dict(block=name, channels=m.in_channels, heads=a.heads, head_size=a.inner_dim // a.heads,
                             group_norm_eps=m.norm.eps, layer_norm_eps=m.transformer_blocks[0].norm1.eps,
                             proj_in=type(m.proj_in).__name__))
    return rows


# ---------------------------------------------------------------------------------------------------------------
def gen_unet(spec, report):
    d = fresh_dir(spec["name"])
    model = build(UNet2DConditionModel, spec["unet"], spec["seed"])
    model.save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
    model = prepared(UNet2DConditionModel.from_pretrained(os.path.join(d, "unet")))  # as a consumer would
    ref = ref64(model)
    cfg = model.config
    g = torch.Generator().manual_seed(spec["seed"] + 2)
    n, C, H = len(spec["timesteps"]), cfg.in_channels, cfg.sample_size
    sample = torch.randn((n, C, H, H), generator=g, dtype=torch.float32)
    ctx = torch.randn((n, spec["context_len"], cfg.cross_attention_dim), generator=g, dtype=torch.float32)
    ts = torch.tensor(spec["timesteps"], dtype=torch.long)
    cl = torch.tensor(spec["class_labels"], dtype=torch.long) if spec["class_labels"] is not None else None
    checks = {}
    with torch.no_grad():
        out64 = ref(sample.double(), ts, encoder_hidden_states=ctx.double(), class_labels=cl).sample
        out32 = model(sample, ts, encoder_hidden_states=ctx, class_labels=cl).sample
        emb = unet_embedding(ref, ts, cl)
        probe = ref64(model)
        probe.time_proj.register_forward_hook(fp64_time_proj_hook)
        out_tp = probe(sample.double(), ts, encoder_hidden_states=ctx.double(), class_labels=cl).sample
        # the cases must exercise every input: the output has to move with t, the context and the class
        checks["sensitivity_timestep"] = rel_err(
            ref(sample.double(), ts.flip(0), encoder_hidden_states=ctx.double(), class_labels=cl).sample, out64)
        checks["sensitivity_context"] = rel_err(
            ref(sample.double(), ts, encoder_hidden_states=ctx.double().roll(1, 0), class_labels=cl).sample, out64)
        if cl is not None:
            checks["sensitivity_class"] = rel_err(
                ref(sample.double(), ts, encoder_hidden_states=ctx.double(), class_labels=cl.roll(1, 0)).sample, out64)
    checks["fp32_vs_fp64"] = rel_err(out32, out64)
    checks["timeproj64_vs_diffusers"] = rel_err(out_tp, out64)
    tensors = {
        "unet.sample": f32(sample),
        "unet.timesteps": ts.to(torch.float32),
        "unet.encoder_hidden_states": f32(ctx),
        "unet.emb": f32(emb),
        "unet.out": f32(out64),
    }
    if cl is not None:
        tensors["unet.class_labels"] = cl.to(torch.float32)
    nparams = sum(p.numel() for p in model.parameters())
    info = dict(
        fixture=spec["name"], kind="UNet2DConditionModel", summary=spec["summary"], seed=spec["seed"],
        config=config_of(model), parameters=nparams,
        transformers=heads_summary(model),
        timesteps=spec["timesteps"], class_labels=spec["class_labels"], context_len=spec["context_len"],
        max_abs_out=float(out64.abs().max()), checks=checks,
    )
    write_cases(d, tensors, info,
                "unet.out = model(unet.sample, unet.timesteps.long(), encoder_hidden_states=unet.encoder_hidden_states"
                + (", class_labels=unet.class_labels.long()" if cl is not None else "")
                + ").sample with a float64 copy of the saved float32 weights (diffusers' float32 timestep "
                  "projection kept). unet.emb = time_embedding(time_proj(t)) (+ class_embedding(label)), the "
                  "embedding every ResnetBlock2D receives before its SiLU. checks.fp32_vs_fp64 = the float32 model "
                  "vs the reference (relative max error): what a correct float32 port can be expected to match; "
                  "timeproj64_vs_diffusers = effect of computing the timestep sinusoid in float64 instead.")
    report[spec["name"]] = dict(params=nparams, max_abs_out=info["max_abs_out"], **checks)
    assert checks["fp32_vs_fp64"] < 1e-5, checks
    for k, v in checks.items():
        if k.startswith("sensitivity"):
            assert v > 1e-2, (spec["name"], k, v)
    return d


# ---------------------------------------------------------------------------------------------------------------
def separated_codes(num, dim, scale, min_dist, g, offset=None):
    """num random codes (randn * scale [+ offset]) with pairwise distance >= min_dist (rejection sampling)."""
    codes = []
    for _ in range(100000):
        c = torch.randn(dim, generator=g, dtype=torch.float64) * scale
        if offset is not None:
            c = c + offset
        if all(float((c - o).norm()) >= min_dist for o in codes):
            codes.append(c)
            if len(codes) == num:
                return torch.stack(codes)
    raise RuntimeError("could not place the codes; lower min_dist")


def code_gaps(latents, codebook):
    """-> (codes [N,h,w] long, gaps [N,h,w]): nearest code (exact float64 distances) and 2nd - 1st distance."""
    z = latents.to(torch.float64).permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    e = codebook.to(torch.float64)
    dist = ((z[:, None, :] - e[None, :, :]) ** 2).sum(-1).sqrt()
    srt, idx = dist.sort(dim=1)
    shape = (latents.shape[0], latents.shape[2], latents.shape[3])
    return idx[:, 0].reshape(shape), (srt[:, 1] - srt[:, 0]).reshape(shape)


def diffusers_codes(vq, latents):
    """The indices VQModel.decode looks up (its quantize(): argmin of torch.cdist)."""
    with torch.no_grad():
        _, _, (_, _, idx) = vq.quantize(latents)
    return idx.reshape(latents.shape[0], latents.shape[2], latents.shape[3])


def gen_decoder(spec, report):
    d = fresh_dir(spec["name"])
    kl = spec["kind"] == "kl"
    cls = AutoencoderKL if kl else VQModel
    model = build(cls, spec["config"], spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"] + 2)
    cfg = spec["config"]
    c, h = cfg["latent_channels"], cfg["sample_size"] // 2 ** (len(cfg["block_out_channels"]) - 1)
    n = spec["n"]
    info_extra = {}
    if not kl:
        # well-separated codes; latents = a random code + noise, redrawn where the nearest code is nearly tied
        book = separated_codes(cfg["num_vq_embeddings"], c, 1.0, 1.0, g)
        with torch.no_grad():
            model.quantize.embedding.weight.copy_(book.float())
        book = model.quantize.embedding.weight.detach().double()
        pick = torch.randint(0, cfg["num_vq_embeddings"], (n, h, h), generator=g)
        lat = book[pick].permute(0, 3, 1, 2).float() + 0.3 * torch.randn((n, c, h, h), generator=g)
        for _ in range(1000):
            _, gaps = code_gaps(lat, book)
            bad = gaps < VQ_GAP_MIN
            if not bad.any():
                break
            redraw = book[pick].permute(0, 3, 1, 2).float() + 0.3 * torch.randn((n, c, h, h), generator=g)
            lat = torch.where(bad[:, None, :, :], redraw, lat)
        latents = lat.contiguous()
    else:
        latents = torch.randn((n, c, h, h), generator=g, dtype=torch.float32)
    model.save_pretrained(os.path.join(d, spec["folder"]), safe_serialization=True)
    model = prepared(cls.from_pretrained(os.path.join(d, spec["folder"])))
    ref = ref64(model)
    checks = {}
    with torch.no_grad():
        out64 = ref.decode(latents.double()).sample
        out32 = model.decode(latents).sample
    checks["fp32_vs_fp64"] = rel_err(out32, out64)
    tensors = {"decoder.latents": f32(latents), "decoder.out": f32(out64)}
    if not kl:
        codes, gaps = code_gaps(latents, model.quantize.embedding.weight)
        assert torch.equal(codes, diffusers_codes(ref, latents.double())), "float64 cdist disagrees"
        assert torch.equal(codes, diffusers_codes(model, latents)), "float32 cdist disagrees"
        tensors["decoder.codes"] = codes.to(torch.float32)
        info_extra = dict(codebook_gap_min=float(gaps.min()), codes_used=sorted(set(codes.flatten().tolist())),
                          codebook_min_pairwise_distance=float(torch.pdist(model.quantize.embedding.weight.double()).min()))
        checks["sensitivity_codes"] = rel_err(  # a wrong lookup must show: decode without quantizing
            ref.decode(latents.double(), force_not_quantize=True).sample, out64)
    nparams = sum(p.numel() for p in model.parameters())
    dparams = sum(p.numel() for p in model.decoder.parameters()) + sum(p.numel() for p in model.post_quant_conv.parameters())
    info = dict(fixture=spec["name"], kind=type(model).__name__, summary=spec["summary"], seed=spec["seed"],
                folder=spec["folder"], config=config_of(model), parameters=nparams, decode_parameters=dparams,
                max_abs_out=float(out64.abs().max()), checks=checks, **info_extra)
    note = ("decoder.out = model.decode(decoder.latents).sample, float64 copy of the saved weights. decoder.latents "
            "are what goes INTO decode(), i.e. a pipeline's latents already divided by scaling_factor "
            f"({cfg['scaling_factor']}). ")
    if not kl:
        note += ("VQModel.decode (force_not_quantize=False) first replaces every latent vector [c] at (n, y, x) by its "
                 "nearest codebook row (quantize.embedding.weight, Euclidean distance, torch.cdist + argmin; the "
                 "straight-through z + (e - z) equals e up to float rounding), then post_quant_conv -> decoder. "
                 "decoder.codes = those indices (float32); codebook_gap_min = min over positions of (2nd nearest - "
                 "nearest distance), so the lookup is not on a knife edge. checks.sensitivity_codes = relative "
                 "change of the output when the lookup is skipped.")
    else:
        note += "AutoencoderKL.decode = post_quant_conv (1x1) -> decoder (no sampling, no scaling inside)."
    write_cases(d, tensors, info, note)
    report[spec["name"]] = dict(params=nparams, max_abs_out=info["max_abs_out"], **checks,
                                **({"codebook_gap_min": info_extra["codebook_gap_min"]} if not kl else {}))
    assert checks["fp32_vs_fp64"] < 1e-5, checks
    return d


# ---------------------------------------------------------------------------------------------------------------
def run_pipe(unet, emb_weight, first_stage, sched_config, labels, null_class, noise, eta, vnoise, dtype):
    """The ClassConditionalLDMPipeline loop (tools/sample_ldm.py's `sample`) -> (timesteps, latents, samples)."""
    sched = DDIMScheduler.from_config(sched_config)
    sched.set_timesteps(DDIM_STEPS)
    n = len(labels)
    x = noise.to(dtype) * sched.init_noise_sigma
    lab = torch.tensor([null_class] * n + list(labels), dtype=torch.long)
    ctx = emb_weight.to(dtype)[lab][:, None, :]
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            out = unet(inp, t, encoder_hidden_states=ctx).sample
            eps_u, eps_c = out[:n], out[n:]
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            vn = vnoise[i].to(dtype) if eta > 0 else None
            x = sched.step(eps, t, x, eta=eta, variance_noise=vn).prev_sample
        samples = None
        if first_stage is not None:
            samples = first_stage.decode(x / first_stage.config.scaling_factor).sample
    return sched.timesteps, x, samples


def gen_pipe(spec, report):
    d = fresh_dir(spec["name"])
    kl = spec["kind"] == "kl"
    fcls = AutoencoderKL if kl else VQModel
    ecfg = spec["embedder"]
    unet = build(UNet2DConditionModel, spec["unet"], spec["seed"])
    torch.manual_seed(spec["seed"] + 10)
    emb = torch.nn.Embedding(ecfg["num_classes"], ecfg["embed_dim"])
    perturb(emb, spec["seed"] + 11)
    first_stage = build(fcls, spec["first_stage"], spec["seed"] + 20)
    assert spec["unet"]["in_channels"] == spec["first_stage"]["latent_channels"]

    g = torch.Generator().manual_seed(spec["seed"] + 2)
    c, h = spec["unet"]["in_channels"], spec["unet"]["sample_size"]
    n = len(spec["labels"])
    noise0 = torch.randn((n, c, h, h), generator=g, dtype=torch.float32)
    noise1 = torch.randn((n, c, h, h), generator=g, dtype=torch.float32)
    vnoise = torch.randn((DDIM_STEPS, n, c, h, h), generator=g, dtype=torch.float32)

    # sampling does not depend on the first stage: sample first, then (VQ) fit a codebook with no near-ties
    unet_ref = ref64(unet)
    sched_config = DDIMScheduler(**LDM_SCHEDULER).config
    runs = {}
    for key, eta, x_T in (("ddim", 0.0, noise0), ("ddim_eta1", 1.0, noise1)):
        runs[key] = run_pipe(unet_ref, emb.weight.detach(), None, sched_config, spec["labels"], ecfg["null_class"],
                             x_T, eta, vnoise, torch.float64)
    info_extra = {}
    if not kl:
        allz = torch.cat([runs[k][1] for k in runs])
        mean = allz.mean(dim=(0, 2, 3))
        std = float(allz.std())
        # the latents of a random UNet are large (std ~40 here, as in the pixel fixtures): scale the codes to them
        # and keep, of CODEBOOK_TRIES seeded draws, the codebook whose nearest/second-nearest gap is widest
        best = None
        for attempt in range(CODEBOOK_TRIES):
            gc = torch.Generator().manual_seed(spec["seed"] + 1000 + attempt)
            book = separated_codes(spec["first_stage"]["num_vq_embeddings"], c, std, 0.8 * std, gc, offset=mean).float()
            gap = min(float(code_gaps(runs[k][1], book.double())[1].min()) for k in runs)
            if best is None or gap > best[0]:
                best = (gap, attempt, book)
        gap, attempt, book32 = best
        with torch.no_grad():
            first_stage.quantize.embedding.weight.copy_(book32)
        info_extra.update(codebook_seed=spec["seed"] + 1000 + attempt, codebook_tries=CODEBOOK_TRIES,
                          latents_std=std, codebook_min_pairwise_distance=float(torch.pdist(book32.double()).min()))

    # write the folder in the pipeline layout
    unet.save_pretrained(os.path.join(d, "unet"), safe_serialization=True)
    first_stage.save_pretrained(os.path.join(d, spec["folder"]), safe_serialization=True)
    DDIMScheduler(**LDM_SCHEDULER).save_pretrained(os.path.join(d, "scheduler"))
    os.makedirs(os.path.join(d, "class_embedder"))
    save_file({"embedding.weight": f32(emb.weight)}, os.path.join(d, "class_embedder", "model.safetensors"),
              metadata={"format": "pt"})
    write_json(os.path.join(d, "class_embedder", "config.json"), dict(_class_name="ClassEmbedder", **ecfg))
    write_json(os.path.join(d, "model_index.json"), {
        "_class_name": "ClassConditionalLDMPipeline", "_diffusers_version": diffusers.__version__,
        "_note": "random-weight conformance fixture (tools/make_latent_fixtures.py); no diffusers pipeline class "
                 "exists for class-conditional LDM (cin256); tools/sample_ldm.py samples this layout",
        "unet": ["diffusers", "UNet2DConditionModel"],
        spec["folder"]: ["diffusers", fcls.__name__],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "class_embedder": ["ptqd", "ClassEmbedder"],
    })

    # reference runs from the files just written
    unet, first_stage, emb_w, sched_config = load_pipe_folder(d, spec)
    unet_ref, fs_ref = ref64(unet), ref64(first_stage)
    tensors, checks = {}, {}
    info_runs = {}
    for key, eta, x_T in (("ddim", 0.0, noise0), ("ddim_eta1", 1.0, noise1)):
        ts, lat, smp = run_pipe(unet_ref, emb_w, fs_ref, sched_config, spec["labels"], ecfg["null_class"],
                                x_T, eta, vnoise, torch.float64)
        assert torch.equal(lat, runs[key][1]), "sampling changed after the save/reload"
        _, lat32, smp32 = run_pipe(unet, emb_w, first_stage, sched_config, spec["labels"], ecfg["null_class"],
                                   x_T, eta, vnoise, torch.float32)
        _, lat_b, _ = run_pipe(unet_ref, emb_w, None, sched_config, spec["labels"], ecfg["null_class"],
                               x_T, eta, vnoise, torch.float64)
        checks[f"{key}_rerun_max_abs_diff"] = float((lat_b - lat).abs().max())
        checks[f"{key}_latents_fp32_vs_fp64"] = rel_err(lat32, lat)
        checks[f"{key}_samples_fp32_vs_fp64"] = rel_err(smp32, smp)
        tensors[f"{key}.noise"] = f32(x_T)
        tensors[f"{key}.class_labels"] = torch.tensor(spec["labels"], dtype=torch.float32)
        tensors[f"{key}.timesteps"] = ts.to(torch.float32)
        tensors[f"{key}.latents"] = f32(lat)
        tensors[f"{key}.samples"] = f32(smp)
        if eta > 0:
            tensors[f"{key}.variance_noise"] = f32(vnoise)
        info_runs[key] = dict(eta=eta, timesteps=[int(t) for t in ts],
                              prev_timesteps=[int(t) - LDM_SCHEDULER["num_train_timesteps"] // DDIM_STEPS for t in ts],
                              max_abs_latents=float(lat.abs().max()), max_abs_samples=float(smp.abs().max()))
        if not kl:
            codes, gaps = code_gaps(lat / first_stage.config.scaling_factor, first_stage.quantize.embedding.weight)
            assert torch.equal(codes, diffusers_codes(fs_ref, lat / first_stage.config.scaling_factor))
            assert torch.equal(codes, diffusers_codes(first_stage, f32(lat))), "float32 lookup differs"
            assert torch.equal(codes, diffusers_codes(first_stage, lat32)), "float32 pipeline picks other codes"
            tensors[f"{key}.codes"] = codes.to(torch.float32)
            abs32 = float((lat32 - lat).abs().max() / first_stage.config.scaling_factor)
            assert float(gaps.min()) > 100 * abs32, ("lookup too close to a tie", float(gaps.min()), abs32)
            info_runs[key].update(codebook_gap_min=float(gaps.min()), latents_fp32_max_abs_err=abs32,
                                  codes_used=sorted(set(codes.flatten().tolist())))
    # guidance must matter (else a port that ignores the unconditional half would pass)
    _, lat_g1, _ = run_pipe(unet_ref, emb_w, None, sched_config, spec["labels"], ecfg["null_class"], noise0, 0.0,
                            vnoise, torch.float64)
    sizes = {sub: folder_bytes(os.path.join(d, sub)) for sub in ("unet", spec["folder"], "class_embedder")}
    nparams = dict(unet=sum(p.numel() for p in unet.parameters()),
                   first_stage=sum(p.numel() for p in first_stage.parameters()), class_embedder=emb_w.numel())
    info = dict(
        fixture=spec["name"], kind="ClassConditionalLDMPipeline", seed=spec["seed"],
        summary=f"class-conditional LDM (cin256 style) with a {fcls.__name__} first stage: labels {spec['labels']}, "
                f"null class {ecfg['null_class']}, guidance {GUIDANCE}, DDIM {DDIM_STEPS} steps, eta 0 and 1",
        guidance=GUIDANCE, ddim_steps=DDIM_STEPS, null_class=ecfg["null_class"], class_labels=spec["labels"],
        unet_config=config_of(unet), first_stage_folder=spec["folder"], first_stage_config=config_of(first_stage),
        class_embedder=ecfg, scheduler_config={k: v for k, v in sched_config.items() if not k.startswith("_")},
        parameters=nparams, runs=info_runs, checks=checks, **info_extra,
    )
    write_cases(d, tensors, info,
                "Loop (tools/sample_ldm.py `sample`): scheduler = DDIMScheduler.from_pretrained(scheduler/), "
                "set_timesteps(10); x = noise (init_noise_sigma = 1); ctx = embedding.weight[cat([null]*N, labels)]"
                "[:, None, :]; for i, t: out = unet(cat([x, x]), t, encoder_hidden_states=ctx).sample; "
                "eps = out[:N] + 3 * (out[N:] - out[:N]); x = step(eps, t, x, eta, variance_noise = "
                "ddim_eta1.variance_noise[i] if eta > 0).prev_sample. latents = final x; samples = "
                "first_stage.decode(latents / scaling_factor).sample (not clamped; VQ: nearest-code lookup inside "
                "decode, codes = the indices it used). UNet, embedding and decoder run in float64 (copies of the "
                "saved float32 weights), the DDIM step is diffusers' own (float32 alphas_cumprod scalars). "
                "checks.*_fp32_vs_fp64 = the whole pipeline in float32 vs the reference.")
    report[spec["name"]] = dict(params=nparams, **checks, **{f"{k}_gap": v.get("codebook_gap_min") for k, v in info_runs.items() if "codebook_gap_min" in v})
    for k, v in checks.items():
        if k.endswith("fp32_vs_fp64"):
            assert v < 1e-4, (k, v)
        if k.endswith("rerun_max_abs_diff"):
            assert v == 0.0, (k, v)
    return d


def load_pipe_folder(d, spec=None):
    """-> (unet, first_stage, embedding weight, scheduler config) from a pipeline folder, as a consumer would."""
    with open(os.path.join(d, "model_index.json")) as f:
        index = json.load(f)
    unet = prepared(UNet2DConditionModel.from_pretrained(os.path.join(d, "unet")))
    sub = "vqvae" if "vqvae" in index else "vae"
    cls = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}[index[sub][1]]
    first_stage = prepared(cls.from_pretrained(os.path.join(d, sub)))
    emb_w = load_file(os.path.join(d, "class_embedder", "model.safetensors"))["embedding.weight"]
    sched_config = DDIMScheduler.from_pretrained(os.path.join(d, "scheduler")).config
    return unet, first_stage, emb_w, sched_config


# ---------------------------------------------------------------------------------------------------------------
def verify_all():
    """Re-derive every case from the committed files alone (diffusers from_pretrained) and compare."""
    worst = 0.0
    results = {}
    for spec in UNETS:
        d = os.path.join(OUT_DIR, spec["name"])
        c = load_file(os.path.join(d, "cases.safetensors"))
        ref = ref64(UNet2DConditionModel.from_pretrained(os.path.join(d, "unet")))
        cl = c["unet.class_labels"].long() if "unet.class_labels" in c else None
        with torch.no_grad():
            out = ref(c["unet.sample"].double(), c["unet.timesteps"].long(),
                      encoder_hidden_states=c["unet.encoder_hidden_states"].double(), class_labels=cl).sample
            emb = unet_embedding(ref, c["unet.timesteps"].long(), cl)
        results[spec["name"]] = dict(out=rel_err(out, c["unet.out"]), emb=rel_err(emb, c["unet.emb"]))
    for spec in DECODERS:
        d = os.path.join(OUT_DIR, spec["name"])
        c = load_file(os.path.join(d, "cases.safetensors"))
        cls = AutoencoderKL if spec["kind"] == "kl" else VQModel
        ref = ref64(cls.from_pretrained(os.path.join(d, spec["folder"])))
        with torch.no_grad():
            out = ref.decode(c["decoder.latents"].double()).sample
        r = dict(out=rel_err(out, c["decoder.out"]))
        if spec["kind"] == "vq":
            codes = diffusers_codes(ref, c["decoder.latents"].double())
            r["codes_mismatch"] = float((codes.float() != c["decoder.codes"]).sum())
        results[spec["name"]] = r
    for spec in PIPES:
        d = os.path.join(OUT_DIR, spec["name"])
        c = load_file(os.path.join(d, "cases.safetensors"))
        unet, fs, emb_w, sched_config = load_pipe_folder(d)
        with open(os.path.join(d, "class_embedder", "config.json")) as f:
            ecfg = json.load(f)
        unet_ref, fs_ref = ref64(unet), ref64(fs)
        r = {}
        for key, eta in (("ddim", 0.0), ("ddim_eta1", 1.0)):
            labels = c[f"{key}.class_labels"].long().tolist()
            vn = c.get(f"{key}.variance_noise")
            ts, lat, smp = run_pipe(unet_ref, emb_w, fs_ref, sched_config, labels, ecfg["null_class"],
                                    c[f"{key}.noise"], eta, vn, torch.float64)
            assert torch.equal(ts.float(), c[f"{key}.timesteps"]), key
            r[f"{key}.latents"] = rel_err(lat, c[f"{key}.latents"])
            r[f"{key}.samples"] = rel_err(smp, c[f"{key}.samples"])
            if f"{key}.codes" in c:
                codes = diffusers_codes(fs_ref, lat / fs.config.scaling_factor)
                r[f"{key}.codes_mismatch"] = float((codes.float() != c[f"{key}.codes"]).sum())
        # cross-check with the project's own sampler (tools/sample_ldm.py), if it imports cleanly
        try:
            import sample_ldm
            su, se, sf, scfg = sample_ldm.load_pipeline(d)
            su, sf, se = su.double(), sf.double(), se.double()
            install_bmm_attention(su)
            install_bmm_attention(sf)
            se.null_class = scfg["null_class"]
            sched = DDIMScheduler.from_pretrained(os.path.join(d, "scheduler"))
            sched.set_timesteps(DDIM_STEPS)
            lat, smp = sample_ldm.sample(su, se, sf, sched, c["ddim.class_labels"].long(), c["ddim.noise"].double(),
                                         GUIDANCE, eta=0.0)
            r["sample_ldm.ddim.samples"] = rel_err(smp, c["ddim.samples"])
        except Exception as e:  # noqa: BLE001  (informational only: that file is edited by others)
            print(f"  (tools/sample_ldm.py cross-check skipped: {type(e).__name__}: {e})", file=sys.stderr)
        results[spec["name"]] = r
    for name, r in results.items():
        print(f"verify {name:>16}: " + ", ".join(f"{k}={v:.1e}" for k, v in r.items()), file=sys.stderr)
        worst = max([worst] + [v for k, v in r.items() if not k.endswith("mismatch")])
        assert all(v == 0 for k, v in r.items() if k.endswith("mismatch")), (name, r)
    if worst > 1e-6:  # only float32 storage rounding may differ
        print(f"VERIFY FAILED: worst relative error {worst:.2e}", file=sys.stderr)
        sys.exit(1)
    print(f"verify OK (worst relative error {worst:.1e})", file=sys.stderr)
    return results


# ---------------------------------------------------------------------------------------------------------------
def readme_section(report, sizes):
    L = [README_BEGIN, "", "## Latent diffusion fixtures (UNet2DConditionModel, AutoencoderKL / VQModel, class-conditional LDM pipelines)", ""]
    L.append("Generated by `tools/make_latent_fixtures.py` (random weights: default diffusers init, then "
             f"`p += {PERTURB}*randn` for weights, `{PERTURB_1D}*randn` for 1-D parameters; seeded). Regenerate "
             "(rewrites only the `ldm_*` folders and this section) and re-verify:")
    L.append("")
    L.append("```\n.venv-tools/bin/python tools/make_latent_fixtures.py            # generate + verify\n"
             ".venv-tools/bin/python tools/make_latent_fixtures.py --verify   # re-derive every case from the files\n```")
    L.append("")
    L.append("Note: `tools/make_fixtures.py` rewrites this whole README; rerun this script afterwards to restore the section.")
    L.append("")
    L.append("References: float64 copies of the saved float32 weights (inputs float32, outputs computed in float64, "
             "stored float32); diffusers' float32 timestep sinusoid and float32 scheduler tables kept. Every model "
             "with attention runs `tools/torch_attention.py`'s `BmmAttnProcessor` (on torch 1.13 diffusers' default "
             "AttnProcessor gives NaN outputs: here 5/5 runs of `ldm_unet_heads8` and `ldm_unet_linear`, 1/5 of "
             "`ldm_unet_cin`; where finite it agrees with the reference to float32 rounding). All tensors float32, NCHW; integer tensors "
             "(timesteps, labels, codes) are stored as float32 and must be converted.")
    L.append("")
    L.append("| folder | contents | size |")
    L.append("|---|---|---|")
    for spec in UNETS:
        L.append(f"| `{spec['name']}` | `unet/` — {spec['summary']} | {sizes[spec['name']] / 1024:.0f} KB |")
    for spec in DECODERS:
        L.append(f"| `{spec['name']}` | `{spec['folder']}/` — {spec['summary']} | {sizes[spec['name']] / 1024:.0f} KB |")
    for spec in PIPES:
        L.append(f"| `{spec['name']}` | `model_index.json`, `unet/`, `{spec['folder']}/`, `scheduler/`, `class_embedder/` — "
                 f"cin-shaped UNet {tuple(PIPE_UNET['block_out_channels'])} (Down/CrossAttnDown), groups {PIPE_UNET['norm_num_groups']}, one head, context [2N,1,{EMBED_DIM}]; "
                 f"{'VQModel (latent 3, 16 codes) -> 1x16x16' if spec['kind'] == 'vq' else 'AutoencoderKL (latent 4, scaling_factor 0.5) -> 3x16x16'}; "
                 f"labels {spec['labels']} | {sizes[spec['name']] / 1024:.0f} KB |")
    L.append("")
    L.append("### Tensors (`cases.safetensors`)")
    L.append("")
    L.append("| name | shape | meaning |")
    L.append("|---|---|---|")
    rows = [
        ("unet.sample", "[N,C,H,W]", "randn input (N = 2 heads8, 3 cin, 4 linear)"),
        ("unet.timesteps", "[N]", "integer timesteps (0, 1, 500, 999 spread over the rows); pass as integers"),
        ("unet.encoder_hidden_states", "[N,L,D]", "randn context: [2,5,32] heads8, [3,1,24] cin, [4,3,16] linear"),
        ("unet.class_labels", "[N]", "`ldm_unet_linear` only: class ids for `num_class_embeds` 5"),
        ("unet.emb", "[N,4·C0]", "time MLP (+ class embedding): what every ResnetBlock2D gets before its SiLU (debug aid)"),
        ("unet.out", "[N,C,H,W]", "`unet(sample, t, encoder_hidden_states=ctx[, class_labels]).sample`"),
        ("decoder.latents", "[N,c,h,w]", "input of `.decode()` (already divided by scaling_factor); N=2, 4x8x8 (KL), 3x8x8 (VQ)"),
        ("decoder.out", "[N,C,H,W]", "`decode(latents).sample`: 3x16x16 (KL), 1x16x16 (VQ, codebook lookup included)"),
        ("decoder.codes", "[N,h,w]", "VQ only: nearest-code indices the lookup picks"),
        ("ddim.noise", "[N,c,h,w]", "pipelines: x_T (N = 2)"),
        ("ddim.class_labels", "[N]", "conditional labels (the unconditional half uses null class 4)"),
        ("ddim.timesteps", "[10]", "DDIM timesteps (leading, offset 1): 901 … 1"),
        ("ddim.latents", "[N,c,h,w]", "final latents, eta 0"),
        ("ddim.samples", "[N,C,H,W]", "`first_stage.decode(latents / scaling_factor).sample`, not clamped"),
        ("ddim.codes", "[N,h,w]", "VQ pipeline only: the codes the decode looked up"),
        ("ddim_eta1.*", "as ddim", "eta 1, own noise"),
        ("ddim_eta1.variance_noise", "[10,N,c,h,w]", "the `variance_noise` passed to DDIM step i"),
    ]
    for k, s, m in rows:
        L.append(f"| `{k}` | {s} | {m} |")
    L.append("")
    L.append("Pipeline loop (as `tools/sample_ldm.py`): `ctx = embedding.weight[cat([null]*N, labels)][:, None, :]`; per "
             "step one UNet forward of `cat([x, x])` (unconditional half first), `eps = u + 3·(c − u)`, "
             "`x = DDIM.step(eps, t, x, eta, variance_noise[i]).prev_sample`. Scheduler: LDM's schedule "
             "(scaled_linear 0.0015 → 0.0195, 1000 steps, leading, steps_offset 1, set_alpha_to_one false, clip_sample false).")
    L.append("")
    L.append("A random UNet is no denoiser, so the final latents are large (|x| up to ~140, std ~40; the pixel fixtures' "
             "samples are alike); the decoders' outputs stay O(1). The VQ pipelines' codebook is therefore scaled to "
             "the latents and chosen (best of 64 seeded draws) so that every position's nearest code wins by the "
             "`gap` below, asserted > 100× the float32 pipeline's max latent error (both in cases.json `runs`).")
    L.append("")
    L.append("### Sensitivity measured at generation")
    L.append("")
    L.append("`fp32` = the same diffusers computation with the float32 model vs the float64 reference "
             "(max|a−b|/max|b|): what a correct float32 port should reach. `timeproj64` = reference with the timestep "
             "sinusoid in float64 instead of diffusers' float32. `gap` = min over positions of (2nd-nearest − nearest "
             "code distance).")
    L.append("")
    L.append("| folder | params | max abs out | fp32 vs fp64 | other |")
    L.append("|---|---|---|---|---|")
    for spec in UNETS:
        r = report[spec["name"]]
        L.append(f"| `{spec['name']}` | {r['params']} | {r['max_abs_out']:.3g} | {r['fp32_vs_fp64']:.1e} | "
                 f"timeproj64 {r['timeproj64_vs_diffusers']:.1e} |")
    for spec in DECODERS:
        r = report[spec["name"]]
        other = f"gap {r['codebook_gap_min']:.3f}" if "codebook_gap_min" in r else ""
        L.append(f"| `{spec['name']}` | {r['params']} | {r['max_abs_out']:.3g} | {r['fp32_vs_fp64']:.1e} | {other} |")
    for spec in PIPES:
        r = report[spec["name"]]
        gaps = ", ".join(f"{k.replace('_gap', '')} gap {v:.3f}" for k, v in r.items() if k.endswith("_gap"))
        L.append(f"| `{spec['name']}` | {sum(r['params'].values())} | — | latents η0 {r['ddim_latents_fp32_vs_fp64']:.1e}, "
                 f"η1 {r['ddim_eta1_latents_fp32_vs_fp64']:.1e}; samples η0 {r['ddim_samples_fp32_vs_fp64']:.1e}, "
                 f"η1 {r['ddim_eta1_samples_fp32_vs_fp64']:.1e} | {gaps} |")
    L.append("")
    L.append("### diffusers 0.27.2 behaviour these fixtures pin down")
    L.append("")
    L.extend(LATENT_SEMANTICS)
    L.append("")
    L.append(README_END)
    return "\n".join(L) + "\n"


LATENT_SEMANTICS = [
    "- `attention_head_dim` is the NUMBER OF HEADS in UNet2DConditionModel (`num_attention_heads` raises in 0.27.2): "
    "heads8 has 8 heads of size 1 at 8 channels; cin has one head of size = channels. A list gives one entry per "
    "down block; the mid block uses the LAST entry and the up blocks the REVERSED list (linear: down 2, 4; mid 4; up 4, 2).",
    "- Transformer2DModel: GroupNorm(norm_num_groups, eps **1e-6**, hard-coded, NOT the UNet's norm_eps); proj_in/proj_out "
    "are 1×1 convs, or Linear on [B, HW, C] with `use_linear_projection`; BasicTransformerBlock LayerNorms eps 1e-5; "
    "q/k/v without bias, to_out with bias; FF = GEGLU (Linear C → 8C, x·GELU(gate) exact erf) → Linear 4C → C.",
    "- With a one-token context the cross-attention softmax is exactly 1: attn2 = to_out(to_v(ctx)) broadcast over "
    "positions (independent of the query).",
    "- The class embedding (`num_class_embeds`) is an nn.Embedding(num, 4·C0) ADDED to the time embedding (integer labels).",
    "- AutoencoderKL / VQModel need `down_block_types`/`up_block_types` listed per level (the defaults are ONE block); "
    "every GroupNorm in the decoder (resnets, mid attention, norm_out) has eps 1e-6; mid attention: 1 head of size C, "
    "q/k/v with bias, GroupNorm, residual. UpDecoderBlock2D = layers_per_block + 1 resnets, Upsample2D (nearest ×2 + "
    "conv) on all but the last level; no skips, no time embedding.",
    "- VQModel.decode quantizes first (force_not_quantize=False): torch.cdist + argmin against quantize.embedding.weight, "
    "straight-through `z + (e − z)` (equals the code up to rounding), then post_quant_conv. `scaling_factor` is NOT "
    "applied inside decode (the pipeline divides). KL's `force_upcast` only matters for fp16 (set false here).",
]


def update_readme(section):
    text = open(README).read() if os.path.exists(README) else ""
    if README_BEGIN in text and README_END in text:
        pre = text[:text.index(README_BEGIN)]
        post = text[text.index(README_END) + len(README_END):].lstrip("\n")
        text = pre + section + post
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(README, "w") as f:
        f.write(text)


def chmod_644(paths):
    for p in paths:
        if os.path.isfile(p):
            os.chmod(p, 0o644)
        for dp, dns, fs in os.walk(p):
            os.chmod(dp, 0o755)
            for f in fs:
                os.chmod(os.path.join(dp, f), stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible, gentle)")
    ap.add_argument("--verify", action="store_true", help="only re-derive every case from the files on disk")
    ap.add_argument("--no-verify", action="store_true", help="generate without the verification pass")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    dlogging.set_verbosity_error()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {args.threads}", file=sys.stderr)
    if args.verify:
        verify_all()
        return
    os.makedirs(OUT_DIR, exist_ok=True)
    report, sizes, dirs = {}, {}, []
    for gen, specs in ((gen_unet, UNETS), (gen_decoder, DECODERS), (gen_pipe, PIPES)):
        for spec in specs:
            d = gen(spec, report)
            dirs.append(d)
            sizes[spec["name"]] = folder_bytes(d)
            print(f"{spec['name']:>16}: {sizes[spec['name']] / 1024:6.1f} KB; "
                  + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in report[spec["name"]].items()),
                  file=sys.stderr)
            assert sizes[spec["name"]] < MAX_FOLDER_BYTES, (spec["name"], sizes[spec["name"]])
    update_readme(readme_section(report, sizes))
    chmod_644(dirs + [README])
    if not args.no_verify:
        verify_all()


if __name__ == "__main__":
    main()
