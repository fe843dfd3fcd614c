#!/usr/bin/env python3
"""Train the bundled class-conditional DDPM on Fashion-MNIST (CPU, resumable).

Reference tool only: never needed at run time. Uses Debian's python3-torch and diffusers==0.27.2
(see tools/setup_venv.sh). Data: Debian's dataset-fashion-mnist (IDX files).

Model: diffusers UNet2DModel, 1x32x32 (28x28 padded with background), 11 class embeddings
(10 classes + null class 10 for classifier-free guidance, 10% label dropout), 1000 linear-beta
steps (1e-4 .. 0.02), epsilon prediction. EMA of the weights is what gets exported.

Usage:
  tools/train_ddpm.py --work /tmp/ddpm-train --minutes 90          # trains, resumes if a checkpoint exists
  tools/train_ddpm.py --work /tmp/ddpm-train --export models/fmnist-ddpm   # writes the diffusers folder
Progress (step, loss, img/s, ETA) goes to stderr; checkpoints every --ckpt-minutes; a sample grid
(DDIM 20 steps, guidance 3, one row per class) is written to WORK/grid-<step>.png.
"""
import argparse, gzip, json, math, os, sys, time

import safetensors.torch  # noqa: F401  (diffusers 0.27 uses it without importing it)

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_attention import install_fast_attention  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"

UNET_CONFIG = dict(
    sample_size=32, in_channels=1, out_channels=1,
    block_out_channels=(32, 64, 128), layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=16, attention_head_dim=32, num_class_embeds=11,
)
NULL_CLASS = 10

