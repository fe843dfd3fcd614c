#!/usr/bin/env python3
"""Generate the PyTorch/diffusers reference fixtures for the Swift `Diffusion` tests.

Reference tool only (never needed at run time or in CI). Uses Debian's python3-torch and
diffusers==0.27.2 (venv: /opt/ptqd-venv). Deterministic and re-runnable:

    /opt/ptqd-venv/bin/python tools/make_fixtures.py            # rewrites Tests/DiffusionTests/Fixtures/

For every model in MODELS it writes, under Tests/DiffusionTests/Fixtures/<name>/:
    unet/config.json, unet/diffusion_pytorch_model.safetensors   (UNet2DModel.save_pretrained, fp32)
    scheduler/scheduler_config.json                              (DDIMScheduler.save_pretrained)
    cases.safetensors                                            (inputs + reference outputs, all float32)
    cases.json                                                   (what the cases mean)
and Tests/DiffusionTests/Fixtures/README.md.

Reference outputs come from a float64 copy of the model (model.double()); the schedulers' own tables
(betas, alphas_cumprod) stay float32 exactly as diffusers builds them, and diffusers computes the
sinusoidal timestep projection and the attention softmax in float32 even for a float64 model; the
fixtures keep that behaviour (it IS the reference) and the script measures how much it matters.
"""
import argparse
import copy
import json
import os
import shutil
import sys

import numpy as np
import torch

import diffusers
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as dlogging
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "Tests", "DiffusionTests", "Fixtures")

GUIDANCE = 3.0
DDIM_STEPS = 10
N_UNET = 4      # batch of the direct UNet cases
B = 2           # batch of the sampler cases (2B rows per guided forward)
PERTURB = 0.05  # every parameter gets p += PERTURB * randn (zero-initialised biases/norms become non-trivial)

