#!/usr/bin/env python3
"""Train the bundled miniature latent-diffusion model (LDM-4 ImageNet in miniature) on Fashion-MNIST.

Reference tool only: never needed at run time. Uses Debian's python3-torch and diffusers==0.27.2
(`make venv`). Data: Debian's dataset-fashion-mnist, 28x28 padded to 32x32 with -1, values in [-1, 1]
(exactly as tools/train_ddpm.py).

Two stages, as CompVis latent-diffusion does it. The first stage is either autoencoder (both 1x32x32 <-> 3x8x8,
block_out_channels (32, 64, 128), layers_per_block 1, norm_num_groups 16, one shared training loop):

1a. `kl` (the one in use): a diffusers `AutoencoderKL` KL-f4. Loss = LDM's LPIPSWithDiscriminator without the
   LPIPS term (no perceptual network at all: models/fmnist-features is the FID feature space and must not be
   trained against): mean L1 + mean L2 of decode(posterior.sample()) + --kl-weight (1e-6, LDM's) x the per-image
   KL sum / 1024 pixels (LDM sums over pixels; this is its loss divided by the pixel count); from --disc-start on,
   plus VQGAN's hinge patch-GAN term x --gan-weight x the adaptive weight. Warm start (--init-from-vq, default
   models/fmnist-ldm/vqvae): every encoder/decoder tensor and post_quant_conv copied from the VQModel, conv_out /
   quant_conv widened to 2x3 channels so the posterior mean is exactly the VQ's pre-quantization h and
   logvar = --logvar-init; checked numerically at step 0 (mean-decode == VQ decode(force_not_quantize=True)).
   `kl-finalize` centers the posterior means per channel exactly (quant_conv's mean bias; post_quant_conv absorbs
   it; decode checked unchanged to 1e-5), measures scaling_factor = 1 / std of posterior samples of 20,000
   training images (LDM's scale_by_std), and writes WORK/vae (diffusers folder, scaling_factor in its config) +
   WORK/kl-eval.json (test PSNR / SSIM / rFID / label agreement, latent statistics).
1b. `vq`: a diffusers `VQModel` VQ-f4, 1024 codes, scaling_factor 1.0 (LDM's VQ convention); superseded (blurry:
   rFID 48 at 21.5 dB after 1.7 epochs). Loss L1 + L2 + the quantizer's codebook/commitment loss (diffusers'
   VectorQuantizer, legacy form), straight-through gradients; from --disc-start on, plus VQGAN's hinge patch-GAN
   term with its adaptive weight (L1/L2 alone gives blurry reconstructions that the FID features punish: rFID 75
   at 22.7 dB). The codebook starts from encoder outputs and codes unused for --reinit-every steps are
   re-seeded from the current batch's encoder outputs (until 80% of --total-steps).
   `vq-finalize` then applies an *exact* reparameterization so the pre-quantization latents the denoiser sees
   have zero mean per channel and unit standard deviation (on 20,000 training images): quant_conv and the codebook
   are shifted/scaled and post_quant_conv absorbs the inverse (nearest-code search is invariant under a common
   translation and scaling), so scaling_factor 1.0 is right. It writes WORK/vqvae + WORK/vq-eval.json.
   Both finalize commands measure rFID as FID (float64 numpy/scipy) of decoded vs. original test images in the
   feature space of models/fmnist-features.
2. Denoiser `ldm`: a class-conditional diffusers `UNet2DConditionModel` on the first stage's latents x
   scaling_factor: KL: a fresh posterior sample per batch from the cached posterior mean/std (LDM's
   encode_first_stage -> DiagonalGaussian .sample() x scale_factor); VQ: the pre-quantization latents h (LDM's
   get_first_stage_encoding for VQModelInterface returns h unquantized). Conditioned as LDM cin256: a
   separate ClassEmbedder nn.Embedding(11, D) (10 classes + null class 10) trained jointly, giving a one-token
   context [N, 1, D] as encoder_hidden_states; cross-attention only at the lower resolutions; 10% label
   dropout to the null class; LDM "linear" schedule = diffusers scaled_linear 0.0015 -> 0.0195, 1000 steps,
   epsilon prediction. EMA of the weights (unet + embedder) is what gets exported. Samples: DDIM, CFG; images =
   first_stage.decode(latents / scaling_factor).

Usage (WORK defaults: /root/ptqd-train/{kl,vq,ldm}):
  tools/train_ldm.py kl --minutes 45 --total-steps 2100 --gan-weight 0   # trains / resumes the KL-f4 (WORK/checkpoint.pt)
  tools/train_ldm.py kl-finalize                          # centers + scales + measures -> /root/ptqd-train/kl/vae
  tools/train_ldm.py vq --minutes 40                      # the VQ-f4 alternative; vq-finalize -> .../vq/vqvae
  tools/train_ldm.py ldm --vae /root/ptqd-train/kl/vae --init-from models/fmnist-ldm --work /root/ptqd-train/ldm-kl
                                                          # warm-starts unet + embedder (+ EMA) on the KL latents
  tools/train_ldm.py ldm --minutes 150                    # trains / resumes the denoiser (first stage from its checkpoint)
  tools/train_ldm.py export --out models/fmnist-ldm       # diffusers pipeline folder (EMA weights; vae/ or vqvae/)
  tools/train_ldm.py fid --model models/fmnist-ldm --n 5000   # FID at DDIM 20, eta 0, guidance 3
  On a fresh machine: `ldm --init-from models/fmnist-ldm` (unet + embedder + first stage from the export),
  `kl --init-from models/fmnist-ldm` / `vq --init-from models/fmnist-ldm` likewise for the first stage.
Progress (step, loss terms, PSNR, img/s, ETA) goes to stderr and WORK/train.log; checkpoints every --ckpt-minutes
(atomic); a grid every --grid-minutes to WORK/grid-<step>.png (first stage: originals | reconstructions, KL with
the posterior mean; denoiser: DDIM 20 steps, guidance 3, one row per class).
"""
import argparse, json, math, os, sys, time

import safetensors.torch  # noqa: F401  (diffusers 0.27 uses it without importing it)

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, VQModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_ddpm import load_split, save_grid  # noqa: E402  (same data pipeline and PNG writer)
from torch_attention import install_bmm_attention  # noqa: E402  (diffusers' math; avoids torch 1.13's baddbmm NaNs)

ROOT = "/root/ptqd-train"
MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
FEATURES = os.path.join(MODELS, "fmnist-features")

AE_CONFIG = dict(  # shared by the VQ-f4 and KL-f4 first stages: 1x32x32 <-> 3x8x8
    in_channels=1, out_channels=1, sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 128), layers_per_block=1, latent_channels=3, norm_num_groups=16,
)
VQ_CONFIG = dict(AE_CONFIG, num_vq_embeddings=1024, scaling_factor=1.0)
KL_CONFIG = dict(AE_CONFIG, scaling_factor=1.0, force_upcast=False)  # kl-finalize measures the scaling_factor
PIXELS = 32 * 32  # the per-image sums of LDM's loss are divided by this (mean L1 / L2)

EMBED_DIM = 128
NULL_CLASS = 10
UNET_CONFIG = dict(
    sample_size=8, in_channels=3, out_channels=3,
    block_out_channels=(64, 64, 96), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=EMBED_DIM, attention_head_dim=1, norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(  # LDM's "linear" schedule, the convention PTQD sampled with
    num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading",
)


# ----------------------------------------------------------------------------- shared pieces

def _flat_linear_forward(self, x):
    """nn.Linear on a 3-D input is slow on Debian's CPU torch 1.13 (batched-matmul path); same math on 2-D views."""
    if x.dim() > 2:
        return F.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias).reshape(*x.shape[:-1], -1)
    return F.linear(x, self.weight, self.bias)


nn.Linear.forward = _flat_linear_forward