SCHEDULER_CONFIG = dict(  # the latent-diffusion convention PTQD used
    num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="leading",
)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(f"{DATA}/{prefix}-images-idx3-ubyte.gz")
    y = read_idx(f"{DATA}/{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # background is black = -1
    return x, torch.from_numpy(y.astype(np.int64))


def save_grid(images, path, nrow):
    """images: [N,1,H,W] in [-1,1] -> 8-bit grayscale PNG (no extra deps: zlib + struct)."""
    import struct, zlib
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()[:, 0]
    n, h, w = x.shape
    ncol = math.ceil(n / nrow)
    canvas = np.zeros((nrow * (h + 2), ncol * (w + 2)), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = x[i]
    raw = b"".join(b"\x00" + canvas[r].tobytes() for r in range(canvas.shape[0]))
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", canvas.shape[1], canvas.shape[0], 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path + ".tmp", "wb") as f:
        f.write(png)
    os.replace(path + ".tmp", path)


@torch.no_grad()
def sample_grid(model, per_class=8, steps=20, guidance=3.0, seed=0):
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(per_class)
    x = torch.randn(len(labels), 1, 32, 32, generator=g)
    null = torch.full_like(labels, NULL_CLASS)
    for t in sched.timesteps:
        eps = model(torch.cat([x, x]), t, class_labels=torch.cat([null, labels])).sample
        eu, ec = eps.chunk(2)
        x = sched.step(eu + guidance * (ec - eu), t, x).prev_sample
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="checkpoint/log folder")
    ap.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget for this run")
    ap.add_argument("--total-steps", type=int, default=12000, help="planned optimizer steps (LR schedule)")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--grid-minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", help="write the EMA model as a diffusers folder here and exit")
    ap.add_argument("--init-from", help="start a new run (no checkpoint in --work) from an exported diffusers folder: "
                                        "its weights initialize both the model and the EMA (optimizer state starts fresh)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    ckpt_path = os.path.join(args.work, "checkpoint.pt")

    model = UNet2DModel(**UNET_CONFIG)
    ema = UNet2DModel(**UNET_CONFIG)
    install_fast_attention(model)
    install_fast_attention(ema)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    state = dict(step=0, images=0, seconds=0.0, rng=None)
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"]); ema.load_state_dict(ck["ema"]); opt.load_state_dict(ck["opt"])
        state = ck["state"]
        print(f"resumed at step {state['step']} ({state['images']} images, {state['seconds']/60:.1f} min)", file=sys.stderr)
    else:
        if args.init_from:
            src = UNet2DModel.from_pretrained(os.path.join(args.init_from, "unet"))
            model.load_state_dict(src.state_dict())
            prev = os.path.join(args.init_from, "training.json")
            if os.path.exists(prev):
                with open(prev) as f:
                    t = json.load(f)
                state.update(step=t.get("steps", 0), images=t.get("images", 0), seconds=t.get("minutes", 0) * 60)
            print(f"initialized from {args.init_from} (step {state['step']})", file=sys.stderr)
        ema.load_state_dict(model.state_dict())
        torch.manual_seed(args.seed)
    ema.requires_grad_(False)

    if args.export:
        export(ema, args.export, state)
        return

    if state["rng"] is not None:
        torch.set_rng_state(state["rng"])
    x_all, y_all = load_split("train")
    acp = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    n = len(x_all)
    t_start = time.time()
    images_at_start = state["images"]
    last_ckpt = last_grid = t_start
    loss_ema = None
    log = open(os.path.join(args.work, "train.log"), "a")
    steps_per_epoch = n // args.batch
    perm_epoch, perm = None, None

    def save():
        state["rng"] = torch.get_rng_state()
        torch.save(dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), state=state), ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    model.train()
    while time.time() - t_start < args.minutes * 60:
        step = state["step"]
        epoch = step // steps_per_epoch
        if perm_epoch != epoch:  # the epoch's order depends only on (seed, epoch): resumable
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
            perm_epoch = epoch
        idx = perm[(step % steps_per_epoch) * args.batch:(step % steps_per_epoch + 1) * args.batch]
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(len(y)) < 0.1] = NULL_CLASS
        t = torch.randint(0, 1000, (len(y),))
        noise = torch.randn_like(x0)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # LR: 500-step warm-up, cosine decay to 10% over --total-steps
        warm = min(1.0, (step + 1) / 500)
        prog = min(1.0, step / args.total_steps)
        lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        loss = F.mse_loss(model(xt, t, class_labels=y).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # EMA with warm-up suited to a short run: decay = min(0.9995, (1+s)/(10+s))
        decay = min(0.9995, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        state["step"] += 1
        state["images"] += len(y)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        now = time.time()
        if state["step"] % 50 == 0:
            el = now - t_start
            ips = (state["images"] - images_at_start) / max(el, 1e-9)
            remaining = args.minutes * 60 - el
            msg = (f"step {state['step']}/{args.total_steps} epoch {state['images']/n:.2f} loss {loss_ema:.4f} "
                   f"lr {lr:.2e} {ips:.1f} img/s  session ETA {remaining/60:.1f} min")
            print(msg, file=sys.stderr, flush=True)
            print(msg, file=log, flush=True)
        if now - last_ckpt > args.ckpt_minutes * 60:
            state["seconds"] += now - last_ckpt
            last_ckpt = now
            save()
        if now - last_grid > args.grid_minutes * 60:
            last_grid = now
            ema.eval()
            save_grid(sample_grid(ema), os.path.join(args.work, f"grid-{state['step']:06d}.png"), nrow=10)
    state["seconds"] += time.time() - last_ckpt
    save()
    ema.eval()
    save_grid(sample_grid(ema), os.path.join(args.work, f"grid-{state['step']:06d}.png"), nrow=10)
    print(f"stopped at step {state['step']} after {state['seconds']/60:.1f} min total", file=sys.stderr)


def export(ema, out, state):
    from safetensors.torch import save_file
    os.makedirs(os.path.join(out, "unet"), exist_ok=True)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    ema.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(dict(steps=state["step"], images=state["images"], epochs=state["images"] / 60000,
                       minutes=state["seconds"] / 60, null_class=NULL_CLASS, label_dropout=0.1,
                       data="Fashion-MNIST train (Debian dataset-fashion-mnist), 28x28 padded to 32x32 with -1",
                       script="tools/train_ddpm.py"), f, indent=2)
    print(f"exported EMA weights (step {state['step']}) to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
