#!/usr/bin/env python3
"""Writes Tests/SafeTensorsTests/Fixtures/torch_fixture.safetensors with the official writer.

Run:  /opt/ptqd-venv/bin/python Tests/SafeTensorsTests/Fixtures/make_fixture.py
Needs torch + safetensors (tested with torch 1.13, safetensors 0.8.0). Output is < 4 KB and
deterministic. The exact stored values (read back from the tensors after dtype rounding, as
float64 / int) are recorded in __metadata__["expected"] as JSON:
    {name: {"dtype": "F16", "shape": [...], "values": [...]}}
so the Swift test (SafeTensorsFixtureTests) can compare without PyTorch.
"""
import json
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "torch_fixture.safetensors")

tensors = {
    "f32.matrix": torch.tensor([[1.5, -2.25, 3.0e-8], [1e30, -0.0, 0.1]], dtype=torch.float32),
    # 0.1 rounds to 0.0999755859375 in F16; 6e-8 becomes the smallest subnormal 2^-24.
    "f16.vector": torch.tensor([1.0, -2.5, 65504.0, 0.1, 6e-8], dtype=torch.float16),
    # 0.1 rounds to 0.10009765625 in BF16; 3.140625 is exact.
    "bf16.square": torch.tensor([[1.0, -2.5], [3.140625, 0.1]], dtype=torch.bfloat16),
    "i8.vector": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
    "u8.square": torch.tensor([[0, 1], [200, 255]], dtype=torch.uint8),
    "i32.vector": torch.tensor([-2147483648, 2147483647, 0, -7], dtype=torch.int32),
    "i64.vector": torch.tensor([-9223372036854775808, 9223372036854775807, 1 << 40], dtype=torch.int64),
    "f32.scalar": torch.tensor(42.5, dtype=torch.float32),
    "f32.empty": torch.zeros((0, 3), dtype=torch.float32),
}

DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
    torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64",
}

expected = {}
for name, t in tensors.items():
    if t.is_floating_point():
        values = [float(v) for v in t.to(torch.float64).flatten().tolist()]
    else:
        values = [int(v) for v in t.flatten().tolist()]
    expected[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "values": values}

metadata = {"format": "pt", "generator": "make_fixture.py", "expected": json.dumps(expected, sort_keys=True)}
save_file(tensors, OUT, metadata=metadata)
size = os.path.getsize(OUT)
assert size < 4096, size
print(f"wrote {OUT} ({size} bytes)")
print(json.dumps(expected, indent=1, sort_keys=True))