class ClassEmbedder(nn.Module):
    """LDM's ClassEmbedder: nn.Embedding(num_classes, embed_dim) -> one-token context [N, 1, embed_dim]."""

    def __init__(self, num_classes=11, embed_dim=EMBED_DIM):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim)

    def forward(self, labels):
        return self.embedding(labels)[:, None, :]


def log_line(log, msg):
    print(msg, file=sys.stderr, flush=True)
    print(msg, file=log, flush=True)


def lr_at(base, step, total, warmup, warm_from=0):
    """Linear warm-up (from step warm_from, where the optimizer started), cosine decay to 10% of base over `total`
    steps."""
    warm = min(1.0, (step - warm_from + 1) / warmup)
    prog = min(1.0, step / total)
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


def atomic_save(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def epoch_batch(n, batch, seed, step, cache):
    """Indices of `step`'s batch: each epoch's order depends only on (seed, epoch), so runs resume exactly."""
    spe = n // batch
    epoch = step // spe
    if cache.get("epoch") != epoch:
        cache["perm"] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        cache["epoch"] = epoch
    i = step % spe
    return cache["perm"][i * batch:(i + 1) * batch]


class TrainClock:
    """Training time that leaves out pauses: this machine is shared, and other jobs SIGSTOP the training processes
    while they run (the wall clock keeps going). A gap of more than `gap` seconds between two loop iterations
    counts as paused, less one typical iteration. elapsed() drives the --minutes budget, img/s, ETA and the
    recorded training minutes; banked() returns the training seconds since its previous call (for state)."""

    def __init__(self, log, gap=120.0):
        self.t0 = self.last = time.time()
        self.paused, self.typical, self.gap, self.log, self.mark = 0.0, None, gap, log, 0.0

    def tick(self):
        now = time.time()
        dt, self.last = now - self.last, now
        if self.typical is not None and dt > self.gap:
            self.paused += dt - self.typical
            log_line(self.log, f"  paused for {(dt - self.typical) / 60:.1f} min (not counted as training time)")
        else:
            self.typical = dt if self.typical is None else 0.9 * self.typical + 0.1 * dt
        return now

    def elapsed(self):
        return time.time() - self.t0 - self.paused

    def banked(self):
        e = self.elapsed()
        d, self.mark = e - self.mark, e
        return d


# ----------------------------------------------------------------------------- metrics

def load_feature_net():
    from safetensors.torch import load_file
    sd = load_file(os.path.join(FEATURES, "model.safetensors"))

    def features(x):
        for name in ("conv1", "conv2", "conv3"):
            x = F.max_pool2d(F.relu(F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)), 2)
        f = F.relu(F.linear(torch.flatten(x, 1), sd["fc1.weight"], sd["fc1.bias"]))
        return f, F.linear(f, sd["fc2.weight"], sd["fc2.bias"])
    return features


@torch.no_grad()
def feature_stats(images, bs=500):
    """images [N,1,32,32] in [-1,1] (clamped here) -> (features float64 [N,128], predicted labels [N])."""
    fn = load_feature_net()
    fs, ps = [], []
    for i in range(0, len(images), bs):
        f, logits = fn(images[i:i + bs].clamp(-1, 1))
        fs.append(f.double())
        ps.append(logits.argmax(1))
    return torch.cat(fs).numpy(), torch.cat(ps)


def fid_from_features(a, b):
    import scipy.linalg
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def psnr_ssim(x, y):
    """x, y [N,1,H,W] in [-1,1] -> mean PSNR (dB) and SSIM on the [0,1] scale (Gaussian 11x11, sigma 1.5)."""
    x = ((x.clamp(-1, 1) + 1) / 2).double()
    y = ((y.clamp(-1, 1) + 1) / 2).double()
    mse = ((x - y) ** 2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean().item()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :])[None, None]
    f = lambda t: F.conv2d(t, w)  # noqa: E731  ('valid' window, as skimage/the SSIM paper's reference code)
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return psnr, s.flatten(1).mean(1).mean().item()


# ----------------------------------------------------------------------------- stage 1: VQ-f4 / KL-f4 autoencoders

class PatchDiscriminator(nn.Module):
    """VQGAN's NLayerDiscriminator scaled to 1x32x32 (training only, never exported): 4x4 convs,
    32 -> 16 -> 8 -> 7 -> 6x6 patch logits, BatchNorm, LeakyReLU 0.2, weights N(0, 0.02)."""

    def __init__(self, ch=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, ch, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * ch, 4 * ch, 4, 1, 1, bias=False), nn.BatchNorm2d(4 * ch), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * ch, 1, 4, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


def vq_reconstruct(vq, x, bs=250):
    """x [N,1,32,32] -> (pre-quantization latents h, code indices, decoded images with codebook lookup)."""
    hs, idxs, outs = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            h = vq.encode(x[i:i + bs]).latents
            _, _, (_, _, idx) = vq.quantize(h)
            hs.append(h)
            idxs.append(idx.view(-1))
            outs.append(vq.decode(h).sample)  # decode quantizes first (force_not_quantize=False)
    return torch.cat(hs), torch.cat(idxs), torch.cat(outs)


def kl_reconstruct(kl, x, bs=250, generator=None):
    """x [N,1,32,32] -> (posterior means, posterior stds, mean-decoded images, sample-decoded images)."""
    ms, ss, outs, outs_s = [], [], [], []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            post = kl.encode(x[i:i + bs]).latent_dist
            ms.append(post.mean)
            ss.append(post.std)
            outs.append(kl.decode(post.mean).sample)
            outs_s.append(kl.decode(post.sample(generator=generator)).sample)
    return torch.cat(ms), torch.cat(ss), torch.cat(outs), torch.cat(outs_s)


def recon_grid(recon, x, y, path, per_class=6):
    """10 rows (one per class): per_class originals | their reconstructions recon(x)."""
    sel = torch.cat([torch.nonzero(y == c)[:per_class, 0] for c in range(10)])
    rec = recon(x[sel])
    tiles = torch.cat([x[sel].view(10, per_class, 1, 32, 32), rec.view(10, per_class, 1, 32, 32)], 1)
    save_grid(tiles.reshape(-1, 1, 32, 32), path, nrow=10)


def vq_grid(vq, x, y, path, per_class=6):
    recon_grid(lambda t: vq_reconstruct(vq, t)[2], x, y, path, per_class)


def kl_grid(kl, x, y, path, per_class=6):
    recon_grid(lambda t: kl_reconstruct(kl, t)[2], x, y, path, per_class)


