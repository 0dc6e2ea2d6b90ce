"""Where the time of the fused path goes (README "Performance").

1. Fixed costs: the compiled basis loop alone, and forward + backward of KAN [64, 64, 64] at
   G = 5 with 8 inputs (almost no arithmetic) and 1024.
2. One layer at batch 1024, G = 5, in parts: the three products at the layer's shapes (the
   spline columns and the base branch's), the three compiled loops (bases, expansion, dL/dx),
   the rest of the layer's forward + backward, against the floor's three products (spline
   columns only). "products + bases" is what no layout of the expansion and dL/dx loops can
   go below while they stay apart from the products.

One thread, medians.

    PYTHONPATH=<checkout> OMP_NUM_THREADS=1 python docs/results/fused_costs.py
"""
import statistics, time

import torch

from kan_lightning.nn import KAN, KANLayer, bases, fused
from kan_lightning.nn.splines import uniform_grid

torch.set_num_threads(1)
ORDER, GRID, BATCH = 3, 5, 1024


def median_us(fn, repeats):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def products_us(n_in, n_out, columns):
    """forward, dL/d(basis) and dL/d(coef) products of a (BATCH, n_in * columns) basis."""
    basis, coef_t = torch.rand(BATCH, n_in * columns), torch.rand(n_out, n_in * columns)
    grad = torch.rand(BATCH, n_out)
    return median_us(lambda: (basis @ coef_t.T, grad @ coef_t, grad.T @ basis), 50)


def layer_parts(width):
    n_bases = GRID + ORDER
    grid = uniform_grid(width, GRID, ORDER, (-1, 1)).contiguous()
    x = torch.rand(BATCH, width) * 2 - 1
    tables = bases._grid_tables(grid, ORDER, True)
    args = (x, grid, tables, ORDER, True)
    values, derivs, j, scale, act, act_slope = fused._run("local_slopes_base", fused._local_slopes_base, 1, *args)
    dots = torch.rand(BATCH, (n_bases + 1) * width)
    parts = {
        "bases": median_us(lambda: fused._run("local_slopes_base", fused._local_slopes_base, 1, *args), 100),
        "expansion": median_us(lambda: fused._run("expand_base", fused._expand_base, 3, values, j, act, ORDER, n_bases), 100),
        "dL/dx": median_us(lambda: fused._run("grad_x_base", fused._grad_x_base, 4, derivs, j, dots, act_slope, ORDER,
                                              n_bases, scale), 100),
        "products": products_us(width, width, n_bases + 1),
    }
    layer = KANLayer(width, width, grid_size=GRID, spline_order=ORDER, contraction="fused")
    inputs = x.clone().requires_grad_(True)

    def step():
        for t in [*layer.parameters(), inputs]:
            t.grad = None
        layer(inputs).sum().backward()

    whole = median_us(step, 50)
    parts["rest"] = whole - sum(parts.values())
    return whole, parts, products_us(width, width, n_bases)


grid = uniform_grid(64, GRID, ORDER, (-1, 1)).contiguous()
x = torch.rand(BATCH, 64) * 2 - 1
tables = bases._grid_tables(grid, ORDER, True)
loop = median_us(lambda: fused._run("local_slopes", fused._local_slopes, 1, x, grid, tables, ORDER, True), 200)
print(f"basis loop with derivatives, [64] inputs, G = 5, 1024 rows: {loop:.0f} us")
for n in (8, BATCH):
    model = KAN([64, 64, 64], grid_size=GRID, contraction="fused")
    inputs = (torch.rand(n, 64) * 2 - 1).requires_grad_(True)

    def step():
        for t in [*model.parameters(), inputs]:
            t.grad = None
        model(inputs).sum().backward()

    print(f"KAN [64, 64, 64] G = 5, fwd+bwd, {n} inputs: {median_us(step, 50) / 1e3:.2f} ms")

print("\n| layer | floor | layer | products | bases | expansion | dL/dx | rest | products + bases | layer / floor |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for width in (64, 256):
    whole, parts, floor = layer_parts(width)
    bound = parts["products"] + parts["bases"]
    cells = " | ".join(f"{parts[k] / 1e3:.2f}" for k in ("products", "bases", "expansion", "dL/dx", "rest"))
    print(f"| [{width}, {width}] | {floor / 1e3:.2f} | {whole / 1e3:.2f} | {cells} | "
          f"{bound / 1e3:.2f} ({bound / floor:.2f}x) | {whole / floor:.2f}x |")
print("(ms, one layer, fwd+bwd, batch 1024, G = 5; floor: the three products without the base columns)")
