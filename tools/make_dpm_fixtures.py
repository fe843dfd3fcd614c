#!/usr/bin/env python3
"""DPM-Solver++ conformance fixtures: diffusers 0.27.2 DPMSolverMultistepScheduler trajectories with guidance.

Reference tool only. For fixture models of Tests/DiffusionTests/Fixtures (written by make_fixtures.py) it runs
the sampler the diffusers way (the network in float64 as make_fixtures.py does; the scheduler step itself
upcasts/downcasts to float32 exactly as diffusers does) and writes FIXTURE/dpm_cases.safetensors:

  <case>.noise      [N, C, H, W] x_T
  <case>.timesteps  [steps] (float)
  <case>.sigmas     [steps + 1] the scheduler's sigma table
  <case>.samples    [N, C, H, W] the final sample
  <case>.class_labels [N] (class-conditional models)
and metadata "<case>.scheduler_config" = the DPMSolverMultistepScheduler config JSON (as diffusers saves it,
`-Infinity` included) and "<case>.guidance". Run: .venv-tools/bin/python tools/make_dpm_fixtures.py
"""
import json, os, sys

import safetensors.torch  # noqa: F401
from safetensors.torch import save_file
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import MODELS, OUT_DIR, make_reference, class_tensor  # noqa: E402

GUIDANCE = 3.0
# (case, steps, scheduler overrides)
CASES = [
    ("dpm10", 10, {}),
    ("dpm20", 20, {}),
    ("dpm20_karras", 20, dict(use_karras_sigmas=True)),
    ("dpm10_heun_trailing_sigmamin", 10, dict(solver_type="heun", timestep_spacing="trailing", final_sigmas_type="sigma_min")),
    ("dpm20_lu_linspace_nolof", 20, dict(use_lu_lambdas=True, timestep_spacing="linspace", lower_order_final=False)),
]
FIXTURES = ["cond_attn_28", "vpred_tscls_20", "uncond_plain_16"]


def guided(model, x, t, spec, labels):
    if spec["null_class"] is None:
        return model(x, t).sample
    n = x.shape[0]
    cl = class_tensor([spec["null_class"]] * n + list(labels), spec, torch.float64)
    out = model(torch.cat([x, x], dim=0), t, cl).sample
    return out[:n] + GUIDANCE * (out[n:] - out[:n])


def main():
    specs = {s["name"]: s for s in MODELS}
    for name in FIXTURES:
        spec = specs[name]
        mdir = os.path.join(OUT_DIR, name)
        model = UNet2DModel.from_pretrained(os.path.join(mdir, "unet"))
        ref = make_reference(model)
        base = DDIMScheduler.load_config(os.path.join(mdir, "scheduler"))
        tensors, meta = {}, {}
        size = spec["unet"]["sample_size"]
        ch = spec["unet"]["in_channels"]
        for k, (case, steps, over) in enumerate(CASES):
            sched = DPMSolverMultistepScheduler.from_config(base, **over)
            sched.set_timesteps(steps)
            g = torch.Generator().manual_seed(4242 + k)
            n = 2
            x = torch.randn((n, ch, size, size), generator=g, dtype=torch.float64)
            labels = spec.get("sampler_class_labels") if spec["null_class"] is not None else None
            if len(set(sched.timesteps.tolist())) < len(sched.timesteps):
                # Karras/Lu sigmas on a cosine schedule round to duplicate timesteps; diffusers 0.27.2 then starts
                # its step index at the second occurrence and indexes past its sigma table. No reference exists.
                print(name, case, "skipped: duplicate timesteps", [int(t) for t in sched.timesteps], file=sys.stderr)
                continue
            tensors[f"{case}.noise"] = x.float().contiguous()
            for t in sched.timesteps:
                with torch.no_grad():
                    eps = guided(ref, x, t, spec, labels)
                x = sched.step(eps, t, x).prev_sample
            tensors[f"{case}.timesteps"] = sched.timesteps.to(torch.float32)
            tensors[f"{case}.sigmas"] = sched.sigmas.to(torch.float32)
            tensors[f"{case}.samples"] = x.float().contiguous()
            if labels is not None:
                tensors[f"{case}.class_labels"] = torch.tensor(labels, dtype=torch.float32)
            meta[f"{case}.scheduler_config"] = sched.to_json_string()
            meta[f"{case}.guidance"] = str(GUIDANCE if spec["null_class"] is not None else 1.0)
            print(name, case, [int(t) for t in sched.timesteps], file=sys.stderr)
        meta["cases"] = ",".join(c for c, _, _ in CASES if f"{c}.samples" in tensors)
        save_file(tensors, os.path.join(mdir, "dpm_cases.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
