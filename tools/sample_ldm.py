#!/usr/bin/env python3
"""Sample the exported class-conditional latent-diffusion folder (models/fmnist-ldm) the diffusers way.

The first stage is the folder's vae/ (AutoencoderKL, KL-f4) or vqvae/ (VQModel, VQ-f4), whichever model_index.json
names (else whichever exists).

Reference tool (conformance fixtures for the Swift implementation): plain diffusers modules, no training-time
shortcuts. One exception: every Attention gets tools/torch_attention.py's BmmAttnProcessor, which is
diffusers' AttnProcessor math with bmm(q, k^T) * scale in place of baddbmm(torch.empty(..), q, k^T, beta=0):
Debian's CPU torch 1.13 lets NaNs from that uninitialized buffer through for some shapes (the 1-token class
context among them), so the default processor gives sporadic NaN samples. Outputs equal the default
processor's where it is finite (checked: max difference 0.0).

  noise x_T [n, C, h, w]  (from --noise FILE's tensor `noise`, else torch.randn with --seed)
  context  = class_embedder(cat([null, labels]))            [2n, 1, D]   (null class = config null_class)
  for t in DDIMScheduler(steps).timesteps:
      eps_u, eps_c = unet(cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
      x = scheduler.step(eps_u + s * (eps_c - eps_u), t, x, eta, variance_noise=step_noise[i]).prev_sample
  latents = x;  samples = first_stage.decode(latents / scaling_factor).sample
                (AutoencoderKL: the plain decoder; VQModel: decode looks up the nearest code first)

Writes --out FILE.safetensors with `labels` (int64 [n]), `noise`, `timesteps` (int64), `latents` [n, C, h, w],
`samples` [n, 1, 32, 32] (in [-1, 1] up to the decoder's range: before clamping) and, for eta > 0, `step_noise`
[steps, n, C, h, w] (read from --noise FILE's `step_noise` if present, else drawn with torch.randn after x_T
from the same generator); --png writes a grid (one row per class with --per-class).

Usage:
  tools/sample_ldm.py --model models/fmnist-ldm --per-class 8 --png out/ldm-grid.png
  tools/sample_ldm.py --labels 0,3,7 --steps 20 --eta 0 --guidance 3 --seed 1 --out fixture.safetensors
  tools/sample_ldm.py --noise in.safetensors --labels 1,2 --eta 0.5 --out fixture.safetensors
"""
import argparse, json, os, sys

import safetensors.torch  # noqa: F401  (diffusers 0.27 uses it without importing it)
from safetensors.torch import load_file, save_file

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, VQModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_attention import install_bmm_attention  # noqa: E402


class ClassEmbedder(torch.nn.Module):
    """LDM's ClassEmbedder: nn.Embedding(num_classes, embed_dim) -> one-token context [N, 1, embed_dim]."""

    def __init__(self, num_classes, embed_dim):
        super().__init__()
        self.embedding = torch.nn.Embedding(num_classes, embed_dim)

    def forward(self, labels):
        return self.embedding(labels)[:, None, :]


FIRST_STAGES = {"vae": AutoencoderKL, "vqvae": VQModel}


def first_stage_folder(model):
    """-> (subfolder name, diffusers class) of the pipeline folder's first stage: vae/ (KL) or vqvae/ (VQ)."""
    index = os.path.join(model, "model_index.json")
    names = [k for k in FIRST_STAGES if os.path.isdir(os.path.join(model, k))]
    if os.path.exists(index):
        with open(index) as f:
            entries = json.load(f)
        listed = [k for k in FIRST_STAGES if k in entries]
        names = [k for k in listed if k in names] or names
    if len(names) != 1:
        sys.exit(f"{model}: expected exactly one first stage (vae/ or vqvae/), found {names}")
    return names[0], FIRST_STAGES[names[0]]


def load_pipeline(model):
    """-> (unet, class_embedder, first stage (AutoencoderKL or VQModel), class_embedder config), all in eval mode."""
    unet = install_bmm_attention(UNet2DConditionModel.from_pretrained(os.path.join(model, "unet")).eval())
    sub, cls = first_stage_folder(model)
    first_stage = install_bmm_attention(cls.from_pretrained(os.path.join(model, sub)).eval())
    with open(os.path.join(model, "class_embedder", "config.json")) as f:
        cfg = json.load(f)
    emb = ClassEmbedder(cfg["num_classes"], cfg["embed_dim"]).eval()
    emb.load_state_dict(load_file(os.path.join(model, "class_embedder", "model.safetensors")))
    emb.null_class = cfg["null_class"]
    return unet, emb, first_stage, cfg