class VQStage:
    """cmd_train_first_stage hooks for the VQ-f4 VQModel (codebook/commitment loss, dead-code re-seeding)."""
    name, folder, config = "vq", "vqvae", VQ_CONFIG

    def __init__(self, args):
        self.args = args
        self.usage = torch.zeros(VQ_CONFIG["num_vq_embeddings"])
        self.fresh = True

    def build(self):
        return VQModel(**VQ_CONFIG)

    def resumed(self, ck):
        self.usage, self.fresh = ck["usage"], False

    def ckpt_extra(self):
        return dict(usage=self.usage)

    def init_model(self, vq, state, log):
        args = self.args
        if not args.init_from:
            return
        src = VQModel.from_pretrained(os.path.join(args.init_from, "vqvae"))
        vq.load_state_dict(src.state_dict())
        self.fresh = False
        prev = os.path.join(args.init_from, "training.json")
        if os.path.exists(prev):  # continue the step count (LR schedule, GAN start) of the exported first stage
            with open(prev) as f:
                t = json.load(f).get("first_stage", {})
            state.update(step=t.get("step", 0), images=t.get("images", 0), seconds=t.get("minutes", 0) * 60)
        print(f"initialized from {args.init_from}/vqvae at step {state['step']} (optimizer and discriminator "
              f"start fresh)", file=sys.stderr)

    def data_init(self, vq, x_all):
        if self.fresh:  # codebook from encoder outputs (the default uniform(+-1/n) init collapses onto a few codes)
            n_codes = VQ_CONFIG["num_vq_embeddings"]
            with torch.no_grad():
                h = vq.encode(x_all[torch.randperm(len(x_all))[:512]]).latents.permute(0, 2, 3, 1).reshape(-1, 3)
                vq.quantize.embedding.weight.copy_(h[torch.randperm(len(h))[:n_codes]])

    def run_record(self):
        return dict(reinit_every=self.args.reinit_every)

    def describe(self):
        return f"codes {VQ_CONFIG['num_vq_embeddings']}"

    def forward(self, vq, x):
        """-> (reconstruction, regularization loss, running-average log terms)."""
        h = vq.encode(x).latents
        zq, qloss, (_, _, idx) = vq.quantize(h)
        self.h, self.idx = h, idx
        rec = vq.decode(zq, force_not_quantize=True).sample  # zq is the straight-through code lookup
        return rec, qloss, dict(vq=qloss.item())

    def log_terms(self, run):
        return f"vq {run['vq']:.5f}"

    def after_step(self, vq, state, log):
        args, n_codes = self.args, VQ_CONFIG["num_vq_embeddings"]
        self.usage += torch.bincount(self.idx.view(-1), minlength=n_codes).float()
        if state["step"] % args.reinit_every == 0:
            dead = torch.nonzero(self.usage == 0)[:, 0]
            used = int((self.usage > 0).sum())
            if len(dead) and state["step"] < 0.8 * args.total_steps:
                with torch.no_grad():
                    hv = self.h.detach().permute(0, 2, 3, 1).reshape(-1, 3)
                    pick = hv[torch.randint(0, len(hv), (len(dead),))]
                    vq.quantize.embedding.weight[dead] = pick + 0.01 * hv.std() * torch.randn_like(pick)
                state["reinits"] = state.get("reinits", 0) + len(dead)
            log_line(log, f"  codebook: {used}/{n_codes} codes used in the last {args.reinit_every} steps"
                          + (f", {len(dead)} re-seeded" if len(dead) and state['step'] < 0.8 * args.total_steps else ""))
            self.usage.zero_()

    def grid(self, vq, x, y, path):
        vq_grid(vq, x, y, path)


@torch.no_grad()
def kl_from_vq(kl, vq, logvar_bias):
    """Warm start of the KL-f4 AutoencoderKL from the VQ-f4 VQModel (same encoder/decoder): every matching tensor
    is copied; the encoder's conv_out (3 -> 6 channels) and quant_conv (3x3 -> 6x6) are widened so that the
    posterior mean is exactly the VQ's pre-quantization latent h and logvar = logvar_bias everywhere (the logvar
    rows of quant_conv are zero; the new logvar half of conv_out keeps its random init, so that path is not a dead
    zero-times-zero product, but it enters with weight 0). post_quant_conv and the decoder are the VQ's, so the
    posterior-mean decode is the VQ decode without quantization (force_not_quantize=True)."""
    src, dst = vq.state_dict(), kl.state_dict()
    skip = {"encoder.conv_out.weight", "encoder.conv_out.bias", "quant_conv.weight", "quant_conv.bias"}
    copied = 0
    for k, v in src.items():
        if k in dst and k not in skip:
            if dst[k].shape != v.shape:
                raise ValueError(f"{k}: VQ {tuple(v.shape)} vs KL {tuple(dst[k].shape)}")
            dst[k].copy_(v)
            copied += 1
    missing = [k for k in dst if k not in src and k not in skip]
    if missing:
        raise ValueError(f"KL tensors without a VQ source: {missing}")
    c = vq.config.latent_channels
    dst["encoder.conv_out.weight"][:c] = src["encoder.conv_out.weight"]
    dst["encoder.conv_out.bias"][:c] = src["encoder.conv_out.bias"]
    dst["encoder.conv_out.bias"][c:] = 0
    qw, qb = dst["quant_conv.weight"], dst["quant_conv.bias"]
    qw.zero_()
    qw[:c, :c] = src["quant_conv.weight"]
    qb[:c] = src["quant_conv.bias"]
    qb[c:] = logvar_bias
    return copied + 4


class KLStage:
    """cmd_train_first_stage hooks for the KL-f4 AutoencoderKL (LDM's LPIPSWithDiscriminator minus LPIPS)."""
    name, folder, config = "kl", "vae", KL_CONFIG

    def __init__(self, args):
        self.args = args

    def build(self):
        return AutoencoderKL(**KL_CONFIG)

    def resumed(self, ck):
        pass

    def ckpt_extra(self):
        return {}

    def init_model(self, kl, state, log):
        args = self.args
        if args.init_from:  # an exported pipeline folder (or a kl WORK) with a vae/ subfolder
            kl.load_state_dict(AutoencoderKL.from_pretrained(os.path.join(args.init_from, "vae")).state_dict())
            state["init"] = f"{args.init_from}/vae"
            log_line(log, f"initialized from {args.init_from}/vae (optimizer and discriminator start fresh)")
            return
        if not args.init_from_vq or args.init_from_vq == "none":
            state["init"] = "random"
            return
        vq = VQModel.from_pretrained(args.init_from_vq).eval()
        install_bmm_attention(vq)
        n = kl_from_vq(kl, vq, args.logvar_init)
        kl.eval()
        x, _ = load_split("test")
        x = x[:256]
        with torch.no_grad():  # step-0 check: mean-decode == VQ decode without quantization
            h = vq.encode(x).latents
            ref = vq.decode(h, force_not_quantize=True).sample
            post = kl.encode(x).latent_dist
            out = kl.decode(post.mean).sample
        d_lat = (post.mean - h).abs().max().item()
        d_img = (out - ref).abs().max().item()
        psnr_vq = psnr_ssim(vq.decode(h).sample, x)[0]
        psnr_kl = psnr_ssim(out, x)[0]
        kl.train()
        log_line(log, f"warm start from VQ {args.init_from_vq}: {n} tensors copied/widened, logvar bias "
                      f"{args.logvar_init}; step-0 check on 256 test images: max |mean - h| {d_lat:.2e}, "
                      f"max |KL mean-decode - VQ decode(force_not_quantize)| {d_img:.2e}; PSNR {psnr_kl:.2f} dB "
                      f"(VQ with quantization {psnr_vq:.2f} dB); posterior std {post.std.mean():.4f}")
        if d_img > 1e-4 or d_lat > 1e-5:
            sys.exit("warm start does not reproduce the VQ autoencoder")
        state["init"] = f"VQ {args.init_from_vq} (logvar bias {args.logvar_init})"
        state["init_check"] = dict(max_abs_latent_diff=d_lat, max_abs_decode_diff=d_img, psnr_db=psnr_kl,
                                   vq_psnr_db_quantized=psnr_vq)

    def data_init(self, kl, x_all):
        pass

    def run_record(self):
        return dict(kl_weight=self.args.kl_weight)

    def describe(self):
        return f"kl weight {self.args.kl_weight} (per-image KL sum / {PIXELS} pixels)"

    def forward(self, kl, x):
        post = kl.encode(x).latent_dist
        rec = kl.decode(post.sample()).sample
        kl_img = post.kl().mean()  # per image: sum over the 3x8x8 latent elements
        # LDM: sum_pixels |x - rec| / B + kl_weight * sum_latent KL / B; here everything / PIXELS (mean L1)
        return rec, self.args.kl_weight * kl_img / PIXELS, dict(kl=kl_img.item(), std=post.std.mean().item(),
                                                                 mstd=post.mean.std().item())

    def log_terms(self, run):
        return f"kl {run['kl']:.0f} post std {run['std']:.4f} mean std {run['mstd']:.3f}"

    def after_step(self, kl, state, log):
        pass

    def grid(self, kl, x, y, path):
        kl_grid(kl, x, y, path)


