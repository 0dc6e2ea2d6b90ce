"""The fused contraction of two checkouts side by side (README "Performance": the fused path).

Imports ``kan_lightning/nn/fused.py`` of checkout A as a module of its own beside the installed
one (B; both use B's bases), checks that both give bitwise-equal outputs and gradients on the same inputs, and times
forward + backward (``(y * y).sum()``) and the no-grad forward, alternating A and B, median of
21, one thread, batch 1024, k = 3, in float32 and float64, on uniform and adapted grids.

    git worktree add /tmp/before <commit>
    OMP_NUM_THREADS=1 python docs/results/fused_ab.py /tmp/before
"""
import importlib.util, statistics, sys, time
from pathlib import Path

import torch

from kan_lightning.nn import fused as fused_b

# A's module inside the installed package, so that its relative imports find B's bases
spec = importlib.util.spec_from_file_location("kan_lightning.nn.fused_a", Path(sys.argv[1]) / "kan_lightning/nn/fused.py")
fused_a = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fused_a)
torch.set_num_threads(1)


def apply(mod, x, grid, coef, uniform):
    args = (x, grid, coef, 3, uniform)
    # (a checkout before the grad_enabled argument takes five)
    n_args = mod.FusedSplineContraction.forward.__code__.co_argcount - 1
    return mod.FusedSplineContraction.apply(*args, *([torch.is_grad_enabled()] if n_args > 5 else []))


def timed(fn_a, fn_b, repeats=21):
    times = ([], [])
    for _ in range(3):
        fn_a(), fn_b()
    for r in range(repeats):
        for i in ((0, 1) if r % 2 else (1, 0)):
            start = time.perf_counter()
            (fn_a, fn_b)[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


for dtype in (torch.float32, torch.float64):
    for inputs, outputs, G, uniform in [(64, 64, 5, True), (256, 256, 5, True), (64, 64, 10, True),
                                        (2, 5, 5, True), (5, 5, 5, False)]:
        torch.manual_seed(0)
        x = (torch.rand(1024, inputs, dtype=dtype) * 2 - 1).requires_grad_(True)
        grid = torch.linspace(-1 - 6 / G, 1 + 6 / G, G + 7, dtype=dtype).repeat(inputs, 1)
        if not uniform:  # knots moved apart by up to 0.3 of an interval, still increasing
            grid = grid + 0.6 / G * torch.rand(inputs, 1, dtype=dtype) * torch.linspace(0, 1, G + 7, dtype=dtype) ** 2
        coef = torch.randn(outputs, inputs, G + 3, dtype=dtype, requires_grad=True)

        def train_step(mod):
            x.grad = coef.grad = None
            (apply(mod, x, grid, coef, uniform) ** 2).sum().backward()
            return x.grad.clone(), coef.grad.clone()

        def forward(mod):
            with torch.no_grad():
                return apply(mod, x, grid, coef, uniform)

        same = all(torch.equal(a, b) for a, b in zip(train_step(fused_a), train_step(fused_b)))
        same = same and torch.equal(forward(fused_a), forward(fused_b))
        step = timed(lambda: train_step(fused_a), lambda: train_step(fused_b))
        fwd = timed(lambda: forward(fused_a), lambda: forward(fused_b))
        print(f"[{inputs}, {outputs}] G={G} {'uniform' if uniform else 'adapted'} {str(dtype)[6:]}: "
              f"fwd+bwd {step[0]:.2f} -> {step[1]:.2f} ms ({step[1] / step[0]:.2f}x), no-grad fwd "
              f"{fwd[0]:.2f} -> {fwd[1]:.2f} ms ({fwd[1] / fwd[0]:.2f}x), bitwise equal: {same}", flush=True)
