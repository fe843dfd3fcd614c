#!/usr/bin/env python3
"""Train the bundled miniature latent-diffusion model (LDM-4 ImageNet in miniature) on Fashion-MNIST.

Reference tool only: never needed at run time. Uses Debian's python3-torch and diffusers==0.27.2
(`make venv`). Data: Debian's dataset-fashion-mnist, 28x28 padded to 32x32 with -1, values in [-1, 1]
(exactly as tools/train_ddpm.py).

Two stages, as CompVis latent-diffusion does it:

1. First stage `vq`: a diffusers `VQModel` VQ-f4 autoencoder, 1x32x32 <-> 3x8x8 latents, block_out_channels
   (32, 64, 128), layers_per_block 1, 1024 codes, norm_num_groups 16, scaling_factor 1.0 (LDM's VQ convention).
   Loss L1 + L2 + the quantizer's codebook/commitment loss (diffusers' VectorQuantizer, legacy form), straight-
   through gradients; from --disc-start on, plus VQGAN's hinge patch-GAN term with its adaptive weight
   (L1/L2 alone gives blurry reconstructions that the FID features punish: rFID 75 at 22.7 dB). The codebook starts from encoder outputs and codes unused for --reinit-every steps are
   re-seeded from the current batch's encoder outputs (until 80% of --total-steps).
   `vq-finalize` then applies an *exact* reparameterization so the pre-quantization latents the denoiser sees
   have zero mean per channel and unit standard deviation (on 20,000 training images): quant_conv and the codebook
   are shifted/scaled and post_quant_conv absorbs the inverse (nearest-code search is invariant under a common
   translation and scaling), so scaling_factor 1.0 is right. It measures test-set PSNR / SSIM / rFID (features
   of models/fmnist-features, FID in float64 numpy/scipy), codebook usage and latent statistics, and writes
   WORK/vqvae (diffusers folder) + WORK/vq-eval.json.
2. Denoiser `ldm`: a class-conditional diffusers `UNet2DConditionModel` on the pre-quantization latents h
   (LDM's get_first_stage_encoding for VQModelInterface returns h unquantized), conditioned as LDM cin256: a
   separate ClassEmbedder nn.Embedding(11, D) (10 classes + null class 10) trained jointly, giving a one-token
   context [N, 1, D] as encoder_hidden_states; cross-attention only at the lower resolutions; 10% label
   dropout to the null class; LDM "linear" schedule = diffusers scaled_linear 0.0015 -> 0.0195, 1000 steps,
   epsilon prediction. EMA of the weights (unet + embedder) is what gets exported. Samples: DDIM, CFG.

Usage (WORK defaults: /root/ptqd-train/vq and /root/ptqd-train/ldm):
  tools/train_ldm.py vq --minutes 40                      # trains / resumes the VQ (WORK/checkpoint.pt)
  tools/train_ldm.py vq-finalize                          # normalizes + measures -> /root/ptqd-train/vq/vqvae
  tools/train_ldm.py ldm --minutes 150                    # trains / resumes the denoiser
  tools/train_ldm.py export --out models/fmnist-ldm       # diffusers pipeline folder (EMA weights)
  tools/train_ldm.py fid --model models/fmnist-ldm --n 5000   # FID at DDIM 20, eta 0, guidance 3
  On a fresh machine: `ldm --init-from models/fmnist-ldm` (unet + embedder + vqvae from the export),
  `vq --init-from models/fmnist-ldm` likewise for the first stage.
Progress (step, loss, img/s, ETA) goes to stderr and WORK/train.log; checkpoints every --ckpt-minutes
(atomic); a grid every --grid-minutes to WORK/grid-<step>.png (VQ: originals | reconstructions; denoiser: DDIM
20 steps, guidance 3, one row per class).
"""
import argparse, json, math, os, sys, time

