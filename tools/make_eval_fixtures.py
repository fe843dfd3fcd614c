#!/usr/bin/env python3
"""Writes the small fixtures the Swift Evaluation tests check against (Tests/EvaluationTests/Fixtures/).

- feature_net.safetensors: 8 fixed inputs [8,1,32,32] (4 Fashion-MNIST test images, 4 uniform
  noise images in [-1,1]) and PyTorch's features [8,128] / logits [8,10] from
  models/fmnist-features (the exported, BN-folded network run with torch.nn.functional).
- metrics.safetensors + metrics.json: inputs and numpy/scipy/skimage answers for
    FID (two correlated 300x16 feature sets, scipy.linalg.sqrtm),
    IS (500x10 logits, 10 splits),
    precision/recall (k = 3; 120x6 real vs 100x6 generated, brute-force float64 squared distances),
    PSNR / SSIM (skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1) on images clamped to [-1,1] mapped to [0,1];
    cross-checked with an independent numpy/scipy.ndimage implementation).
- gzip_*.gz + gzip_*.bin: tiny gzip files with stored, fixed-Huffman and dynamic-Huffman blocks
  and their decompressed bytes.

Usage: /opt/ptqd-venv/bin/python tools/make_eval_fixtures.py
"""
import gzip
import json
import os
import sys
import zlib

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_features import folded_forward, load_split  # noqa: E402

OUT = "Tests/EvaluationTests/Fixtures"
MODEL = "models/fmnist-features"


def feature_net_fixture():
    sd = load_file(f"{MODEL}/model.safetensors")
    xte, _ = load_split("test")
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.uniform(-1, 1, size=(4, 1, 32, 32)).astype(np.float32))
    x = torch.cat([xte[:4], noise]).contiguous()
    with torch.no_grad():
        f, l = folded_forward(sd, x)
    save_np({"inputs": x.numpy(), "features": f.numpy().copy(), "logits": l.numpy().copy()},
            f"{OUT}/feature_net.safetensors", metadata={"source": "tools/make_eval_fixtures.py", "layout": "NCHW"})
    print("feature net fixture: features |max|", float(f.abs().max()), "logits |max|", float(l.abs().max()))


# ----------------------------------------------------------------------------- reference metrics

