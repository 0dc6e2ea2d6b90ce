"""The fused path when one process meets several shapes (README "Performance"): KANs of
different widths in turn, as a sweep or a model with unequal widths does, then the first
again at another batch size. fwd+bwd median ms at batch 1024, G = 5, one thread, fused and
eager dense side by side.

    PYTHONPATH=<checkout> OMP_NUM_THREADS=1 python docs/results/fused_shapes.py
"""
import statistics, time

import torch

from kan_lightning.nn import KAN

torch.set_num_threads(1)


def median_ms(step, repeats=20):
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


print("| KAN (in this order) | batch | fused | dense |")
print("|---|---:|---:|---:|")
for widths, batch in (([64, 64, 64], 1024), ([256, 256], 1024), ([128, 128], 1024), ([64, 128, 64], 1024),
                      ([64, 64, 64], 1000)):
    times = []
    for contraction in ("fused", "dense"):
        torch.manual_seed(0)
        model = KAN(widths, grid_size=5, contraction=contraction)
        x = (torch.rand(batch, widths[0]) * 2 - 1).requires_grad_(True)

        def step():
            for t in [*model.parameters(), x]:
                t.grad = None
            model(x).sum().backward()

        times.append(median_ms(step))
    print(f"| {widths} | {batch} | {times[0]:.2f} | {times[1]:.2f} |")