import safetensors.torch  # noqa: F401  (diffusers 0.27 uses it without importing it)

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_ddpm import load_split, save_grid  # noqa: E402  (same data pipeline and PNG writer)
from torch_attention import install_bmm_attention  # noqa: E402  (diffusers' math; avoids torch 1.13's baddbmm NaNs)

ROOT = "/root/ptqd-train"
FEATURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "fmnist-features")

VQ_CONFIG = dict(
    in_channels=1, out_channels=1, sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 128), layers_per_block=1, latent_channels=3,
    num_vq_embeddings=1024, norm_num_groups=16, scaling_factor=1.0,
)

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


def lr_at(base, step, total, warmup):
    """Linear warm-up, cosine decay to 10% of base over `total` steps."""
    warm = min(1.0, (step + 1) / warmup)
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


# ----------------------------------------------------------------------------- stage 1: VQ

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


def vq_grid(vq, x, y, path, per_class=6):
    sel = torch.cat([torch.nonzero(y == c)[:per_class, 0] for c in range(10)])
    _, _, rec = vq_reconstruct(vq, x[sel])
    tiles = torch.cat([x[sel].view(10, per_class, 1, 32, 32), rec.view(10, per_class, 1, 32, 32)], 1)
    save_grid(tiles.reshape(-1, 1, 32, 32), path, nrow=10)