@torch.no_grad()
def sample(unet, emb, first_stage, scheduler, labels, noise, guidance, eta=0.0, step_noise=None):
    """-> (latents, samples). step_noise [steps, n, C, h, w] is required when eta > 0."""
    x = noise * scheduler.init_noise_sigma
    ctx = emb(torch.cat([torch.full_like(labels, emb.null_class), labels]))
    for i, t in enumerate(scheduler.timesteps):
        inp = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps_u, eps_c = unet(inp, t, encoder_hidden_states=ctx).sample.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        vn = step_noise[i] if eta > 0 else None
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=vn).prev_sample
    # AutoencoderKL: plain decoder; VQModel: force_not_quantize=False, i.e. codebook lookup first
    samples = first_stage.decode(x / first_stage.config.scaling_factor).sample
    return x, samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/fmnist-ldm")
    ap.add_argument("--labels", help="comma-separated class labels (0-9; 10 = unconditional)")
    ap.add_argument("--per-class", type=int, default=8, help="without --labels: this many per class, class-major")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", help="safetensors file with `noise` [n,C,h,w] (and optionally `step_noise`)")
    ap.add_argument("--batch", type=int, default=500, help="images per forward batch (results do not depend on it "
                                                           "beyond float rounding)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write labels/noise/timesteps/latents/samples here (safetensors)")
    ap.add_argument("--png", help="write a grid of the (clamped) samples here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    unet, emb, first_stage, _ = load_pipeline(args.model)
    scheduler = DDIMScheduler.from_pretrained(os.path.join(args.model, "scheduler"))
    scheduler.set_timesteps(args.steps)
    if args.labels:
        labels = torch.tensor([int(v) for v in args.labels.split(",")], dtype=torch.int64)
    else:
        labels = torch.arange(10).repeat_interleave(args.per_class)
    n = len(labels)
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    given = load_file(args.noise) if args.noise else {}
    g = torch.Generator().manual_seed(args.seed)
    noise = given["noise"].float() if "noise" in given else torch.randn(shape, generator=g)
    if tuple(noise.shape) != shape:
        sys.exit(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    step_noise = None
    if args.eta > 0:
        step_noise = given["step_noise"].float() if "step_noise" in given else \
            torch.randn((args.steps,) + shape, generator=g)
        if tuple(step_noise.shape) != (args.steps,) + shape:
            sys.exit(f"step_noise has shape {tuple(step_noise.shape)}, expected {(args.steps,) + shape}")

    lat, smp = [], []
    for i in range(0, n, args.batch):
        sn = step_noise[:, i:i + args.batch] if step_noise is not None else None
        a, b = sample(unet, emb, first_stage, scheduler, labels[i:i + args.batch], noise[i:i + args.batch],
                      args.guidance, args.eta, sn)
        lat.append(a)
        smp.append(b)
    latents, samples = torch.cat(lat), torch.cat(smp)
    if args.out:
        tensors = dict(labels=labels, noise=noise.contiguous(), timesteps=scheduler.timesteps.to(torch.int64),
                       latents=latents.contiguous(), samples=samples.contiguous())
        if step_noise is not None:
            tensors["step_noise"] = step_noise.contiguous()
        meta = dict(model=os.path.abspath(args.model), steps=str(args.steps), eta=str(args.eta),
                    guidance=str(args.guidance), seed=str(args.seed), script="tools/sample_ldm.py")
        save_file(tensors, args.out, metadata=meta)
    if args.png:
        from train_ddpm import save_grid
        nrow = 10 if not args.labels and n % 10 == 0 else max(1, round(n ** 0.5))
        save_grid(samples, args.png, nrow=nrow)
    print(f"sampled {n} images ({args.steps} DDIM steps, eta {args.eta}, guidance {args.guidance}): "
          f"latents std {latents.std():.3f}, samples in [{samples.min():.3f}, {samples.max():.3f}]", file=sys.stderr)


if __name__ == "__main__":
    main()