def cmd_train_first_stage(args, stage):
    """Shared training loop of `vq` and `kl`: L1 + L2 + stage.forward's regularizer, from --disc-start on plus the
    hinge patch-GAN generator term x --gan-weight x VQGAN's adaptive weight; AdamW + cosine, grad clip 1."""
    work = args.work or os.path.join(ROOT, stage.name)
    os.makedirs(work, exist_ok=True)
    ckpt_path = os.path.join(work, "checkpoint.pt")
    log = open(os.path.join(work, "train.log"), "a")
    model = stage.build()
    install_bmm_attention(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    disc = PatchDiscriminator()
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    state = dict(step=0, images=0, seconds=0.0, rng=None, reinits=0)
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"])
        state = ck["state"]
        stage.resumed(ck)
        if "disc" in ck:
            disc.load_state_dict(ck["disc"]); opt_d.load_state_dict(ck["opt_d"])
        print(f"resumed at step {state['step']} ({state['images']} images, {state['seconds']/60:.1f} min)", file=sys.stderr)
    else:
        stage.init_model(model, state, log)
    if state["rng"] is not None:
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(args.seed)

    x_all, y_all = load_split("train")
    x_test, y_test = load_split("test")
    n = len(x_all)
    stage.data_init(model, x_all)
    state.setdefault("runs", []).append(dict(start_step=state["step"], minutes=args.minutes, total_steps=args.total_steps,
                                             batch=args.batch, lr=args.lr, gan_weight=args.gan_weight,
                                             until_step=args.until_step, disc_start=args.disc_start,
                                             disc_lr=args.disc_lr, **stage.run_record()))
    log_line(log, f"{stage.name}: {sum(p.numel() for p in model.parameters())} parameters, batch {args.batch}, "
                  f"lr {args.lr}, {stage.describe()}, gan weight {args.gan_weight} from step {args.disc_start}, "
                  f"threads {torch.get_num_threads()}")
    clock = TrainClock(log)
    images_at_start, paused_before = state["images"], state.get("paused_seconds", 0.0)
    last_ckpt = last_grid = clock.t0
    run = None
    perm_cache = {}

    def save():
        state["rng"] = torch.get_rng_state()
        atomic_save(dict(model=model.state_dict(), opt=opt.state_dict(), state=state, disc=disc.state_dict(),
                         opt_d=opt_d.state_dict(), config=stage.config, **stage.ckpt_extra()), ckpt_path)

    def grid():
        model.eval()
        stage.grid(model, x_test, y_test, os.path.join(work, f"grid-{state['step']:06d}.png"))
        model.train()

    model.train()
    while clock.elapsed() < args.minutes * 60 and not (args.until_step and state["step"] >= args.until_step):
        clock.tick()
        step = state["step"]
        x = x_all[epoch_batch(n, args.batch, args.seed, step, perm_cache)]
        lr = lr_at(args.lr, step, args.total_steps, 200)
        for gp in opt.param_groups:
            gp["lr"] = lr
        rec, reg, terms = stage.forward(model, x)
        l1 = (rec - x).abs().mean()
        l2 = ((rec - x) ** 2).mean()
        nll = l1 + l2
        loss = nll + reg
        gan = args.gan_weight > 0 and step >= args.disc_start
        g_loss = d_loss = adaptive = torch.zeros(())
        if gan:  # VQGAN: hinge patch-GAN, generator term weighted by |grad nll| / |grad g_loss| at conv_out
            g_loss = -disc(rec).mean()
            last = model.decoder.conv_out.weight
            gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
            gg = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
            adaptive = (gn / (gg + 1e-4)).clamp(0, 1e4).detach()
            loss = loss + args.gan_weight * adaptive * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if gan:
            d_loss = 0.5 * (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        state["step"] += 1
        state["images"] += len(x)
        stage.after_step(model, state, log)
        vals = dict(loss=loss.item(), l1=l1.item(), l2=l2.item(), g=g_loss.item(), d=d_loss.item(),
                    w=adaptive.item(), **terms)
        run = vals if run is None else {k: 0.98 * run[k] + 0.02 * v for k, v in vals.items()}
        now = time.time()
        if state["step"] % 50 == 0:
            el = clock.elapsed()
            ips = (state["images"] - images_at_start) / max(el, 1e-9)
            psnr = 10 * math.log10(4.0 / max(run["l2"], 1e-12))
            log_line(log, f"step {state['step']}/{args.total_steps} epoch {state['images']/n:.2f} loss {run['loss']:.4f} "
                          f"(l1 {run['l1']:.4f} l2 {run['l2']:.5f} ~{psnr:.1f} dB, {stage.log_terms(run)}, "
                          f"g {run['g']:.3f} x w {run['w']:.3f} d {run['d']:.3f}) lr {lr:.2e} "
                          f"{ips:.1f} img/s  wall {(state['seconds'] + el - clock.mark)/60:.1f} min  "
                          f"session ETA {(args.minutes * 60 - el)/60:.1f} min")
        if now - last_ckpt > args.ckpt_minutes * 60:
            state["seconds"] += clock.banked()
            state["paused_seconds"] = paused_before + clock.paused
            last_ckpt = now
            save()
        if now - last_grid > args.grid_minutes * 60:
            last_grid = now
            grid()
    state["seconds"] += clock.banked()
    state["paused_seconds"] = paused_before + clock.paused
    save()
    grid()
    log_line(log, f"stopped at step {state['step']} after {state['seconds']/60:.1f} min total")


def cmd_vq(args):
    cmd_train_first_stage(args, VQStage(args))


def cmd_kl(args):
    cmd_train_first_stage(args, KLStage(args))


@torch.no_grad()
def normalize_latents(vq, x):
    """Exact reparameterization h' = (h - m) / s (m per channel, s one global std, over x's latents):
    quant_conv and the codebook move to the new coordinates, post_quant_conv absorbs the inverse. The
    nearest code is unchanged (distances scale by 1/s), decoded images are unchanged up to float rounding."""
    h = torch.cat([vq.encode(x[i:i + 500]).latents for i in range(0, len(x), 500)])
    m = h.mean((0, 2, 3)).double()
    s = (h.double() - m.view(1, -1, 1, 1)).std().item()
    qc, pq, emb = vq.quant_conv, vq.post_quant_conv, vq.quantize.embedding
    qc.weight.copy_((qc.weight.double() / s).float())
    qc.bias.copy_(((qc.bias.double() - m) / s).float())
    w = pq.weight.double()  # [C, C, 1, 1]; out = W q + b, q = s q' + m
    pq.bias.copy_((pq.bias.double() + w[:, :, 0, 0] @ m).float())
    pq.weight.copy_((w * s).float())
    emb.weight.copy_(((emb.weight.double() - m) / s).float())
    return m.tolist(), s


def finalize_subset(x_train):
    """The 20,000 training images both finalize commands normalize on (fixed seed)."""
    return x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:20000]]


def recon_metrics(rec, x_test, y_test):
    psnr, ssim = psnr_ssim(rec, x_test)
    psnr28, ssim28 = psnr_ssim(rec[..., 2:30, 2:30], x_test[..., 2:30, 2:30])
    f_rec, p_rec = feature_stats(rec)
    f_test, p_test = feature_stats(x_test)
    return dict(test_psnr_db=psnr, test_ssim=ssim, test_psnr_db_28x28=psnr28, test_ssim_28x28=ssim28,
                test_rfid=fid_from_features(f_rec, f_test),
                test_label_agreement=(p_rec == y_test).double().mean().item(),
                feature_net_test_accuracy=(p_test == y_test).double().mean().item())