def cmd_vq(args):
    work = args.work or os.path.join(ROOT, "vq")
    os.makedirs(work, exist_ok=True)
    ckpt_path = os.path.join(work, "checkpoint.pt")
    vq = VQModel(**VQ_CONFIG)
    install_bmm_attention(vq)
    opt = torch.optim.AdamW(vq.parameters(), lr=args.lr, weight_decay=0.0)
    disc = PatchDiscriminator()
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    state = dict(step=0, images=0, seconds=0.0, rng=None, reinits=0)
    usage = torch.zeros(VQ_CONFIG["num_vq_embeddings"])
    fresh = True
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        vq.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"])
        state, usage, fresh = ck["state"], ck["usage"], False
        if "disc" in ck:
            disc.load_state_dict(ck["disc"]); opt_d.load_state_dict(ck["opt_d"])
        print(f"resumed at step {state['step']} ({state['images']} images, {state['seconds']/60:.1f} min)", file=sys.stderr)
    elif args.init_from:
        src = VQModel.from_pretrained(os.path.join(args.init_from, "vqvae"))
        vq.load_state_dict(src.state_dict())
        fresh = False
        prev = os.path.join(args.init_from, "training.json")
        if os.path.exists(prev):  # continue the step count (LR schedule, GAN start) of the exported first stage
            with open(prev) as f:
                t = json.load(f).get("first_stage", {})
            state.update(step=t.get("step", 0), images=t.get("images", 0), seconds=t.get("minutes", 0) * 60)
        print(f"initialized from {args.init_from}/vqvae at step {state['step']} (optimizer and discriminator "
              f"start fresh)", file=sys.stderr)
    if state["rng"] is not None:
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(args.seed)

    x_all, y_all = load_split("train")
    x_test, y_test = load_split("test")
    n = len(x_all)
    n_codes = VQ_CONFIG["num_vq_embeddings"]
    if fresh:  # codebook from encoder outputs (the default uniform(+-1/n) init collapses onto a few codes)
        with torch.no_grad():
            h = vq.encode(x_all[torch.randperm(n)[:512]]).latents.permute(0, 2, 3, 1).reshape(-1, 3)
            vq.quantize.embedding.weight.copy_(h[torch.randperm(len(h))[:n_codes]])
    state.setdefault("runs", []).append(dict(start_step=state["step"], minutes=args.minutes, total_steps=args.total_steps,
                                             batch=args.batch, lr=args.lr, gan_weight=args.gan_weight,
                                             disc_start=args.disc_start, disc_lr=args.disc_lr))
    log = open(os.path.join(work, "train.log"), "a")
    log_line(log, f"vq: {sum(p.numel() for p in vq.parameters())} parameters, batch {args.batch}, lr {args.lr}, "
                  f"codes {n_codes}, threads {torch.get_num_threads()}")
    t_start = time.time()
    images_at_start = state["images"]
    last_ckpt = last_grid = t_start
    run = None
    perm_cache = {}

    def save():
        state["rng"] = torch.get_rng_state()
        atomic_save(dict(model=vq.state_dict(), opt=opt.state_dict(), state=state, usage=usage,
                         disc=disc.state_dict(), opt_d=opt_d.state_dict(), config=VQ_CONFIG), ckpt_path)

    vq.train()
    while time.time() - t_start < args.minutes * 60:
        step = state["step"]
        x = x_all[epoch_batch(n, args.batch, args.seed, step, perm_cache)]
        lr = lr_at(args.lr, step, args.total_steps, 200)
        for gp in opt.param_groups:
            gp["lr"] = lr
        h = vq.encode(x).latents
        zq, qloss, (_, _, idx) = vq.quantize(h)
        rec = vq.decode(zq, force_not_quantize=True).sample  # zq is the straight-through code lookup
        l1 = (rec - x).abs().mean()
        l2 = ((rec - x) ** 2).mean()
        nll = l1 + l2
        loss = nll + qloss
        gan = args.gan_weight > 0 and step >= args.disc_start
        g_loss = d_loss = torch.zeros(())
        if gan:  # VQGAN: hinge patch-GAN, generator term weighted by |grad nll| / |grad g_loss| at conv_out
            g_loss = -disc(rec).mean()
            last = vq.decoder.conv_out.weight
            gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
            gg = torch.autograd.grad(g_loss, last, retain_graph=True)[0].norm()
            adaptive = (gn / (gg + 1e-4)).clamp(0, 1e4).detach()
            loss = loss + args.gan_weight * adaptive * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vq.parameters(), 1.0)
        opt.step()
        if gan:
            d_loss = 0.5 * (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        usage += torch.bincount(idx.view(-1), minlength=n_codes).float()
        state["step"] += 1
        state["images"] += len(x)
        if state["step"] % args.reinit_every == 0:
            dead = torch.nonzero(usage == 0)[:, 0]
            used = int((usage > 0).sum())
            if len(dead) and state["step"] < 0.8 * args.total_steps:
                with torch.no_grad():
                    hv = h.detach().permute(0, 2, 3, 1).reshape(-1, 3)
                    pick = hv[torch.randint(0, len(hv), (len(dead),))]
                    vq.quantize.embedding.weight[dead] = pick + 0.01 * hv.std() * torch.randn_like(pick)
                state["reinits"] += len(dead)
            log_line(log, f"  codebook: {used}/{n_codes} codes used in the last {args.reinit_every} steps"
                          + (f", {len(dead)} re-seeded" if len(dead) and state['step'] < 0.8 * args.total_steps else ""))
            usage.zero_()
        vals = torch.tensor([loss.item(), l1.item(), l2.item(), qloss.item(), g_loss.item(), d_loss.item()])
        run = vals if run is None else 0.98 * run + 0.02 * vals
        now = time.time()
        if state["step"] % 50 == 0:
            el = now - t_start
            ips = (state["images"] - images_at_start) / max(el, 1e-9)
            psnr = 10 * math.log10(4.0 / max(run[2].item(), 1e-12))
            log_line(log, f"step {state['step']}/{args.total_steps} epoch {state['images']/n:.2f} loss {run[0]:.4f} "
                          f"(l1 {run[1]:.4f} l2 {run[2]:.5f} ~{psnr:.1f} dB, vq {run[3]:.5f}, g {run[4]:.3f} d {run[5]:.3f}) lr {lr:.2e} "
                          f"{ips:.1f} img/s  wall {(state['seconds'] + now - last_ckpt)/60:.1f} min  "
                          f"session ETA {(args.minutes * 60 - el)/60:.1f} min")
        if now - last_ckpt > args.ckpt_minutes * 60:
            state["seconds"] += now - last_ckpt
            last_ckpt = now
            save()
        if now - last_grid > args.grid_minutes * 60:
            last_grid = now
            vq.eval()
            vq_grid(vq, x_test, y_test, os.path.join(work, f"grid-{state['step']:06d}.png"))
            vq.train()
    state["seconds"] += time.time() - last_ckpt
    save()
    vq.eval()
    vq_grid(vq, x_test, y_test, os.path.join(work, f"grid-{state['step']:06d}.png"))
    log_line(log, f"stopped at step {state['step']} after {state['seconds']/60:.1f} min total")


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
    m, s = normalize_latents(vq, x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:20000]])
    h, idx, rec = vq_reconstruct(vq, x_test)
    drift = (rec[:500] - rec_before).abs().max().item()
    print(f"normalized latents: mean {m}, std {s:.4f}; max |decoded change| {drift:.2e}", file=sys.stderr)
    with torch.no_grad():  # code usage on 10,000 training images (encoder + nearest code only)
        idx_train = torch.cat([vq.quantize(vq.encode(x_train[i:i + 500]).latents)[2][2].view(-1)
                               for i in range(0, 10000, 500)])
    psnr, ssim = psnr_ssim(rec, x_test)
    psnr28, ssim28 = psnr_ssim(rec[..., 2:30, 2:30], x_test[..., 2:30, 2:30])
    f_rec, p_rec = feature_stats(rec)
    f_test, p_test = feature_stats(x_test)
    rfid = fid_from_features(f_rec, f_test)
    codes = vq.quantize.embedding.weight[idx].view(len(x_test), 8, 8, 3).permute(0, 3, 1, 2)
    counts = torch.bincount(idx, minlength=VQ_CONFIG["num_vq_embeddings"]).double()
    p = counts / counts.sum()
    perplexity = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    res = dict(
        step=ck["state"]["step"], images=ck["state"]["images"], epochs=ck["state"]["images"] / 60000,
        minutes=ck["state"]["seconds"] / 60,
        test_psnr_db=psnr, test_ssim=ssim, test_psnr_db_28x28=psnr28, test_ssim_28x28=ssim28, test_rfid=rfid,
        test_label_agreement=(p_rec == y_test).double().mean().item(),
        feature_net_test_accuracy=(p_test == y_test).double().mean().item(),
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
def decode_latents(vq, z, bs=250):
    return torch.cat([vq.decode(z[i:i + bs] / vq.config.scaling_factor).sample for i in range(0, len(z), bs)])


def load_vq_folder(path):
    vq = VQModel.from_pretrained(path)
    vq.eval().requires_grad_(False)
    install_bmm_attention(vq)
    return vq


def train_latents(vq, work, vq_path, subset=0):
    """Pre-quantization latents (x scaling_factor) of the 60,000 training images, cached in WORK."""
    from safetensors.torch import load_file, save_file
    import hashlib
    wfile = os.path.join(vq_path, "diffusion_pytorch_model.safetensors")
    digest = hashlib.sha256(open(wfile, "rb").read()).hexdigest()[:16]
    cache = os.path.join(work, f"latents-{digest}{f'-{subset}' if subset else ''}.safetensors")
    if os.path.exists(cache):
        d = load_file(cache)
        return d["latents"], d["labels"]
    x, y = load_split("train")
    if subset:
        x, y = x[:subset], y[:subset]
    t0 = time.time()
    with torch.no_grad():
        z = torch.cat([vq.encode(x[i:i + 500]).latents for i in range(0, len(x), 500)]) * vq.config.scaling_factor
    save_file({"latents": z.contiguous(), "labels": y}, cache + ".tmp")
    os.replace(cache + ".tmp", cache)
    print(f"encoded the training set in {time.time() - t0:.0f} s: latents mean {z.mean():.4f} std {z.std():.4f}",
          file=sys.stderr)
    return z, y


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
    state = dict(step=0, images=0, seconds=0.0, rng=None)
    vq_path = args.vq or os.path.join(ROOT, "vq", "vqvae")
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        unet.load_state_dict(ck["unet"]); emb.load_state_dict(ck["emb"])
        ema_unet.load_state_dict(ck["ema_unet"]); ema_emb.load_state_dict(ck["ema_emb"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        vq_path = ck.get("vq_path", vq_path) if not args.vq else args.vq
        print(f"resumed at step {state['step']} ({state['images']} images, {state['seconds']/60:.1f} min)", file=sys.stderr)
    else:
        if args.init_from:
            from safetensors.torch import load_file
            unet.load_state_dict(UNet2DConditionModel.from_pretrained(os.path.join(args.init_from, "unet")).state_dict())
            emb.load_state_dict(load_file(os.path.join(args.init_from, "class_embedder", "model.safetensors")))
            if not args.vq:
                vq_path = os.path.join(args.init_from, "vqvae")
            prev = os.path.join(args.init_from, "training.json")
            if os.path.exists(prev):
                with open(prev) as f:
                    t = json.load(f).get("denoiser", {})
                state.update(step=t.get("steps", 0), images=t.get("images", 0), seconds=t.get("minutes", 0) * 60)
            print(f"initialized from {args.init_from} (step {state['step']}; optimizer state starts fresh)", file=sys.stderr)
        ema_unet.load_state_dict(unet.state_dict()); ema_emb.load_state_dict(emb.state_dict())
        torch.manual_seed(args.seed)
    for p in ema_params:
        p.requires_grad_(False)
    if state["rng"] is not None:
        torch.set_rng_state(state["rng"])
    state["vq_path"] = vq_path
    vq = load_vq_folder(vq_path)
    z_all, y_all = train_latents(vq, work, vq_path, args.subset)
    acp = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    n = len(z_all)
    log = open(os.path.join(work, "train.log"), "a")
    log_line(log, f"ldm: unet {sum(p.numel() for p in unet.parameters())} + embedder "
                  f"{sum(p.numel() for p in emb.parameters())} parameters, batch {args.batch}, lr {args.lr}, "
                  f"vq {vq_path}, latents std {z_all.std():.4f}, threads {torch.get_num_threads()}")
    t_start = time.time()
    images_at_start = state["images"]
    last_ckpt = last_grid = t_start
    loss_ema = None
    perm_cache = {}

    def save():
        state["rng"] = torch.get_rng_state()
        atomic_save(dict(unet=unet.state_dict(), emb=emb.state_dict(), ema_unet=ema_unet.state_dict(),
                         ema_emb=ema_emb.state_dict(), opt=opt.state_dict(), state=state, vq_path=vq_path,
                         unet_config=UNET_CONFIG), ckpt_path)

    def grid():
        ema_unet.eval()
        labels = torch.arange(10).repeat_interleave(8)
        img = decode_latents(vq, sample_latents(ema_unet, ema_emb, labels))
        save_grid(img, os.path.join(work, f"grid-{state['step']:06d}.png"), nrow=10)

    unet.train()
    while time.time() - t_start < args.minutes * 60:
        step = state["step"]
        idx = epoch_batch(n, args.batch, args.seed, step, perm_cache)
        z0, y = z_all[idx], y_all[idx].clone()
        y[torch.rand(len(y)) < 0.1] = NULL_CLASS
        t = torch.randint(0, 1000, (len(y),))
        noise = torch.randn_like(z0)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        lr = lr_at(args.lr, step, args.total_steps, 500)
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
            el = now - t_start
            ips = (state["images"] - images_at_start) / max(el, 1e-9)
            log_line(log, f"step {state['step']}/{args.total_steps} epoch {state['images']/n:.2f} loss {loss_ema:.4f} "
                          f"lr {lr:.2e} {ips:.1f} img/s  wall {(state['seconds'] + now - last_ckpt)/60:.1f} min  "
                          f"session ETA {(args.minutes * 60 - el)/60:.1f} min")
        if now - last_ckpt > args.ckpt_minutes * 60:
            state["seconds"] += now - last_ckpt
            last_ckpt = now
            save()
        if now - last_grid > args.grid_minutes * 60:
            last_grid = now
            grid()
    state["seconds"] += time.time() - last_ckpt
    save()
    grid()
    log_line(log, f"stopped at step {state['step']} after {state['seconds']/60:.1f} min total")


# ----------------------------------------------------------------------------- export / evaluation

def cmd_export(args):
    from safetensors.torch import save_file
    work = args.work or os.path.join(ROOT, "ldm")
    ck = torch.load(os.path.join(work, "checkpoint.pt"))
    unet, emb = build_denoiser()
    unet.load_state_dict(ck["ema_unet"]); emb.load_state_dict(ck["ema_emb"])
    vq_path = args.vq or ck["vq_path"]
    vq = VQModel.from_pretrained(vq_path)
    out = args.out
    for sub in ("unet", "vqvae", "scheduler", "class_embedder"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    vq.save_pretrained(os.path.join(out, "vqvae"), safe_serialization=True)
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
                   "unet": ["diffusers", "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"],
                   "scheduler": ["diffusers", "DDIMScheduler"], "class_embedder": ["ptqd", "ClassEmbedder"]},
                  f, indent=2)
    vq_eval = {}
    ev = os.path.join(os.path.dirname(os.path.normpath(vq_path)), "vq-eval.json")
    prev = os.path.join(vq_path, "..", "training.json")
    if os.path.exists(ev):
        with open(ev) as f:
            vq_eval = json.load(f)
    elif os.path.exists(prev):  # the vqvae came from an earlier export: carry its record over
        with open(prev) as f:
            vq_eval = json.load(f).get("first_stage", {})
    st = ck["state"]
    sizes = {sub: sum(os.path.getsize(os.path.join(out, sub, fn)) for fn in os.listdir(os.path.join(out, sub))
                      if fn.endswith(".safetensors")) for sub in ("unet", "vqvae", "class_embedder")}
    rec = dict(
        first_stage=vq_eval,
        first_stage_recipe=dict(model="diffusers VQModel (VQ-f4)", config={k: v for k, v in VQ_CONFIG.items()},
                                loss="L1 + L2 + VectorQuantizer loss (legacy: commitment 1.0, codebook 0.25); "
                                     "from the GAN start step on, + hinge patch-GAN generator term x 0.5 x VQGAN's "
                                     "adaptive weight (PatchDiscriminator, Adam 2e-4 betas 0.5/0.9)",
                                optimizer="AdamW lr 1e-3, batch 64, 200-step warm-up, cosine to 10% over the planned "
                                          "steps of each run (see runs)",
                                runs=vq_eval.get("runs", [dict(start_step=0, total_steps=4000, gan_weight=0),
                                                          dict(start_step=1391, total_steps=2800, gan_weight=0.5,
                                                               disc_start=1391)]),
                                codebook="init from encoder outputs; dead codes re-seeded from the batch",
                                latents="exactly reparameterized to zero channel mean / unit std; scaling_factor 1.0"),
        denoiser=dict(steps=st["step"], images=st["images"], epochs=st["images"] / 60000, minutes=st["seconds"] / 60),
        denoiser_recipe=dict(unet=UNET_CONFIG, class_embedder=dict(num_classes=11, embed_dim=EMBED_DIM,
                                                                   null_class=NULL_CLASS),
                             label_dropout=0.1, latents="pre-quantization VQ encoder output x scaling_factor (LDM)",
                             loss="MSE on epsilon", optimizer="AdamW, 500-step warm-up, cosine to 10%, grad clip 1",
                             ema="decay min(0.9995, (1+s)/(10+s)), exported", scheduler=SCHEDULER_CONFIG),
        parameters=dict(unet=sum(p.numel() for p in unet.parameters()), vqvae=sum(p.numel() for p in vq.parameters()),
                        class_embedder=emb.embedding.weight.numel()),
        bytes_on_disk=dict(sizes, total=sum(sizes.values())),
        data="Fashion-MNIST train (Debian dataset-fashion-mnist), 28x28 padded to 32x32 with -1",
        script="tools/train_ldm.py",
    )
    if os.path.exists(os.path.join(out, "training.json")):
        with open(os.path.join(out, "training.json")) as f:
            old = json.load(f)
        if "fid" in old and old.get("denoiser", {}).get("steps") == st["step"]:
            rec["fid"] = old["fid"]
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(rec, f, indent=2)
    # diffusers must load the parts back
    UNet2DConditionModel.from_pretrained(os.path.join(out, "unet"))
    VQModel.from_pretrained(os.path.join(out, "vqvae"))
    DDIMScheduler.from_pretrained(os.path.join(out, "scheduler"))
    print(f"exported EMA weights (step {st['step']}) to {out}: {sizes} bytes", file=sys.stderr)


def cmd_fid(args):
    """FID (and label agreement of the feature net's classifier) of n samples against the test set."""
    from sample_ldm import load_pipeline, sample
    tj = os.path.join(args.model, "training.json")

    def exported_step():
        with open(tj) as f:
            return json.load(f)["denoiser"]["steps"]
    step_at_load = exported_step() if args.record else None
    unet, emb, vq, _ = load_pipeline(args.model)
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
        imgs.append(sample(unet, emb, vq, sched, labels[i:i + 500], noise[i:i + 500], args.guidance, args.eta, sn)[1])
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
    common.add_argument("--work", help="checkpoint/log folder (default /root/ptqd-train/{vq,ldm})")
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--seed", type=int, default=0)
    for name, minutes, total, batch, lr in (("vq", 40.0, 5000, 64, 1e-3), ("ldm", 150.0, 60000, 128, 5e-4)):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget for this run")
        p.add_argument("--total-steps", type=int, default=total, help="planned optimizer steps (LR schedule)")
        p.add_argument("--batch", type=int, default=batch)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--ckpt-minutes", type=float, default=5.0)
        p.add_argument("--grid-minutes", type=float, default=20.0)
        p.add_argument("--init-from", help="start a new run (no checkpoint in --work) from an exported folder")
        if name == "vq":
            p.add_argument("--reinit-every", type=int, default=200, help="dead-code window (steps)")
            p.add_argument("--gan-weight", type=float, default=0.5, help="patch-GAN weight (0 = off), VQGAN's "
                                                                         "adaptive weighting")
            p.add_argument("--disc-start", type=int, default=1400, help="step at which the GAN term starts")
            p.add_argument("--disc-lr", type=float, default=2e-4)
        else:
            p.add_argument("--vq", help="first-stage diffusers folder (default /root/ptqd-train/vq/vqvae)")
            p.add_argument("--ema", type=float, default=0.9995)
            p.add_argument("--subset", type=int, default=0, help="smoke tests: only the first N training images")
    sub.add_parser("vq-finalize", parents=[common])
    p = sub.add_parser("export", parents=[common])
    p.add_argument("--out", default="models/fmnist-ldm")
    p.add_argument("--vq", help="first-stage folder (default: the one the denoiser trained on)")
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
    {"vq": cmd_vq, "vq-finalize": cmd_vq_finalize, "ldm": cmd_ldm, "export": cmd_export, "fid": cmd_fid}[args.cmd](args)


if __name__ == "__main__":
    main()
