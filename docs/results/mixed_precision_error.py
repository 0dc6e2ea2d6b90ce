"""Error of one KANLayer(64, 64) (batch 1024) in float32, under bf16 / fp16 autocast and in
bf16-true, relative to the output's scale, against the same layer in float64 (README "Mixed
precision").

    PYTHONPATH=<checkout> python docs/results/mixed_precision_error.py
"""
import copy

import torch

from kan_lightning.nn import KANLayer

torch.manual_seed(0)
for grid_size in (5, 50):
    exact = KANLayer(64, 64, grid_size=grid_size).double()
    with torch.no_grad():
        exact.spline_weight.normal_(0, 0.3)
    x = torch.rand(1024, 64, dtype=torch.float64) * 2 - 1
    y = exact(x)

    def error(out):
        return ((out.double() - y).abs().max() / y.abs().max()).item()

    single = copy.deepcopy(exact).float()
    errors = {"float32": error(single(x.float()))}
    for name, dtype in (("bf16 autocast", torch.bfloat16), ("fp16 autocast", torch.float16)):
        with torch.autocast("cpu", dtype=dtype):
            errors[name] = error(single(x.float()))
    errors["bf16-true"] = error(copy.deepcopy(exact).to(torch.bfloat16)(x.to(torch.bfloat16)))
    print(f"G = {grid_size}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
