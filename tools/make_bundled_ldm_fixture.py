#!/usr/bin/env python3
"""Conformance cases for the bundled latent model (models/fmnist-ldm), sampled the diffusers way.

Runs tools/sample_ldm.py twice on the committed pipeline folder (setting A's sampler: DDIM 20 steps, eta 0,
guidance 3, four labels; and DDIM 20 steps, eta 1, guidance 1.5 with its per-step noise, two labels) and stores
both in Tests/DiffusionTests/Fixtures/ldm_bundled_fmnist/cases.safetensors in LatentConformanceTests' layout:

  <prefix>.class_labels [n], <prefix>.noise [n, C, h, w], <prefix>.timesteps [steps], <prefix>.latents [n, C, h, w],
  <prefix>.samples [n, 1, 32, 32] (decoded, before clamping), ddim_eta1.variance_noise [steps, n, C, h, w]
  prefixes: ddim (eta 0, guidance 3), ddim_eta1 (eta 1, guidance 1.5)

plus cases.json (settings and the model's weight digests, so a stale fixture is detected). Re-run after every
re-export of models/fmnist-ldm:   .venv-tools/bin/python tools/make_bundled_ldm_fixture.py
"""
import argparse, hashlib, json, os, subprocess, sys, tempfile

import safetensors.torch  # noqa: F401  (before diffusers, as everywhere in tools/)
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [
    # prefix, labels, steps, eta, guidance, seed
    ("ddim", "0,3,7,9", 20, 0.0, 3.0, 11),
    ("ddim_eta1", "2,5", 20, 1.0, 1.5, 12),
]


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/fmnist-ldm")
    ap.add_argument("--out", default="Tests/DiffusionTests/Fixtures/ldm_bundled_fmnist")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tensors, settings = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for prefix, labels, steps, eta, guidance, seed in CASES:
            path = os.path.join(tmp, prefix + ".safetensors")
            subprocess.run([sys.executable, os.path.join(HERE, "sample_ldm.py"), "--model", args.model, "--labels", labels,
                            "--steps", str(steps), "--eta", str(eta), "--guidance", str(guidance), "--seed", str(seed),
                            "--out", path], check=True)
            t = load_file(path)
            tensors[prefix + ".class_labels"] = t["labels"].float()  # the fixtures' layout: every tensor float32
            for k in ("noise", "timesteps", "latents", "samples"):
                tensors[f"{prefix}.{k}"] = t[k].float().contiguous()
            if eta > 0:
                tensors[prefix + ".variance_noise"] = t["step_noise"].float().contiguous()
            settings.append(dict(prefix=prefix, labels=[int(x) for x in labels.split(",")], steps=steps, eta=eta,
                                 guidance=guidance, seed=seed))
    weights = {}
    for sub in sorted(os.listdir(args.model)):
        d = os.path.join(args.model, sub)
        if os.path.isdir(d):
            for f in sorted(os.listdir(d)):
                if f.endswith(".safetensors"):
                    weights[f"{sub}/{f}"] = digest(os.path.join(d, f))
    tmp_out = os.path.join(args.out, "cases.safetensors.tmp")
    save_file(tensors, tmp_out)
    os.chmod(tmp_out, 0o644)
    os.replace(tmp_out, os.path.join(args.out, "cases.safetensors"))
    with open(os.path.join(args.out, "cases.json.tmp"), "w") as f:
        json.dump(dict(fixture="ldm_bundled_fmnist", model=args.model, weights_sha256_16=weights, cases=settings,
                       tool="tools/make_bundled_ldm_fixture.py (tools/sample_ldm.py, diffusers 0.27.2)"), f, indent=2)
        f.write("\n")
    os.replace(os.path.join(args.out, "cases.json.tmp"), os.path.join(args.out, "cases.json"))
    print(f"wrote {args.out}/cases.safetensors ({os.path.getsize(os.path.join(args.out, 'cases.safetensors'))} bytes)")


if __name__ == "__main__":
    main()