def cmd_vq_finalize(args):
    work = args.work or os.path.join(ROOT, "vq")
    ck = torch.load(os.path.join(work, "checkpoint.pt"))
    vq = VQModel(**VQ_CONFIG)
    vq.load_state_dict(ck["model"])
    vq.eval()
    install_bmm_attention(vq)
    x_train, _ = load_split("train")
    x_test, y_test = load_split("test")
    t0 = time.time()
    _, _, rec_before = vq_reconstruct(vq, x_test[:500])
    m, s = normalize_latents(vq, finalize_subset(x_train))
    h, idx, rec = vq_reconstruct(vq, x_test)
    drift = (rec[:500] - rec_before).abs().max().item()
    print(f"normalized latents: mean {m}, std {s:.4f}; max |decoded change| {drift:.2e}", file=sys.stderr)
    with torch.no_grad():  # code usage on 10,000 training images (encoder + nearest code only)
        idx_train = torch.cat([vq.quantize(vq.encode(x_train[i:i + 500]).latents)[2][2].view(-1)
                               for i in range(0, 10000, 500)])
    codes = vq.quantize.embedding.weight[idx].view(len(x_test), 8, 8, 3).permute(0, 3, 1, 2)
    counts = torch.bincount(idx, minlength=VQ_CONFIG["num_vq_embeddings"]).double()
    p = counts / counts.sum()
    perplexity = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    res = dict(
        step=ck["state"]["step"], images=ck["state"]["images"], epochs=ck["state"]["images"] / 60000,
        minutes=ck["state"]["seconds"] / 60,
        **recon_metrics(rec, x_test, y_test),
        codebook_used_test=int((counts > 0).sum()), codebook_used_train10k=int(torch.unique(idx_train).numel()),
        codebook_size=VQ_CONFIG["num_vq_embeddings"], codebook_perplexity_test=perplexity,
        latent_normalization=dict(channel_mean_removed=m, std_divided=s),
        latents_pre_quant_test=dict(mean=h.mean().item(), std=h.std().item(),
                                    channel_mean=h.mean((0, 2, 3)).tolist(), channel_std=h.std((0, 2, 3)).tolist()),
        latents_codes_test=dict(mean=codes.mean().item(), std=codes.std().item(),
                                channel_std=codes.std((0, 2, 3)).tolist()),
        quantization_error_rms=(h - codes).pow(2).mean().sqrt().item(),
        eval_seconds=time.time() - t0,
    )
    if "runs" in ck["state"]:
        res["runs"] = ck["state"]["runs"]
    out = os.path.join(work, "vqvae")
    vq.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(work, "vq-eval.json"), "w") as f:
        json.dump(res, f, indent=2)
    vq_grid(vq, x_test, y_test, os.path.join(work, f"recon-{res['step']:06d}.png"))
    print(json.dumps(res, indent=2))


@torch.no_grad()
def center_kl_latents(kl, x):
    """Exact reparameterization mean' = mean - m (m = per-channel mean of the posterior means over x): quant_conv's
    mean-channel bias moves by -m (the logvar half is untouched), post_quant_conv's bias absorbs W m, so
    decode(mean' + std * eps) equals the old decode(mean + std * eps) up to float rounding."""
    c = kl.config.latent_channels
    mu = torch.cat([kl.encode(x[i:i + 500]).latent_dist.mean for i in range(0, len(x), 500)])
    m = mu.double().mean((0, 2, 3))
    qc, pq = kl.quant_conv, kl.post_quant_conv
    qc.bias[:c] = (qc.bias[:c].double() - m).float()
    pq.bias.copy_((pq.bias.double() + pq.weight.double()[:, :, 0, 0] @ m).float())
    return m.tolist()


def latent_stats(t):
    return dict(mean=t.mean().item(), std=t.std().item(), channel_mean=t.mean((0, 2, 3)).tolist(),
                channel_std=t.std((0, 2, 3)).tolist())


def cmd_kl_finalize(args):
    """Center the posterior means per channel (exact), measure scaling_factor = 1 / std of posterior samples
    (LDM's scale_by_std, on the same 20,000 training images), evaluate on the test set, write WORK/vae."""
    work = args.work or os.path.join(ROOT, "kl")
    ck = torch.load(os.path.join(work, "checkpoint.pt"))
    kl = AutoencoderKL(**KL_CONFIG)
    kl.load_state_dict(ck["model"])
    kl.eval()
    install_bmm_attention(kl)
    x_train, _ = load_split("train")
    x_test, y_test = load_split("test")
    xs = finalize_subset(x_train)
    t0 = time.time()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731  (same posterior noise before and after)
    _, _, mrec_before, srec_before = kl_reconstruct(kl, x_test[:500], generator=g())
    m = center_kl_latents(kl, xs)
    _, _, mrec_after, srec_after = kl_reconstruct(kl, x_test[:500], generator=g())
    drift = max((mrec_after - mrec_before).abs().max().item(), (srec_after - srec_before).abs().max().item())
    print(f"centered posterior means by {m}; max |decoded change| {drift:.2e}", file=sys.stderr)
    if drift > 1e-5:
        sys.exit(f"centering changed the decoder output by {drift:.2e} > 1e-5")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        z = []
        for i in range(0, len(xs), 500):
            post = kl.encode(xs[i:i + 500]).latent_dist
            z.append(post.sample(generator=gen))
        z = torch.cat(z)
    scale = 1.0 / z.double().flatten().std().item()  # LDM scale_by_std: 1 / z.flatten().std()
    kl.register_to_config(scaling_factor=scale)
    print(f"scaling_factor {scale:.6f} (posterior-sample std {1/scale:.4f} on {len(xs)} training images)",
          file=sys.stderr)
    mu, sd, rec, rec_s = kl_reconstruct(kl, x_test, generator=torch.Generator().manual_seed(3))
    zt = (mu + sd * torch.randn(mu.shape, generator=torch.Generator().manual_seed(4))) * scale
    kl_per_image = 0.5 * (mu ** 2 + sd ** 2 - 1 - 2 * sd.clamp_min(1e-30).log()).sum((1, 2, 3))
    ms = recon_metrics(rec_s, x_test, y_test)
    res = dict(
        step=ck["state"]["step"], images=ck["state"]["images"], epochs=ck["state"]["images"] / 60000,
        minutes=ck["state"]["seconds"] / 60,
        decode="posterior mean (what the denoiser's samples go through); test_sample_decode: decode(posterior.sample())",
        **recon_metrics(rec, x_test, y_test),
        test_sample_decode=dict(psnr_db=ms["test_psnr_db"], ssim=ms["test_ssim"], rfid=ms["test_rfid"],
                                label_agreement=ms["test_label_agreement"]),
        scaling_factor=scale,
        scaling_factor_rule="1 / std of posterior samples (flattened) of 20,000 training images after centering "
                            "(LDM scale_by_std)",
        latent_centering=dict(channel_mean_removed=m, max_abs_decode_change=drift),
        latents_posterior_mean_test=latent_stats(mu),
        latents_posterior_std_test=dict(mean=sd.mean().item(), min=sd.min().item(), max=sd.max().item(),
                                        channel_mean=sd.mean((0, 2, 3)).tolist()),
        latents_scaled_samples_test=latent_stats(zt),
        latents_scaled_samples_train20k=latent_stats(z * scale),
        kl_per_image_test=kl_per_image.mean().item(),
        eval_seconds=time.time() - t0,
    )
    for k in ("runs", "init", "init_check"):
        if k in ck["state"]:
            res[k] = ck["state"][k]
    out = os.path.join(work, "vae")
    kl.save_pretrained(out, safe_serialization=True)
    back = AutoencoderKL.from_pretrained(out)
    assert abs(back.config.scaling_factor - scale) < 1e-12
    with open(os.path.join(work, "kl-eval.json"), "w") as f:
        json.dump(res, f, indent=2)
    kl_grid(kl, x_test, y_test, os.path.join(work, f"recon-{res['step']:06d}.png"))
    print(json.dumps(res, indent=2))


# ----------------------------------------------------------------------------- stage 2: denoiser

