"""Fixed costs of the fused path (README "Performance"): the compiled basis loop alone, and
forward + backward of KAN [64, 64, 64] at G = 5 with 8 inputs (almost no arithmetic) and 1024.
One thread, median of 200 (the loop) and 50 (the network).

    PYTHONPATH=<checkout> OMP_NUM_THREADS=1 python docs/results/fused_costs.py
"""
import statistics, time

import torch

from kan_lightning.nn import KAN, bases, fused
from kan_lightning.nn.splines import uniform_grid

torch.set_num_threads(1)


def median_us(fn, repeats):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


grid = uniform_grid(64, 5, 3, (-1, 1)).contiguous()
x = torch.rand(1024, 64) * 2 - 1
tables = bases._grid_tables(grid, 3, True)
loop = median_us(lambda: fused._run("local_slopes", fused._local_slopes, x, grid, tables, 3, True), 200)
print(f"basis loop with derivatives, [64] inputs, G = 5, 1024 rows: {loop:.0f} us")
for n in (8, 1024):
    model = KAN([64, 64, 64], grid_size=5, contraction="fused")
    inputs = (torch.rand(n, 64) * 2 - 1).requires_grad_(True)

    def step():
        for t in [*model.parameters(), inputs]:
            t.grad = None
        model(inputs).sum().backward()

    print(f"KAN [64, 64, 64] G = 5, fwd+bwd, {n} inputs: {median_us(step, 50) / 1e3:.2f} ms")