# ---------------------------------------------------------------------------------------------
# The models. Each entry: UNet2DModel kwargs, DDIMScheduler kwargs, and per-model case options.
# ---------------------------------------------------------------------------------------------
MODELS = [
    dict(
        name="cond_attn_28",
        summary="fmnist-like: 1x28x28 (28->14->7), class-conditional (nn.Embedding, 11 classes, null=10), "
                "attention at 14x14 and 7x7 + mid, 2 heads of dim 8, groups 8 (1 channel/group at 8 ch), the project's PTQD scheduler",
        seed=1001,
        unet=dict(
            sample_size=28, in_channels=1, out_channels=1,
            block_out_channels=(8, 16, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=8, num_class_embeds=11,
            flip_sin_to_cos=True, freq_shift=0,
        ),
        scheduler=dict(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
            timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
            clip_sample=False, prediction_type="epsilon", thresholding=False,
        ),
        null_class=10, ddpm_steps=10, variance_type="fixed_small",
        unet_class_labels=[3, 10, 0, 7], sampler_class_labels=[1, 9],
    ),
    dict(
        name="uncond_plain_16",
        summary="3x16x16 unconditional, no attention anywhere (plain Down/UpBlock2D, mid add_attention=false), "
                "layers_per_block 2, groups 4, norm_eps 1e-6, flip_sin_to_cos false, freq_shift 1, "
                "downsample_padding 0 (asymmetric pad), center_input_sample true",
        seed=1002,
        unet=dict(
            sample_size=16, in_channels=3, out_channels=3,
            block_out_channels=(8, 16), layers_per_block=2,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4, norm_eps=1e-6, add_attention=False,
            flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, center_input_sample=True,
        ),
        scheduler=dict(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True,
            clip_sample=True, clip_sample_range=1.5, prediction_type="epsilon", thresholding=False,
        ),
        null_class=None, ddpm_steps=20, variance_type="fixed_large",
    ),
    dict(
        name="vpred_tscls_20",
        summary="2x20x20 (20->10->5), class_embed_type 'timestep' (labels through time_proj + TimestepEmbedding, "
                "null=10), v_prediction, attention_head_dim None (1 head, dim = channels), groups 8 (1 ch/group at 8 ch), "
                "downsample_type/upsample_type 'resnet' (ResnetBlock2D down=avg-pool / up=nearest), "
                "mid_block_scale_factor 1.414, freq_shift 1",
        seed=1003,
        unet=dict(
            sample_size=20, in_channels=2, out_channels=2,
            block_out_channels=(8, 8, 16), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=8, attention_head_dim=None, class_embed_type="timestep",
            downsample_type="resnet", upsample_type="resnet", mid_block_scale_factor=1.414,
            flip_sin_to_cos=True, freq_shift=1,
        ),
        scheduler=dict(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
            timestep_spacing="linspace", steps_offset=0, set_alpha_to_one=True,
            clip_sample=True, clip_sample_range=1.0, prediction_type="v_prediction", thresholding=False,
        ),
        null_class=10, ddpm_steps=10, variance_type="fixed_small",
        unet_class_labels=[2, 10, 0, 9], sampler_class_labels=[4, 7],
    ),
    dict(
        name="cond_g2_t500",
        summary="3x16x16 class-conditional (5 classes, null=4), groups 2 "
                "(4 and 8 channels/group), 2 and 4 heads of dim 4, flip_sin_to_cos false, "
                "num_train_timesteps 500",
        seed=1004,
        unet=dict(
            sample_size=16, in_channels=3, out_channels=3,
            block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=2, attention_head_dim=4, num_class_embeds=5,
            flip_sin_to_cos=False, freq_shift=0,
        ),
        scheduler=dict(
            num_train_timesteps=500, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
            timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True,
            clip_sample=False, prediction_type="epsilon", thresholding=False,
        ),
        null_class=4, ddpm_steps=10, variance_type="fixed_small",
        unet_class_labels=[0, 4, 2, 3], sampler_class_labels=[1, 3],
    ),
    dict(
        name="uncond_attn_4x12",
        summary="4x12x12 latent-like (12->6->3), unconditional, attention at 12x12 and 3x3 + mid, "
                "layers_per_block 2, attention_head_dim None (1 head), groups 4, flip_sin_to_cos true, freq_shift 1",
        seed=1005,
        unet=dict(
            sample_size=12, in_channels=4, out_channels=4,
            block_out_channels=(8, 8, 16), layers_per_block=2,
            down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=4, attention_head_dim=None,
            flip_sin_to_cos=True, freq_shift=1,
        ),
        scheduler=dict(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False,
            clip_sample=False, prediction_type="epsilon", thresholding=False,
        ),
        null_class=None, ddpm_steps=10, variance_type="fixed_small",
    ),
    dict(
        name="identity_cls_8",
        summary="3x8x8, class_embed_type 'identity' (class_labels ARE embeddings [N, 4*C0] added to the time "
                "embedding), 1 head of dim 8; UNet cases only (no sampler cases: there is no null class)",
        seed=1006,
        unet=dict(
            sample_size=8, in_channels=3, out_channels=3,
            block_out_channels=(8, 8), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4, attention_head_dim=8, class_embed_type="identity",
        ),
        scheduler=dict(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
            timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True,
            clip_sample=False, prediction_type="epsilon", thresholding=False,
        ),
        null_class=None, identity=True, unet_only=True,
    ),
]


# ---------------------------------------------------------------------------------------------
def build_model(spec):
    torch.manual_seed(spec["seed"])
    model = UNet2DModel(**spec["unet"])
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(PERTURB * torch.randn(p.shape, generator=g, dtype=torch.float32))
    model.eval()
    return model


def make_reference(model):
    """A float64 copy. diffusers' Timesteps always returns float32; UNet2DModel casts it for the main
    path but not for class_embed_type='timestep' (whose TimestepEmbedding would then see float32 input
    against float64 weights). Casting the projection's output to the model dtype is value-exact."""
    ref = copy.deepcopy(model).double().eval()
    ref.time_proj.register_forward_hook(lambda mod, inp, out: out.to(torch.float64))
    return ref


def fp64_time_proj_hook(mod, inp, out):
    """Sensitivity probe only: the same sinusoidal projection computed entirely in float64."""
    t = inp[0].to(torch.float64)
    half = mod.num_channels // 2
    exponent = -np.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - mod.downscale_freq_shift)
    emb = t[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if mod.flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


def class_tensor(labels, spec, dtype):
    """Class labels as the model wants them: long for nn.Embedding, float for 'timestep'."""
    if labels is None:
        return None
    if spec["unet"].get("class_embed_type") == "timestep":
        return torch.tensor(labels, dtype=torch.float32)  # goes through time_proj (which uses .float())
    return torch.tensor(labels, dtype=torch.long)


def rel_err(a, b):
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def guided_eps(model, x, t, spec, labels, dtype):
    """One batched forward of 2B (unconditional half first) for class-conditional models."""
    if spec["null_class"] is None:
        return model(x, t).sample
    n = x.shape[0]
    cl = class_tensor([spec["null_class"]] * n + list(labels), spec, dtype)
    out = model(torch.cat([x, x], dim=0), t, cl).sample
    eps_u, eps_c = out[:n], out[n:]
    return eps_u + GUIDANCE * (eps_c - eps_u)


def run_ddim(model, sched, x_T, spec, labels, eta, noise=None, dtype=torch.float64):
    x = x_T.to(dtype)
    traj = []
    for i, t in enumerate(sched.timesteps):
        with torch.no_grad():
            eps = guided_eps(model, x, t, spec, labels, dtype)
        vn = noise[i].to(dtype) if (eta > 0 and noise is not None) else None
        x = sched.step(eps, t, x, eta=eta, variance_noise=vn).prev_sample
        traj.append(x)
    return x, torch.stack(traj)


def run_ddpm(model, sched, x_T, spec, labels, noise, dtype=torch.float64):
    """DDPMScheduler.step draws its noise with randn_tensor (only when t > 0); hand it ours instead."""
    x = x_T.to(dtype)
    traj, used = [], []
    step_index = [0]
    original = ddpm_module.randn_tensor

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        i = step_index[0]
        assert tuple(shape) == tuple(noise[i].shape), (shape, noise[i].shape)
        used.append(i)
        return noise[i].to(dtype)

    ddpm_module.randn_tensor = fake_randn
    try:
        for i, t in enumerate(sched.timesteps):
            step_index[0] = i
            with torch.no_grad():
                eps = guided_eps(model, x, t, spec, labels, dtype)
            x = sched.step(eps, t, x).prev_sample
            traj.append(x)
    finally:
        ddpm_module.randn_tensor = original
    return x, torch.stack(traj), used


def f32(t):
    return t.detach().to(torch.float32).contiguous()


# ---------------------------------------------------------------------------------------------
def generate(spec, checks):
    name = spec["name"]
    mdir = os.path.join(OUT_DIR, name)
    if os.path.isdir(mdir):
        shutil.rmtree(mdir)
    os.makedirs(mdir)

    model = build_model(spec)
    model.save_pretrained(os.path.join(mdir, "unet"), safe_serialization=True)
    DDIMScheduler(**spec["scheduler"]).save_pretrained(os.path.join(mdir, "scheduler"))
    # everything below uses what was written, as a consumer would
    model = UNet2DModel.from_pretrained(os.path.join(mdir, "unet")).eval()
    sched_config = DDIMScheduler.load_config(os.path.join(mdir, "scheduler"))
    ref = make_reference(model)

    cfg = model.config
    T = spec["scheduler"]["num_train_timesteps"]
    C, H = cfg.in_channels, cfg.sample_size
    Cout = cfg.out_channels
    g = torch.Generator().manual_seed(spec["seed"] + 2)
    tensors = {}
    info = dict(model=name, class_conditional=spec["null_class"] is not None or spec.get("identity", False),
                null_class=spec["null_class"], guidance=GUIDANCE if spec["null_class"] is not None else None,
                ddim_steps=None if spec.get("unet_only") else DDIM_STEPS,
                ddpm_steps=None if spec.get("unet_only") else spec["ddpm_steps"],
                eta=[] if spec.get("unet_only") else [0.0, 1.0],
                dtype_of_reference_run="float64", summary=spec["summary"],
                class_embed_type=cfg.class_embed_type, num_class_embeds=cfg.num_class_embeds,
                prediction_type=sched_config["prediction_type"], num_train_timesteps=T)
    checks[name] = {}

    # ---- scheduler tables (float32 exactly as diffusers builds them) ----
    ddim_probe = DDIMScheduler.from_config(sched_config)
    tensors["sched.betas"] = f32(ddim_probe.betas)
    tensors["sched.alphas_cumprod"] = f32(ddim_probe.alphas_cumprod)

    # ---- (a) direct UNet cases ----
    sample = torch.randn((N_UNET, C, H, H), generator=g, dtype=torch.float32)
    ts = [0, 1, T // 2, T - 1]
    timesteps = torch.tensor(ts, dtype=torch.long)
    if spec.get("identity"):
        labels_t = torch.randn((N_UNET, 4 * cfg.block_out_channels[0]), generator=g, dtype=torch.float32)
        cl64, cl32 = labels_t.double(), labels_t
        tensors["unet.class_labels"] = f32(labels_t)
    elif spec["null_class"] is not None:
        cl32 = class_tensor(spec["unet_class_labels"], spec, torch.float32)
        cl64 = cl32
        tensors["unet.class_labels"] = torch.tensor(spec["unet_class_labels"], dtype=torch.float32)
    else:
        cl32 = cl64 = None
    with torch.no_grad():
        out64 = ref(sample.double(), timesteps, cl64).sample
        out32 = model(sample, timesteps, cl32).sample
        t_proj = model.time_proj(timesteps)  # what diffusers feeds the time MLP (float32)
        # the embedding every ResnetBlock2D receives (time MLP + class embedding), float64 run
        emb = ref.time_embedding(t_proj.double())
        if ref.class_embedding is not None:
            cl_in = ref.time_proj(cl64) if cfg.class_embed_type == "timestep" else cl64
            emb = emb + ref.class_embedding(cl_in)
        # sensitivity probe: timestep projection in float64 instead of diffusers' float32
        probe = copy.deepcopy(model).double().eval()
        probe.time_proj.register_forward_hook(fp64_time_proj_hook)
        out64_fullfp64 = probe(sample.double(), timesteps, cl64).sample
        # the cases must exercise the embedding path: outputs have to move with t and with the class
        out_t = ref(sample.double(), timesteps.flip(0), cl64).sample
        checks[name]["unet_sensitivity_timestep"] = rel_err(out_t, out64)
        if cl64 is not None:
            out_c = ref(sample.double(), timesteps, cl64.roll(1, 0)).sample
            checks[name]["unet_sensitivity_class"] = rel_err(out_c, out64)
    assert out64.shape == (N_UNET, Cout, H, H)
    tensors["unet.sample"] = f32(sample)
    tensors["unet.timesteps"] = timesteps.to(torch.float32)
    tensors["unet.time_proj"] = f32(t_proj)
    tensors["unet.emb"] = f32(emb)
    tensors["unet.out"] = f32(out64)
    checks[name]["unet_fp32_vs_fp64"] = rel_err(out32, out64)
    checks[name]["unet_fp64_timeproj_vs_diffusers"] = rel_err(out64_fullfp64, out64)
    checks[name]["unet_fp32_storage_roundtrip"] = rel_err(f32(out64), out64)
    info["unet_timesteps"] = ts

    cases = ["unet"]
    if not spec.get("unet_only"):
        labels = spec.get("sampler_class_labels")
        shape = (B, C, H, H)

        # ---- (b) DDIM eta 0 ----
        x_T = torch.randn(shape, generator=g, dtype=torch.float32)
        sched = DDIMScheduler.from_config(sched_config)
        sched.set_timesteps(DDIM_STEPS)
        x64, traj = run_ddim(ref, sched, x_T, spec, labels, eta=0.0)
        tensors["ddim.noise"] = f32(x_T)
        tensors["ddim.timesteps"] = sched.timesteps.to(torch.float32)
        tensors["ddim.samples"] = f32(x64)
        tensors["ddim.trajectory"] = f32(traj)
        info["ddim_timesteps"] = [int(t) for t in sched.timesteps]
        info["ddim_prev_timesteps"] = [int(t) - T // DDIM_STEPS for t in sched.timesteps]
        # determinism: the same loop again, fresh scheduler
        sched2 = DDIMScheduler.from_config(sched_config)
        sched2.set_timesteps(DDIM_STEPS)
        x64b, _ = run_ddim(ref, sched2, x_T, spec, labels, eta=0.0)
        checks[name]["ddim_eta0_rerun_max_abs_diff"] = float((x64b - x64).abs().max())
        sched3 = DDIMScheduler.from_config(sched_config)
        sched3.set_timesteps(DDIM_STEPS)
        x32, _ = run_ddim(model, sched3, x_T, spec, labels, eta=0.0, dtype=torch.float32)
        checks[name]["ddim_eta0_fp32_vs_fp64"] = rel_err(x32, x64)

        # ---- (c) DDIM eta 1 with supplied variance noise ----
        x_T1 = torch.randn(shape, generator=g, dtype=torch.float32)
        vnoise = torch.randn((DDIM_STEPS,) + shape, generator=g, dtype=torch.float32)
        sched = DDIMScheduler.from_config(sched_config)
        sched.set_timesteps(DDIM_STEPS)
        x64, traj = run_ddim(ref, sched, x_T1, spec, labels, eta=1.0, noise=vnoise)
        tensors["ddim_eta1.step0"] = f32(traj[0])
        tensors["ddim_eta1.noise"] = f32(x_T1)
        tensors["ddim_eta1.variance_noise"] = f32(vnoise)
        tensors["ddim_eta1.timesteps"] = sched.timesteps.to(torch.float32)
        tensors["ddim_eta1.samples"] = f32(x64)
        sched3 = DDIMScheduler.from_config(sched_config)
        sched3.set_timesteps(DDIM_STEPS)
        x32, _ = run_ddim(model, sched3, x_T1, spec, labels, eta=1.0, noise=vnoise, dtype=torch.float32)
        checks[name]["ddim_eta1_fp32_vs_fp64"] = rel_err(x32, x64)

        # ---- (d) DDPM with pre-drawn per-step noise ----
        steps = spec["ddpm_steps"]
        x_Td = torch.randn(shape, generator=g, dtype=torch.float32)
        dnoise = torch.randn((steps,) + shape, generator=g, dtype=torch.float32)
        dsched = DDPMScheduler.from_config(sched_config, variance_type=spec["variance_type"])
        dsched.set_timesteps(steps)
        x64, traj, used = run_ddpm(ref, dsched, x_Td, spec, labels, dnoise)
        tensors["ddpm.step0"] = f32(traj[0])
        for i in range(steps):
            if i not in used:
                dnoise[i].zero_()  # this step drew no noise
        tensors["ddpm.noise"] = f32(x_Td)
        tensors["ddpm.variance_noise"] = f32(dnoise)
        tensors["ddpm.timesteps"] = dsched.timesteps.to(torch.float32)
        tensors["ddpm.samples"] = f32(x64)
        dsched3 = DDPMScheduler.from_config(sched_config, variance_type=spec["variance_type"])
        dsched3.set_timesteps(steps)
        x32, _, _ = run_ddpm(model, dsched3, x_Td, spec, labels, dnoise, dtype=torch.float32)
        checks[name]["ddpm_fp32_vs_fp64"] = rel_err(x32, x64)
        info["ddpm_timesteps"] = [int(t) for t in dsched.timesteps]
        info["ddpm_prev_timesteps"] = [int(t) - T // steps for t in dsched.timesteps]
        info["ddpm_noise_used"] = [i in used for i in range(steps)]
        info["variance_type"] = spec["variance_type"]
        if labels is not None:
            for k in ("ddim", "ddim_eta1", "ddpm"):
                tensors[f"{k}.class_labels"] = torch.tensor(labels, dtype=torch.float32)
        info["sampler_class_labels"] = labels
        cases += ["ddim", "ddim_eta1", "ddpm"]

    info["cases"] = cases
    info["tensors"] = {k: list(v.shape) for k, v in sorted(tensors.items())}
    info["checks"] = checks[name]
    info["notes"] = notes_for(spec, info)
    for k, v in tensors.items():
        assert v.dtype == torch.float32 and v.is_contiguous(), k
    save_file(tensors, os.path.join(mdir, "cases.safetensors"), metadata={"generator": "tools/make_fixtures.py"})
    with open(os.path.join(mdir, "cases.json"), "w") as f:
        f.write(compact_json(info) + "\n")
    nparams = sum(p.numel() for p in model.parameters())
    return nparams


def compact_json(obj):
    """indent=2, but lists of scalars on one line."""
    import re
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]" if m.group(1) else "[]",
                  text)


def load_cases(spec):
    from safetensors.torch import load_file
    mdir = os.path.join(OUT_DIR, spec["name"])
    with open(os.path.join(mdir, "cases.json")) as f:
        info = json.load(f)
    return mdir, info, load_file(os.path.join(mdir, "cases.safetensors"))


def verify(spec):
    """Re-derive every case from the files on disk alone (as a consumer would) and compare."""
    mdir, info, c = load_cases(spec)
    model = UNet2DModel.from_pretrained(os.path.join(mdir, "unet")).eval()
    ref = make_reference(model)
    config = DDIMScheduler.load_config(os.path.join(mdir, "scheduler"))
    errs = {}

    def labels_of(key):
        if key not in c:
            return None
        v = c[key]
        if spec.get("identity"):
            return v.double()
        if spec["unet"].get("class_embed_type") == "timestep":
            return v
        return v.long()

    with torch.no_grad():
        out = ref(c["unet.sample"].double(), c["unet.timesteps"].long(), labels_of("unet.class_labels")).sample
    errs["unet"] = rel_err(out, c["unet.out"])
    if "ddim" in info["cases"]:
        labels = c["ddim.class_labels"].long().tolist() if "ddim.class_labels" in c else None
        for key, eta in (("ddim", 0.0), ("ddim_eta1", 1.0)):
            sched = DDIMScheduler.from_config(config)
            sched.set_timesteps(info["ddim_steps"])
            assert torch.equal(sched.timesteps.float(), c[f"{key}.timesteps"]), key
            noise = c.get(f"{key}.variance_noise")
            x, _ = run_ddim(ref, sched, c[f"{key}.noise"], spec, labels, eta, noise=noise)
            errs[key] = rel_err(x, c[f"{key}.samples"])
        dsched = DDPMScheduler.from_config(config, variance_type=info["variance_type"])
        dsched.set_timesteps(info["ddpm_steps"])
        assert torch.equal(dsched.timesteps.float(), c["ddpm.timesteps"])
        x, traj, used = run_ddpm(ref, dsched, c["ddpm.noise"], spec, labels, c["ddpm.variance_noise"])
        assert [i in used for i in range(info["ddpm_steps"])] == info["ddpm_noise_used"]
        errs["ddpm"] = rel_err(x, c["ddpm.samples"])
        errs["ddpm.step0"] = rel_err(traj[0], c["ddpm.step0"])
    return errs


def notes_for(spec, info):
    n = [
        "All tensors float32 NCHW. Reference outputs: float64 copy of the float32 weights (model.double()); "
        "diffusers still computes the sinusoidal timestep projection (unet.time_proj) and the attention softmax "
        "(upcast_softmax) in float32, and the scheduler tables (sched.alphas_cumprod) are float32.",
        "unet.out = model(unet.sample, unet.timesteps (int64), unet.class_labels).sample. unet.emb is the "
        "embedding fed to every ResnetBlock2D (time MLP + class embedding), a debugging aid.",
    ]
    if info["class_conditional"] and spec["null_class"] is not None:
        n.append(f"Sampler guidance: one batched forward of 2B rows, unconditional half first (class {spec['null_class']}), "
                 f"eps = eps_u + {GUIDANCE} * (eps_c - eps_u); with v_prediction the same combination is applied to v.")
    if not spec.get("unet_only"):
        n.append("ddim/ddim_eta1: DDIMScheduler.from_config(scheduler/scheduler_config.json), set_timesteps(10); "
                 "loop `for t in timesteps: x = step(eps, t, x, eta, variance_noise=variance_noise[i]).prev_sample`; "
                 "ddim.trajectory[i] = x after step i; samples = x after the last step (no clamping); ddim_eta1.step0 / ddpm.step0 = x after "
                 "the first step (the only trajectory entry kept for them, to keep the fixtures small).")
        n.append("ddpm: DDPMScheduler.from_config(same json, variance_type=<variance_type>), set_timesteps(ddpm_steps); "
                 "diffusers' randn_tensor was replaced by ddpm.variance_noise[i] at loop step i. DDPM draws noise only when "
                 "t > 0; rows of steps that drew none (ddpm_noise_used false) are stored as zeros.")
        if info.get("ddpm_noise_used") and info["ddpm_noise_used"][-1]:
            n.append("The last DDPM timestep is > 0 here, so noise IS added at the last step (its prev_t < 0 uses "
                     "alpha_prod_prev = 1).")
    return " ".join(n)


def write_readme(rows, checks, sizes):
    L = []
    L.append("# Diffusion reference fixtures (PyTorch / diffusers 0.27.2)\n")
    L.append("Generated by `tools/make_fixtures.py` from small random `UNet2DModel`s (random init, then every "
             f"parameter `p += {PERTURB}*randn`, seeded). Regenerate (overwrites every model folder listed below):\n")
    L.append("```\n/opt/ptqd-venv/bin/python tools/make_fixtures.py\n```\n")
    L.append("Needs Debian's python3-torch (1.13) and `diffusers==0.27.2`, `safetensors`, `numpy` (the venv "
             "`/opt/ptqd-venv`). Deterministic: same seeds, same files (float64 reductions may differ in the last bits "
             "with a different thread count/BLAS; it runs single-threaded by default).\n")
    L.append("## Models\n")
    L.append("| folder | in×H×W | blocks (down / up) | channels, lpb, groups, heads | embedding | scheduler (DDIM json) | DDPM |")
    L.append("|---|---|---|---|---|---|---|")
    for spec in MODELS:
        u, s = spec["unet"], spec["scheduler"]
        chans = "(" + ",".join(str(c) for c in u["block_out_channels"]) + ")"
        ahd = u.get("attention_head_dim", 8)
        heads = "head_dim None (1 head)" if ahd is None else f"head_dim {ahd}"
        if not u.get("add_attention", True) and not any("Attn" in b for b in u["down_block_types"] + u["up_block_types"]):
            heads = "no attention"
        extras = []
        for k, dflt in (("norm_eps", 1e-5), ("downsample_padding", 1), ("center_input_sample", False),
                        ("mid_block_scale_factor", 1), ("downsample_type", "conv"), ("upsample_type", "conv"),
                        ("add_attention", True)):
            if u.get(k, dflt) != dflt:
                extras.append(f"{k}={u[k]}")
        emb = f"flip={u.get('flip_sin_to_cos', True)}, shift={u.get('freq_shift', 0)}; "
        if u.get("class_embed_type"):
            emb += f"class_embed_type={u['class_embed_type']}"
        elif u.get("num_class_embeds"):
            emb += f"num_class_embeds={u['num_class_embeds']}"
        else:
            emb += "unconditional"
        if spec["null_class"] is not None:
            emb += f", null={spec['null_class']}"
        sch = (f"{s['beta_schedule']}, T={s['num_train_timesteps']}, {s['timestep_spacing']}, offset={s['steps_offset']}, "
               f"alpha_one={s['set_alpha_to_one']}, clip={s['clip_sample']}"
               + (f" (range {s['clip_sample_range']})" if s["clip_sample"] else "") + f", {s['prediction_type']}")
        ddpm = "—" if spec.get("unet_only") else f"{spec['ddpm_steps']} steps, {spec['variance_type']}"
        blocks = "/".join(b.replace("Block2D", "") for b in u["down_block_types"]) + " ; " + \
                 "/".join(b.replace("Block2D", "") for b in u["up_block_types"])
        L.append(f"| `{spec['name']}` | {u['in_channels']}×{u['sample_size']}×{u['sample_size']} | {blocks} | "
                 f"{chans}, lpb {u['layers_per_block']}, g {u['norm_num_groups']}, {heads}"
                 + (", " + ", ".join(extras) if extras else "") + f" | {emb} | {sch} | {ddpm} |")
    L.append("")
    L.append("Each folder: `unet/` (config.json + diffusion_pytorch_model.safetensors, float32), "
             "`scheduler/scheduler_config.json` (a `DDIMScheduler` config), `cases.safetensors`, `cases.json`.\n")
    L.append("## Tensors in `cases.safetensors` (all float32, contiguous, NCHW like diffusers)\n")
    L.append("N = 4 (direct UNet cases), B = 2 (sampler cases), S = sampler steps (10 for DDIM; `ddpm_steps` for DDPM).\n")
    L.append("| name | shape | meaning |")
    L.append("|---|---|---|")
    for k, shp, m in [
        ("sched.betas, sched.alphas_cumprod", "[T]", "diffusers' float32 tables (torch.linspace / betas_for_alpha_bar, cumprod in float32)"),
        ("unet.sample", "[N,C,H,W]", "randn input"),
        ("unet.timesteps", "[N]", "integer timesteps 0, 1, T/2, T−1 (as float32; pass them as integers)"),
        ("unet.class_labels", "[N] or [N,4·C0]", "class ids as float32 (null class included); for `identity` the embeddings themselves"),
        ("unet.time_proj", "[N,C0]", "the sinusoidal projection diffusers computes (float32 math)"),
        ("unet.emb", "[N,4·C0]", "time MLP output + class embedding (what every ResnetBlock2D receives, before its SiLU)"),
        ("unet.out", "[N,Cout,H,W]", "`model(sample, timesteps, class_labels).sample`, float64 run"),
        ("ddim.noise", "[B,C,H,W]", "x_T"),
        ("ddim.class_labels", "[B]", "conditional labels (class-conditional models only)"),
        ("ddim.timesteps", "[10]", "`scheduler.timesteps` after set_timesteps(10)"),
        ("ddim.trajectory", "[10,B,C,H,W]", "x after each step"),
        ("ddim.samples", "[B,C,H,W]", "x after the last step, eta 0"),
        ("ddim_eta1.{noise,class_labels,timesteps,samples}", "as ddim", "eta 1"),
        ("ddim_eta1.step0, ddpm.step0", "[B,C,H,W]", "x after the first step (full trajectory only for eta-0 DDIM)"),
        ("ddim_eta1.variance_noise", "[10,B,C,H,W]", "the `variance_noise` passed to step i"),
        ("ddpm.{noise,class_labels,timesteps,samples}", "as ddim, S = ddpm_steps", "DDPMScheduler"),
        ("ddpm.variance_noise", "[S,B,C,H,W]", "noise used at loop step i (zeros where the step drew none, see `ddpm_noise_used`)"),
    ]:
        L.append(f"| `{k}` | {shp} | {m} |")
    L.append("")
    L.append("`cases.json` holds: model, class_conditional, null_class, guidance, ddim_steps, ddpm_steps, eta, "
             "dtype_of_reference_run, the timestep lists (and the `prev` timestep each step uses), "
             "`ddpm_noise_used`, `variance_type`, the tensor shapes, the self-checks below and notes.\n")
    L.append("Guidance (class-conditional models): one batched forward of 2B rows, unconditional half first "
             "(class = null class), `eps = eps_u + 3.0*(eps_c - eps_u)` (applied to the model output, also for v-prediction). "
             "Unconditional models: plain model output.\n")
    L.append("## Tolerances the Swift tests use\n")
    L.append("- UNet outputs: `max|ours − ref| / max|ref| ≤ 1e-4`.")
    L.append("- Final sampler outputs (`*.samples`): `max|ours − ref| / max|ref| ≤ 1e-3`.")
    L.append("- Scheduler tables/timesteps (suggested): timesteps exact; `alphas_cumprod` ≤ 2e-6 relative (diffusers' "
             "float32 cumprod differs from a float64 cumprod by up to 9.4e-7 relative on these schedules).\n")
    L.append("## Self-checks measured at generation (relative max error, as above)\n")
    L.append("`fp32` = the same diffusers code in float32 vs the float64 reference; `timeproj64` = the reference with "
             "the timestep projection computed in float64 instead of diffusers' float32 (how much that choice matters); "
             "`rerun` = max abs difference between two float64 DDIM eta-0 runs (determinism).\n")
    L.append("| model | unet fp32 | unet timeproj64 | ddim η0 fp32 | ddim η1 fp32 | ddpm fp32 | ddim η0 rerun | params | folder size |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for spec in MODELS:
        c = checks[spec["name"]]
        def fmt(k):
            return f"{c[k]:.1e}" if k in c else "—"
        L.append(f"| `{spec['name']}` | {fmt('unet_fp32_vs_fp64')} | {fmt('unet_fp64_timeproj_vs_diffusers')} | "
                 f"{fmt('ddim_eta0_fp32_vs_fp64')} | {fmt('ddim_eta1_fp32_vs_fp64')} | {fmt('ddpm_fp32_vs_fp64')} | "
                 f"{fmt('ddim_eta0_rerun_max_abs_diff')} | {rows[spec['name']]} | {sizes[spec['name']] // 1024} KB |")
    L.append("")
    L.append("## diffusers 0.27.2 semantics worth knowing (read from the installed source)\n")
    L.extend(SEMANTICS)
    with open(os.path.join(OUT_DIR, "README.md"), "w") as f:
        f.write("\n".join(L) + "\n")


SEMANTICS = [
    "- **Timestep projection** (`get_timestep_embedding`): `half = C0/2`; `exponent = -ln(10000) * arange(half) / (half - freq_shift)` "
    "(float32); `emb = t.float()[:,None] * exp(exponent)`; `[sin, cos]`, swapped to `[cos, sin]` when `flip_sin_to_cos`. "
    "Always float32, even for a float64 model. The time MLP is `linear_1 → SiLU → linear_2`; every ResnetBlock2D applies "
    "SiLU to `emb` before its own `time_emb_proj`.",
    "- **class_embed_type**: `None` + `num_class_embeds` → `nn.Embedding` (long labels); `'timestep'` → labels go through the "
    "SAME `time_proj` (same flip/shift) then a separate `TimestepEmbedding`; `'identity'` → labels are added as-is. "
    "`emb = time_mlp(t) + class_emb`.",
    "- **center_input_sample**: `sample = 2*sample - 1` before conv_in.",
    "- **Downsample2D** (conv, stride 2, k3): `padding=1` normally; with `downsample_padding=0` the input is first padded "
    "(0,1,0,1) = one zero column on the RIGHT and one zero row at the BOTTOM, then conv with padding 0.",
    "- **downsample_type/upsample_type 'resnet'** only affect Attn blocks (`AttnDownBlock2D`/`AttnUpBlock2D`); plain "
    "`DownBlock2D`/`UpBlock2D` always use the conv Downsample2D/Upsample2D. The resnet sampler is a ResnetBlock2D(C→C) "
    "that after `norm1 → SiLU` resamples both the hidden path and the (un-normalised) shortcut input: avg-pool 2×2 "
    "stride 2 (down) or nearest ×2 (up), then conv1 … as usual; it receives `temb`.",
    "- **Upsample2D**: nearest ×2 (`F.interpolate(scale_factor=2)`), then conv 3×3 pad 1. UNet2DModel never passes an "
    "output size, so odd sizes only work while every downsampled size doubles back exactly (28→14→7 fine; 7 must not be "
    "downsampled again).",
    "- **ResnetBlock2D**: `h = conv1(SiLU(norm1(x))) + time_emb_proj(SiLU(emb))[:,:,None,None]; h = conv2(SiLU(norm2(h)))`; "
    "`out = (shortcut(x) + h) / output_scale_factor` (1×1 conv shortcut only when in ≠ out channels). Only the MID block "
    "gets `output_scale_factor = mid_block_scale_factor`, and its Attention divides by the same factor "
    "(`rescale_output_factor`).",
    "- **Attention** (`_from_deprecated_attn_block`): GroupNorm(groups = norm_num_groups, eps = norm_eps) over [B,C,H,W], tokens = H·W "
    "in row-major order, q/k/v Linear with bias, heads = C / attention_head_dim (attention_head_dim None → one head of "
    "dim C), scale = head_dim^-0.5, softmax in float32 (upcast), `to_out[0]` Linear with bias, `+ residual`, "
    "`/ rescale_output_factor`. Mid-block attention exists unless `add_attention=false`.",
    "- **Up path skips**: each up block has layers_per_block+1 resnets and pops the skip stack from the end; the stack is "
    "[conv_in out, each down resnet/attn out, each downsampler out].",
    "- **Scheduler tables** are float32: `linear` = `torch.linspace(beta_start, beta_end, T)`; `scaled_linear` = "
    "`linspace(sqrt(beta_start), sqrt(beta_end), T)**2`; `squaredcos_cap_v2` = `min(1 - ab((i+1)/T)/ab(i/T), 0.999)` with "
    "`ab(t) = cos((t+0.008)/1.008 * pi/2)**2` computed in Python doubles then cast to float32 (beta_start/end ignored). "
    "`alphas_cumprod = cumprod(1 - betas)` in float32. The step math then uses these float32 scalars.",
    "- **set_timesteps(n)**: `leading`: `arange(n) * (T // n)` reversed, `+ steps_offset`; `trailing`: "
    "`round(arange(T, 0, -T/n)) - 1` (steps_offset ignored); `linspace`: `round(linspace(0, T-1, n))` reversed "
    "(steps_offset ignored). Same code in DDIM and DDPM.",
    "- **prev timestep** (DDIM and DDPM without custom timesteps): ALWAYS `prev_t = t - T // n`, whatever the spacing. "
    "With `linspace`/`trailing` this is not the next entry of `timesteps` (e.g. linspace 10: 888 → prev 788, next is 777). "
    "`prev_t < 0` → DDIM uses `final_alpha_cumprod` (= 1 if set_alpha_to_one else alphas_cumprod[0]); DDPM uses 1 "
    "(DDPM has no set_alpha_to_one).",
    "- **DDIM step**: x0 = (x − √(1−ā_t)·ε)/√ā_t (epsilon) or x0 = √ā_t·x − √(1−ā_t)·v, ε = √ā_t·v + √(1−ā_t)·x "
    "(v_prediction); clip_sample clamps x0 to ±clip_sample_range but ε is NOT recomputed from the clipped x0; "
    "σ = η·√((1−ā_prev)/(1−ā_t)·(1−ā_t/ā_prev)); x_prev = √ā_prev·x0 + √(1−ā_prev−σ²)·ε + σ·z (z only when η > 0).",
    "- **DDPM step**: ā_prev as above; α = ā_t/ā_prev, β = 1 − α; x0 from the model output as in DDIM, clipped if "
    "clip_sample; mean = (√ā_prev·β/(1−ā_t))·x0 + (√α·(1−ā_prev)/(1−ā_t))·x_t; noise only when t > 0: "
    "fixed_small σ² = max((1−ā_prev)/(1−ā_t)·β, 1e-20), fixed_large σ² = β (NOT the one-step beta_t: with "
    "n < T steps it is the effective β of the jump t → prev_t).",
    "- **DDPM last step**: noise is skipped only when the timestep is exactly 0. With `trailing` (last t = T/n − 1) or "
    "`leading` + steps_offset (last t = offset) the last step still adds σ·z: tiny for fixed_small (σ² = 1e-20 floor, "
    "since ā_prev = 1), but σ² = 1 − ā_t for fixed_large (see `uncond_plain_16`, whose final DDPM step adds real noise).",
    "- **Timestep dtype**: the UNet receives integer (int64) timesteps; `t * ones(N, dtype=int64)` broadcasts a scalar "
    "to the batch. Class labels for `nn.Embedding` must be integer; for `'timestep'` they only go through `.float()`.",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible, gentle)")
    ap.add_argument("--no-verify", action="store_true", help="skip re-deriving every case from the written files")
    ap.add_argument("--verify-only", action="store_true", help="only re-derive the cases from the files on disk")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    dlogging.set_verbosity_error()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {args.threads}", file=sys.stderr)
    if args.verify_only:
        return run_verify()
    os.makedirs(OUT_DIR, exist_ok=True)
    rows, checks, sizes = {}, {}, {}
    for spec in MODELS:
        rows[spec["name"]] = generate(spec, checks)
        mdir = os.path.join(OUT_DIR, spec["name"])
        sizes[spec["name"]] = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(mdir) for f in fs)
        c = checks[spec["name"]]
        print(f"{spec['name']:>18}: {rows[spec['name']]:>6} params, {sizes[spec['name']] / 1024:7.1f} KB; "
              + ", ".join(f"{k}={v:.2e}" for k, v in c.items()), file=sys.stderr)
    write_readme(rows, checks, sizes)
    total = sum(sizes.values())
    print(f"total fixture size {total / 1024:.1f} KB in {OUT_DIR}", file=sys.stderr)
    bad = [(n, k, v) for n, c in checks.items() for k, v in c.items()
           if (k.startswith("unet_fp32") and v > 1e-5) or (k.endswith("fp32_vs_fp64") and not k.startswith("unet") and v > 1e-4)
           or (k.endswith("rerun_max_abs_diff") and v != 0.0) or (k.startswith("unet_sensitivity") and v < 1e-2)]
    if bad:
        print(f"SELF-CHECK FAILED: {bad}", file=sys.stderr)
        sys.exit(1)
    if not args.no_verify:
        run_verify()


def run_verify():
    worst = 0.0
    for spec in MODELS:
        errs = verify(spec)
        worst = max([worst] + list(errs.values()))
        print(f"verify {spec['name']:>18}: " + ", ".join(f"{k}={v:.1e}" for k, v in errs.items()), file=sys.stderr)
    # only float32 storage rounding of inputs/outputs may differ
    if worst > 1e-6:
        print(f"VERIFY FAILED: worst relative error {worst:.2e}", file=sys.stderr)
        sys.exit(1)
    print(f"verify OK (worst relative error {worst:.1e})", file=sys.stderr)


if __name__ == "__main__":
    main()
