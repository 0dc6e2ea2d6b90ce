"""Time a Levenberg-Marquardt iteration: ``python -m kan_lightning.commands.bench_lm``.

For each KAN ``WIDTH@G`` (float64, ``--points`` random inputs in ``[-1, 1]^d``, target
``exp(sin(pi x_0) + x_1^2)``, random coefficients and grids fitted to the inputs) and each
``--smoothness``: ``--iterations`` iterations of
:func:`~kan_lightning.nn.levenberg_marquardt.levenberg_marquardt` against
:func:`reference_levenberg_marquardt` (dense ``J^T J``, LU, the dense penalty matrix) from the
same network, alternating, ``--repeats`` times: the medians of the seconds per iteration, of the
damped solves (factorizations) per iteration, of the per-repeat ratios (after one untimed
iteration of each), and the relative difference of the networks' outputs afterwards (rounding: the
Hessian is singular along each edge's scaler / coefficient trade-off, which only the damping fixes).

    python -m kan_lightning.commands.bench_lm
    python -m kan_lightning.commands.bench_lm --models 2,5,1@100 --smoothness 1e-9 --iterations 5

``--baseline parameters``: against the structured method itself with every step solved in the
parameters' space (the ``(P, P)`` Cholesky), i.e. what the samples' space
(:mod:`kan_lightning.nn.sample_space`, taken with many more parameters than points) gains:

    python -m kan_lightning.commands.bench_lm --baseline parameters --models "2,5,5,5,5,5,1@20 2,5,1@200" --smoothness 1e-9
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import Tensor, nn

from kan_lightning.nn import KAN, sample_space
from kan_lightning.nn.levenberg_marquardt import jacobian, levenberg_marquardt, penalty_matrix


@torch.no_grad()
def reference_levenberg_marquardt(
    model: nn.Module, x: Tensor, y: Tensor, iterations: int, damping: float = 1e-3, smoothness: float = 0.0
) -> dict:
    """:func:`~kan_lightning.nn.levenberg_marquardt.levenberg_marquardt` with the dense ``(N, P)``
    products, the dense penalty matrix and an LU solve per trial: the baseline, and the reference
    of its tests."""
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    y = y.reshape(-1).to(params[0])
    pen = penalty_matrix(model, x, smoothness) if smoothness > 0 else None

    def objective(r: Tensor, theta: Tensor) -> Tensor:
        return r.square().sum() + (0 if pen is None else (pen @ theta).square().sum())

    def residual() -> Tensor:
        return model(x).reshape(-1) - y

    def put(theta: Tensor) -> None:
        for p, t in zip(params, theta.split(sizes)):
            p.copy_(t.reshape(p.shape))

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    r = residual()
    before, lam, done = float(r.square().mean().sqrt()), float(damping), 0
    solves = 0  # damped solves (Cholesky factorizations): one per trial step
    for done in range(1, iterations + 1):
        J = jacobian(model, x)
        g, H = J.T @ r, J.T @ J
        if pen is not None:
            g, H = g + pen.T @ (pen @ theta), H + pen.T @ pen
        scale = torch.diag(H.diagonal().clamp_min(torch.finfo(H.dtype).tiny))
        improved = False
        while lam < 1e10:
            solves += 1
            step = torch.linalg.solve(H + lam * scale, -g)
            put(theta + step)
            r_new = residual()
            if bool(torch.isfinite(r_new).all()) and objective(r_new, theta + step) < objective(r, theta):
                theta, r, lam, improved = theta + step, r_new, max(lam / 3, 1e-15), True
                break
            lam *= 4
        put(theta)
        if not improved:
            break
    rmse_after = float(r.square().mean().sqrt())
    return {"iterations": done, "solves": solves, "damping": lam, "rmse_before": before, "rmse_after": rmse_after}


def parameters_space_levenberg_marquardt(*args, **kwargs) -> dict:
    """:func:`~kan_lightning.nn.levenberg_marquardt.levenberg_marquardt` with every step solved
    in the parameters' space, whatever the shape."""
    above = sample_space.SAMPLE_SPACE_ABOVE
    sample_space.SAMPLE_SPACE_ABOVE = float("inf")
    try:
        return levenberg_marquardt(*args, **kwargs)
    finally:
        sample_space.SAMPLE_SPACE_ABOVE = above


BASELINES = {"reference": reference_levenberg_marquardt, "parameters": parameters_space_levenberg_marquardt}


def problem(width: list[int], grid: int, points: int) -> tuple[nn.Module, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(points, width[0], generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:2] ** 2)
    torch.manual_seed(0)
    model = KAN(width, grid_size=grid).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_weight.normal_(0, 0.3)
        model.update_grid(x)
    return model, x, y


def compare(width: list[int], grid: int, smoothness: float, points: int, iterations: int, repeats: int,
            baseline: str = "reference") -> dict:
    model, x, y = problem(width, grid, points)
    times, outputs, solves = {"reference": [], "structured": []}, {}, []
    fits = (("reference", BASELINES[baseline]), ("structured", levenberg_marquardt))
    for _, fit in fits:  # warm-up: the allocator's first large blocks
        fit(copy.deepcopy(model), x, y, 1, smoothness=smoothness)
    for _ in range(repeats):
        for name, fit in fits:
            net = copy.deepcopy(model)
            start = time.perf_counter()
            out = fit(net, x, y, iterations, smoothness=smoothness)
            times[name].append((time.perf_counter() - start) / out["iterations"])
            solves.append(out["solves"] / out["iterations"])
            with torch.no_grad():
                outputs[name] = net(x)
    ref, new = outputs["reference"], outputs["structured"]
    return {"width": width, "grid": grid, "parameters": sum(p.numel() for p in model.parameters()), "baseline": baseline,
            "smoothness": smoothness, "baseline_s_per_iteration": round(statistics.median(times["reference"]), 4),
            "structured_s_per_iteration": round(statistics.median(times["structured"]), 4),
            "solves_per_iteration": round(statistics.median(solves), 2),
            "speedup": round(statistics.median(a / b for a, b in zip(times["reference"], times["structured"])), 2),
            "output_relative_difference": float((ref - new).norm() / ref.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="2,5,1@20 2,5,1@50 2,5,1@100 3,5,5,1@20", help="WIDTH@G, space-separated")
    parser.add_argument("--smoothness", default="0,1e-9", help="penalty weights, comma-separated")
    parser.add_argument("--points", type=int, default=1000, help="training points")
    parser.add_argument("--iterations", type=int, default=3, help="iterations per timing")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings (medians)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="reference",
                        help="reference: dense J^T J and LU; parameters: this method without the samples' space")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models.split():
        width, grid = spec.split("@")
        for smoothness in args.smoothness.split(","):
            rows.append(compare([int(w) for w in width.split(",")], int(grid), float(smoothness), args.points,
                                args.iterations, args.repeats, args.baseline))
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