@torch.no_grad()
def sample_latents(unet, embedder, labels, steps=20, guidance=3.0, eta=0.0, seed=0, noise=None):
    """DDIM with classifier-free guidance, the diffusers way (cat([uncond, cond]) -> chunk -> uc + s(c - uc))."""
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = noise if noise is not None else torch.randn(len(labels), 3, 8, 8, generator=g)
    ctx = embedder(torch.cat([torch.full_like(labels, NULL_CLASS), labels]))
    for t in sched.timesteps:
        eps = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
        eu, ec = eps.chunk(2)
        x = sched.step(eu + guidance * (ec - eu), t, x, eta=eta, generator=g).prev_sample
    return x


@torch.no_grad()
def decode_latents(fs, z, bs=250):
    """Denoiser latents -> images: first_stage.decode(z / scaling_factor) (a VQModel quantizes first)."""
    return torch.cat([fs.decode(z[i:i + bs] / fs.config.scaling_factor).sample for i in range(0, len(z), bs)])


def is_kl(fs):
    return isinstance(fs, AutoencoderKL)


def load_first_stage(path):
    """A diffusers VQModel or AutoencoderKL folder (by config.json's _class_name), frozen, eval mode."""
    with open(os.path.join(path, "config.json")) as f:
        cls = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}[json.load(f)["_class_name"]]
    fs = cls.from_pretrained(path)
    fs.eval().requires_grad_(False)
    install_bmm_attention(fs)
    return fs


load_vq_folder = load_first_stage  # old name


def first_stage_in(folder):
    """The first-stage subfolder of an exported pipeline folder: vae/ (KL) or vqvae/ (VQ)."""
    for sub in ("vae", "vqvae"):
        if os.path.exists(os.path.join(folder, sub, "config.json")):
            return os.path.join(folder, sub)
    raise FileNotFoundError(f"no vae/ or vqvae/ in {folder}")


def train_latents(fs, work, fs_path, subset=0):
    """Encodings of the 60,000 training images, cached in WORK. VQ: dict(latents = pre-quantization h x
    scaling_factor, labels). KL: dict(mean, std, labels) of the DiagonalGaussian posteriors (unscaled): the
    denoiser draws a fresh posterior sample per batch (batch_latents)."""
    from safetensors.torch import load_file, save_file
    import hashlib
    wfile = os.path.join(fs_path, "diffusion_pytorch_model.safetensors")
    digest = hashlib.sha256(open(wfile, "rb").read()).hexdigest()[:16]
    cache = os.path.join(work, f"latents-{digest}{f'-{subset}' if subset else ''}.safetensors")
    if os.path.exists(cache):
        return load_file(cache)
    x, y = load_split("train")
    if subset:
        x, y = x[:subset], y[:subset]
    t0 = time.time()
    with torch.no_grad():
        if is_kl(fs):
            posts = [fs.encode(x[i:i + 500]).latent_dist for i in range(0, len(x), 500)]
            d = dict(mean=torch.cat([p.mean for p in posts]).contiguous(),
                     std=torch.cat([p.std for p in posts]).contiguous(), labels=y)
            msg = f"posterior means std {d['mean'].std():.4f}, posterior std mean {d['std'].mean():.4f}"
        else:
            z = torch.cat([fs.encode(x[i:i + 500]).latents for i in range(0, len(x), 500)]) * fs.config.scaling_factor
            d = dict(latents=z.contiguous(), labels=y)
            msg = f"latents mean {z.mean():.4f} std {z.std():.4f}"
    save_file(d, cache + ".tmp")
    os.replace(cache + ".tmp", cache)
    print(f"encoded the training set in {time.time() - t0:.0f} s: {msg}", file=sys.stderr)
    return d


def batch_latents(data, idx, scale):
    """The denoiser's x_0 for training images idx: VQ h x s; KL (mean + std * N(0, 1)) x s (LDM's
    encode_first_stage -> DiagonalGaussian .sample() -> x scale_factor)."""
    if "latents" in data:
        return data["latents"][idx]
    mean = data["mean"][idx]
    return (mean + data["std"][idx] * torch.randn_like(mean)) * scale


def build_denoiser():
    unet = UNet2DConditionModel(**UNET_CONFIG)
    install_bmm_attention(unet)
    emb = ClassEmbedder(11, EMBED_DIM)
    return unet, emb


def cmd_ldm(args):
    work = args.work or os.path.join(ROOT, "ldm")
    os.makedirs(work, exist_ok=True)
    ckpt_path = os.path.join(work, "checkpoint.pt")
    unet, emb = build_denoiser()
    ema_unet, ema_emb = build_denoiser()
    params = list(unet.parameters()) + list(emb.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_emb.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    state = dict(step=0, images=0, seconds=0.0, rng=None, opt_start=0)
    if args.vq and args.vae:
        sys.exit("give --vq or --vae, not both")
    fs_path = args.vae or args.vq or os.path.join(ROOT, "vq", "vqvae")
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        unet.load_state_dict(ck["unet"]); emb.load_state_dict(ck["emb"])
        ema_unet.load_state_dict(ck["ema_unet"]); ema_emb.load_state_dict(ck["ema_emb"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        if not (args.vq or args.vae):
            fs_path = ck.get("first_stage_path", ck.get("vq_path", fs_path))
        print(f"resumed at step {state['step']} ({state['images']} images, {state['seconds']/60:.1f} min)", file=sys.stderr)
    else:
        if args.init_from:  # unet + embedder (+ the EMA, which starts as a copy) from an exported folder
            from safetensors.torch import load_file
            unet.load_state_dict(UNet2DConditionModel.from_pretrained(os.path.join(args.init_from, "unet")).state_dict())
            emb.load_state_dict(load_file(os.path.join(args.init_from, "class_embedder", "model.safetensors")))
            if not (args.vq or args.vae):
                fs_path = first_stage_in(args.init_from)
            prev = os.path.join(args.init_from, "training.json")
            if os.path.exists(prev):
                with open(prev) as f:
                    t = json.load(f).get("denoiser", {})
                state.update(step=t.get("steps", 0), images=t.get("images", 0), seconds=t.get("minutes", 0) * 60)
            state["opt_start"] = state["step"]  # fresh optimizer: LR warm-up again from here
            state["init_from"] = dict(folder=os.path.abspath(args.init_from), step=state["step"],
                                      first_stage=os.path.abspath(first_stage_in(args.init_from)))
            print(f"initialized from {args.init_from} (step {state['step']}; optimizer state starts fresh, "
                  f"LR warm-up from here)", file=sys.stderr)
        ema_unet.load_state_dict(unet.state_dict()); ema_emb.load_state_dict(emb.state_dict())
        torch.manual_seed(args.seed)
    for p in ema_params:
        p.requires_grad_(False)
    if state["rng"] is not None:
        torch.set_rng_state(state["rng"])
    state["first_stage_path"] = fs_path
    fs = load_first_stage(fs_path)
    scale = fs.config.scaling_factor
    data = train_latents(fs, work, fs_path, args.subset)
    y_all = data["labels"]
    acp = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    n = len(y_all)
    log = open(os.path.join(work, "train.log"), "a")
    z_probe = batch_latents(data, torch.arange(min(n, 5000)), scale)
    log_line(log, f"ldm: unet {sum(p.numel() for p in unet.parameters())} + embedder "
                  f"{sum(p.numel() for p in emb.parameters())} parameters, batch {args.batch}, lr {args.lr}, "
                  f"first stage {type(fs).__name__} {fs_path} (scaling_factor {scale:.6g}), "
                  f"latents std {z_probe.std():.4f} mean {z_probe.mean():.4f}, threads {torch.get_num_threads()}")
    clock = TrainClock(log)
    images_at_start, paused_before = state["images"], state.get("paused_seconds", 0.0)
    last_ckpt = last_grid = clock.t0
    loss_ema = None
    perm_cache = {}

    def save():
        state["rng"] = torch.get_rng_state()
        atomic_save(dict(unet=unet.state_dict(), emb=emb.state_dict(), ema_unet=ema_unet.state_dict(),
                         ema_emb=ema_emb.state_dict(), opt=opt.state_dict(), state=state, first_stage_path=fs_path,
                         unet_config=UNET_CONFIG), ckpt_path)

    def grid():
        ema_unet.eval()
        labels = torch.arange(10).repeat_interleave(8)
        img = decode_latents(fs, sample_latents(ema_unet, ema_emb, labels))
        save_grid(img, os.path.join(work, f"grid-{state['step']:06d}.png"), nrow=10)

    unet.train()
    while clock.elapsed() < args.minutes * 60 and not (args.until_step and state["step"] >= args.until_step):
        clock.tick()
        step = state["step"]
        idx = epoch_batch(n, args.batch, args.seed, step, perm_cache)
        z0, y = batch_latents(data, idx, scale), y_all[idx].clone()
        y[torch.rand(len(y)) < 0.1] = NULL_CLASS
        t = torch.randint(0, 1000, (len(y),))
        noise = torch.randn_like(z0)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        lr = lr_at(args.lr, step, args.total_steps, 500, state.get("opt_start", 0))
        for gp in opt.param_groups:
            gp["lr"] = lr
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=emb(y)).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))  # EMA with warm-up
        with torch.no_grad():
            for pe, pm in zip(ema_params, params):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        state["step"] += 1
        state["images"] += len(y)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        now = time.time()
        if state["step"] % 100 == 0:
            el = clock.elapsed()
            ips = (state["images"] - images_at_start) / max(el, 1e-9)
            log_line(log, f"step {state['step']}/{args.total_steps} epoch {state['images']/n:.2f} loss {loss_ema:.4f} "
                          f"lr {lr:.2e} {ips:.1f} img/s  wall {(state['seconds'] + el - clock.mark)/60:.1f} min  "
                          f"session ETA {(args.minutes * 60 - el)/60:.1f} min")
        if now - last_ckpt > args.ckpt_minutes * 60:
            state["seconds"] += clock.banked()
            state["paused_seconds"] = paused_before + clock.paused
            last_ckpt = now
            save()
        if now - last_grid > args.grid_minutes * 60:
            last_grid = now
            grid()
    state["seconds"] += clock.banked()
    state["paused_seconds"] = paused_before + clock.paused
    save()
    grid()
    log_line(log, f"stopped at step {state['step']} after {state['seconds']/60:.1f} min total")