def fid(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def inception_score(logits, splits=10):
    x = logits.astype(np.float64)
    x = x - x.max(1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(1, keepdims=True)
    n = p.shape[0]
    scores = []
    for k in range(splits):
        part = p[k * n // splits:(k + 1) * n // splits]
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part) - np.log(py))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def sqdist(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def precision_recall(real, fake, k=3):
    def radii(x):
        d = sqdist(x, x)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    rr, rf = radii(real), radii(fake)
    precision = (sqdist(fake, real) <= rr[None, :]).any(1).mean()
    recall = (sqdist(real, fake) <= rf[None, :]).any(1).mean()
    return float(precision), float(recall)


def to_unit(x):
    return (np.clip(x.astype(np.float64), -1, 1) + 1) / 2


def psnr(a, b):
    mse = ((to_unit(a) - to_unit(b)) ** 2).reshape(a.shape[0], -1).mean(1)
    with np.errstate(divide="ignore"):
        return [float(v) for v in 10 * np.log10(1 / mse)]


def ssim_numpy(x, y):
    """Independent implementation: Gaussian filter (sigma 1.5, truncate 3.5), crop 5 px, mean."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    f = lambda z: scipy.ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")
    ux, uy = f(x), f(y)
    vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def ssim(a, b):
    """Per image (NHWC); channels averaged."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        structural_similarity = None
    out, source = [], "numpy"
    for i in range(a.shape[0]):
        x, y = to_unit(a[i]), to_unit(b[i])
        per_ch = []
        for c in range(x.shape[-1]):
            mine = ssim_numpy(x[..., c], y[..., c])
            if structural_similarity is not None:
                ref = structural_similarity(x[..., c], y[..., c], gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1)
                assert abs(ref - mine) < 1e-12, (ref, mine)
                source = "skimage"
                per_ch.append(float(ref))
            else:
                per_ch.append(mine)
        out.append(float(np.mean(per_ch)))
    return out, source


def metrics_fixture():
    rng = np.random.default_rng(2024)
    d = 16
    # Two correlated Gaussian feature sets with different means and covariances.
    base = rng.normal(size=(d, d))
    l1 = base + 0.3 * rng.normal(size=(d, d))
    l2 = base + 0.3 * rng.normal(size=(d, d))
    fid_a = (rng.normal(size=(300, d)) @ l1 + 0.2 * rng.normal(size=d)).astype(np.float32)
    fid_b = (rng.normal(size=(300, d)) @ l2 + 0.2 * rng.normal(size=d)).astype(np.float32)
    fid_value = fid(fid_a, fid_b)

    is_logits = (3.0 * rng.normal(size=(500, 10)) + np.eye(10)[rng.integers(0, 10, 500)] * 4).astype(np.float32)
    is_mean, is_std = inception_score(is_logits)

    pr_real = rng.normal(size=(120, 6)).astype(np.float32)
    pr_fake = (0.8 * rng.normal(size=(100, 6)) + 0.5).astype(np.float32)
    prec, rec = precision_recall(pr_real, pr_fake)

    # Images in [-1.2, 1.2] (clamping matters), NHWC; pair 0 identical.
    img_a = np.clip(rng.normal(scale=0.6, size=(5, 32, 32, 1)), -1.2, 1.2).astype(np.float32)
    img_a[:, 8:24, 8:24, 0] += 0.5
    img_b = (img_a + rng.normal(scale=0.15, size=img_a.shape)).astype(np.float32)
    img_b[0] = img_a[0]
    img_b[1] = (img_a[1] * 0.7).astype(np.float32)
    rgb_a = rng.uniform(-1, 1, size=(2, 16, 20, 3)).astype(np.float32)
    rgb_b = np.clip(rgb_a + rng.normal(scale=0.2, size=rgb_a.shape), -1, 1).astype(np.float32)
    ssim_gray, source = ssim(img_a, img_b)
    ssim_rgb, _ = ssim(rgb_a, rgb_b)

    save_np({"fid_a": fid_a, "fid_b": fid_b, "is_logits": is_logits, "pr_real": pr_real, "pr_fake": pr_fake,
             "img_a": img_a, "img_b": img_b, "rgb_a": rgb_a, "rgb_b": rgb_b},
            f"{OUT}/metrics.safetensors", metadata={"source": "tools/make_eval_fixtures.py", "layout": "NHWC"})
    expected = {
        "fid": fid_value,
        "fid_a_self": fid(fid_a, fid_a),
        "is_mean": is_mean, "is_std": is_std, "is_splits": 10,
        "precision": prec, "recall": rec, "k": 3,
        "psnr": [v if np.isfinite(v) else "inf" for v in psnr(img_a, img_b)],
        "psnr_rgb": psnr(rgb_a, rgb_b),
        "ssim": ssim_gray, "ssim_rgb": ssim_rgb, "ssim_source": source,
        "tools": {"numpy": np.__version__, "scipy": scipy.__version__},
    }
    with open(f"{OUT}/metrics.json", "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    print("metrics:", json.dumps({k: v for k, v in expected.items() if k != "tools"}))


def gzip_fixtures():
    """Tiny gzip members exercising each DEFLATE block type, plus their contents."""
    rng = np.random.default_rng(7)
    words = [b"coat", b"shirt", b"sneaker", b"bag", b"trouser", b"dress", b"sandal", b"boot"]
    dynamic = b" ".join(words[i] for i in rng.integers(0, len(words), 3000))
    cases = {
        "stored": (bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), 0, None),
        "fixed": (b"hello hello hello fashion mnist", 9, zlib.Z_FIXED),
        "dynamic": (dynamic, 9, None),
    }
    for name, (data, level, strategy) in cases.items():
        if strategy is None:
            gz = gzip.compress(data, compresslevel=level, mtime=0)
        else:
            co = zlib.compressobj(level, zlib.DEFLATED, 31, 9, strategy)
            gz = co.compress(data) + co.flush()
        btype = (gz[10] >> 1) & 3
        assert btype == {"stored": 0, "fixed": 1, "dynamic": 2}[name], (name, btype)
        assert gzip.decompress(gz) == data
        with open(f"{OUT}/gzip_{name}.gz", "wb") as f:
            f.write(gz)
        with open(f"{OUT}/gzip_{name}.bin", "wb") as f:
            f.write(data)
        print(f"gzip {name}: {len(data)} -> {len(gz)} bytes, first block type {btype}")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    gzip_fixtures()
    metrics_fixture()
    if os.path.exists(f"{MODEL}/model.safetensors"):
        feature_net_fixture()
    else:
        print(f"{MODEL}/model.safetensors not found: run tools/train_features.py first; skipped the feature net fixture")