# ----------------------------------------------------------------------------- export / evaluation

VQ_RECIPE = dict(
    model="diffusers VQModel (VQ-f4)",
    loss="L1 + L2 + VectorQuantizer loss (legacy: commitment 1.0, codebook 0.25); from the GAN start step on, + hinge "
         "patch-GAN generator term x 0.5 x VQGAN's adaptive weight (PatchDiscriminator, Adam 2e-4 betas 0.5/0.9)",
    optimizer="AdamW lr 1e-3, batch 64, 200-step warm-up, cosine to 10% over the planned steps of each run (see runs)",
    codebook="init from encoder outputs; dead codes re-seeded from the batch",
    latents="exactly reparameterized to zero channel mean / unit std; scaling_factor 1.0",
    default_runs=[dict(start_step=0, total_steps=4000, gan_weight=0),
                  dict(start_step=1391, total_steps=2800, gan_weight=0.5, disc_start=1391)],
)
KL_RECIPE = dict(
    model="diffusers AutoencoderKL (KL-f4)",
    loss="LDM's LPIPSWithDiscriminator without LPIPS: mean L1 + mean L2 of decode(posterior.sample()) + kl_weight x "
         "per-image KL sum / 1024 pixels (LDM's per-image-sum loss divided by the pixel count; kl_weight 1e-6, logvar "
         "fixed at 0 as LDM's optimizer never updates it); from disc_start on, + hinge patch-GAN generator term x "
         "gan_weight x VQGAN's adaptive weight (PatchDiscriminator, Adam 2e-4 betas 0.5/0.9). No perceptual loss.",
    optimizer="AdamW, batch 64, 200-step warm-up, cosine to 10% over the planned steps of each run (see runs), grad "
              "clip 1",
    warm_start="encoder/decoder/post_quant_conv from the VQ-f4 first stage; encoder conv_out and quant_conv widened "
               "to 2x3 channels: the posterior mean reproduces the VQ's pre-quantization latent, logvar starts at a "
               "constant (see init)",
    latents="posterior means exactly centered per channel (quant_conv bias, absorbed by post_quant_conv); denoiser "
            "trains on posterior samples x scaling_factor, scaling_factor = 1 / std of posterior samples on 20,000 "
            "training images (LDM scale_by_std)",
)


def first_stage_record(fs_path, kind):
    """The first-stage evaluation record: WORK/{vq,kl}-eval.json next to the folder, else an earlier export's
    training.json first_stage."""
    ev = os.path.join(os.path.dirname(os.path.normpath(fs_path)), f"{kind}-eval.json")
    prev = os.path.join(fs_path, "..", "training.json")
    if os.path.exists(ev):
        with open(ev) as f:
            return json.load(f), None
    if os.path.exists(prev):  # the first stage came from an earlier export: carry its record over
        with open(prev) as f:
            t = json.load(f)
        return t.get("first_stage", {}), t.get("first_stage_recipe")
    return {}, None


def cmd_export(args):
    from safetensors.torch import save_file
    import shutil
    work = args.work or os.path.join(ROOT, "ldm")
    ck = torch.load(os.path.join(work, "checkpoint.pt"))
    unet, emb = build_denoiser()
    unet.load_state_dict(ck["ema_unet"]); emb.load_state_dict(ck["ema_emb"])
    fs_path = args.vae or args.vq or ck.get("first_stage_path", ck.get("vq_path"))
    fs = load_first_stage(fs_path)
    kl = is_kl(fs)
    kind, folder, other = ("kl", "vae", "vqvae") if kl else ("vq", "vqvae", "vae")
    cls_name = type(fs).__name__
    out = args.out
    for sub in ("unet", folder, "scheduler", "class_embedder"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    if os.path.isdir(os.path.join(out, other)):  # a stale first stage of the other kind
        shutil.rmtree(os.path.join(out, other))
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    fs.save_pretrained(os.path.join(out, folder), safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(os.path.join(out, "scheduler"))
    save_file({"embedding.weight": emb.embedding.weight.detach().float().contiguous()},
              os.path.join(out, "class_embedder", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "class_embedder", "config.json"), "w") as f:
        json.dump({"_class_name": "ClassEmbedder", "num_classes": 11, "embed_dim": EMBED_DIM,
                   "null_class": NULL_CLASS}, f, indent=2)
    import diffusers
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump({"_class_name": "ClassConditionalLDMPipeline", "_diffusers_version": diffusers.__version__,
                   "_note": "no diffusers pipeline class exists for class-conditional LDM (cin256); "
                            "tools/sample_ldm.py samples this folder",
                   "unet": ["diffusers", "UNet2DConditionModel"], folder: ["diffusers", cls_name],
                   "scheduler": ["diffusers", "DDIMScheduler"], "class_embedder": ["ptqd", "ClassEmbedder"]},
                  f, indent=2)
    fs_eval, prev_recipe = first_stage_record(fs_path, kind)
    if kl:
        recipe = dict(KL_RECIPE, config=dict(fs.config), runs=fs_eval.get("runs"), init=fs_eval.get("init"),
                      scaling_factor=fs.config.scaling_factor)
        recipe["config"] = {k: v for k, v in recipe["config"].items() if not k.startswith("_")}
    else:
        recipe = {k: v for k, v in VQ_RECIPE.items() if k != "default_runs"}
        recipe.update(config={k: v for k, v in VQ_CONFIG.items()},
                      runs=fs_eval.get("runs", VQ_RECIPE["default_runs"]))
    if prev_recipe and not fs_eval.get("runs"):
        recipe = prev_recipe
    st = ck["state"]
    parts = ("unet", folder, "class_embedder")
    sizes = {sub: sum(os.path.getsize(os.path.join(out, sub, fn)) for fn in os.listdir(os.path.join(out, sub))
                      if fn.endswith(".safetensors")) for sub in parts}
    rec = dict(
        first_stage=fs_eval,
        first_stage_recipe=recipe,
        denoiser=dict(steps=st["step"], images=st["images"], epochs=st["images"] / 60000, minutes=st["seconds"] / 60),
        denoiser_recipe=dict(unet=UNET_CONFIG, class_embedder=dict(num_classes=11, embed_dim=EMBED_DIM,
                                                                   null_class=NULL_CLASS),
                             label_dropout=0.1,
                             latents=("KL posterior samples (DiagonalGaussian .sample(), drawn per batch) x "
                                      "scaling_factor (LDM)") if kl else
                                     "pre-quantization VQ encoder output x scaling_factor (LDM)",
                             loss="MSE on epsilon", optimizer="AdamW, 500-step warm-up, cosine to 10%, grad clip 1",
                             ema="decay min(0.9995, (1+s)/(10+s)), exported", scheduler=SCHEDULER_CONFIG),
        parameters={"unet": sum(p.numel() for p in unet.parameters()), folder: sum(p.numel() for p in fs.parameters()),
                    "class_embedder": emb.embedding.weight.numel()},
        bytes_on_disk=dict(sizes, total=sum(sizes.values())),
        data="Fashion-MNIST train (Debian dataset-fashion-mnist), 28x28 padded to 32x32 with -1",
        script="tools/train_ldm.py",
    )
    if "init_from" in st:
        rec["denoiser"]["init_from"] = st["init_from"]
    if os.path.exists(os.path.join(out, "training.json")):
        with open(os.path.join(out, "training.json")) as f:
            old = json.load(f)
        if ("fid" in old and old.get("denoiser", {}).get("steps") == st["step"]
                and old.get("first_stage", {}) == fs_eval):
            rec["fid"] = old["fid"]
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(rec, f, indent=2)
    # diffusers must load the parts back
    UNet2DConditionModel.from_pretrained(os.path.join(out, "unet"))
    type(fs).from_pretrained(os.path.join(out, folder))
    DDIMScheduler.from_pretrained(os.path.join(out, "scheduler"))
    print(f"exported EMA weights (step {st['step']}) with {cls_name} to {out}: {sizes} bytes", file=sys.stderr)


def cmd_fid(args):
    """FID (and label agreement of the feature net's classifier) of n samples against the test set."""
    from sample_ldm import load_pipeline, sample
    tj = os.path.join(args.model, "training.json")

    def exported_step():
        with open(tj) as f:
            return json.load(f)["denoiser"]["steps"]
    step_at_load = exported_step() if args.record else None
    unet, emb, first_stage, _ = load_pipeline(args.model)
    sched = DDIMScheduler.from_pretrained(os.path.join(args.model, "scheduler"))
    sched.set_timesteps(args.steps)
    x_test, _ = load_split("test")
    labels = torch.arange(args.n) % 10
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, 3, 8, 8, generator=g)
    step_noise = torch.randn(args.steps, args.n, 3, 8, 8, generator=g) if args.eta > 0 else None
    t0 = time.time()
    imgs = []
    for i in range(0, args.n, 500):
        sn = step_noise[:, i:i + 500] if step_noise is not None else None
        imgs.append(sample(unet, emb, first_stage, sched, labels[i:i + 500], noise[i:i + 500], args.guidance, args.eta, sn)[1])
        print(f"  sampled {i + len(imgs[-1])}/{args.n} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    img = torch.cat(imgs)
    f_gen, pred = feature_stats(img)
    f_test, _ = feature_stats(x_test)
    fid = fid_from_features(f_gen, f_test)
    res = dict(n=args.n, steps=args.steps, eta=args.eta, guidance=args.guidance, seed=args.seed, fid=fid,
               label_agreement=(pred == labels).double().mean().item(), seconds=time.time() - t0)
    print(json.dumps(res))
    if args.record:
        with open(tj) as f:
            rec = json.load(f)
        if rec["denoiser"]["steps"] != step_at_load:  # the folder was re-exported while we sampled
            sys.exit(f"not recorded: {args.model} changed from step {step_at_load} to {rec['denoiser']['steps']}")
        rec.setdefault("fid", []).append(dict(res, step=step_at_load, against="Fashion-MNIST test 10k"))
        with open(tj, "w") as f:
            json.dump(rec, f, indent=2)
    if args.grid:  # first 100 samples are labels 0..9 repeated: one row per class
        save_grid(img[:100].view(10, 10, 1, 32, 32).transpose(0, 1).reshape(100, 1, 32, 32), args.grid, nrow=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", help="checkpoint/log folder (default /root/ptqd-train/{kl,vq,ldm})")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--seed", type=int, default=0)
    for name, minutes, total, batch, lr in (("vq", 40.0, 5000, 64, 1e-3), ("kl", 45.0, 2100, 64, 1e-3),
                                            ("ldm", 150.0, 60000, 128, 5e-4)):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--minutes", type=float, default=minutes, help="training-time budget for this run (wall "
                                                                     "clock less SIGSTOP pauses)")
        p.add_argument("--until-step", type=int, default=0, help="also stop once the step count reaches this (a "
                                                                 "compute budget that CPU contention does not change)")
        p.add_argument("--total-steps", type=int, default=total, help="planned optimizer steps (LR schedule)")
        p.add_argument("--batch", type=int, default=batch)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--ckpt-minutes", type=float, default=5.0)
        p.add_argument("--grid-minutes", type=float, default=20.0)
        p.add_argument("--init-from", help="start a new run (no checkpoint in --work) from an exported folder")
        if name in ("vq", "kl"):
            p.add_argument("--gan-weight", type=float, default=0.5 if name == "vq" else 0.25,
                           help="patch-GAN weight (0 = off), VQGAN's adaptive weighting")
            p.add_argument("--disc-start", type=int, default=1400, help="step at which the GAN term starts")
            p.add_argument("--disc-lr", type=float, default=2e-4)
        if name == "vq":
            p.add_argument("--reinit-every", type=int, default=200, help="dead-code window (steps)")
        elif name == "kl":
            p.add_argument("--init-from-vq", default=os.path.join(MODELS, "fmnist-ldm", "vqvae"),
                           help="VQModel folder to warm-start from when there is no checkpoint and no --init-from "
                                "('none': random init)")
            p.add_argument("--logvar-init", type=float, default=-6.0, help="initial posterior logvar (warm start)")
            p.add_argument("--kl-weight", type=float, default=1e-6, help="LDM's kl_weight")
        elif name == "ldm":
            p.add_argument("--vq", help="VQModel first-stage folder (default /root/ptqd-train/vq/vqvae)")
            p.add_argument("--vae", help="AutoencoderKL first-stage folder (e.g. /root/ptqd-train/kl/vae)")
            p.add_argument("--ema", type=float, default=0.9995)
            p.add_argument("--subset", type=int, default=0, help="smoke tests: only the first N training images")
    sub.add_parser("vq-finalize", parents=[common])
    sub.add_parser("kl-finalize", parents=[common])
    p = sub.add_parser("export", parents=[common])
    p.add_argument("--out", default="models/fmnist-ldm")
    p.add_argument("--vq", help="VQ first-stage folder (default: the one the denoiser trained on)")
    p.add_argument("--vae", help="KL first-stage folder (default: the one the denoiser trained on)")
    p = sub.add_parser("fid", parents=[common])
    p.add_argument("--model", default="models/fmnist-ldm")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--grid", help="also write the first 100 samples (one row per class) to this PNG")
    p.add_argument("--record", action="store_true", help="append the result to MODEL/training.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"vq": cmd_vq, "vq-finalize": cmd_vq_finalize, "kl": cmd_kl, "kl-finalize": cmd_kl_finalize, "ldm": cmd_ldm,
     "export": cmd_export, "fid": cmd_fid}[args.cmd](args)


if __name__ == "__main__":
    main()
