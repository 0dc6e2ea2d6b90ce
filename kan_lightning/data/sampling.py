"""Sampling a target function: points in its domain (uniform or on a grid), noise, split sizes."""

from __future__ import annotations

import torch
from torch import Tensor

from kan_lightning.data.functions import TargetFunction, domain_bounds

SAMPLING_MODES = ("uniform", "grid")
MAX_GRID_POINTS = 10_000_000

def grid_points_per_axis(n_samples: int, input_dim: int) -> int:
    """Smallest number of points per axis whose full grid holds at least ``n_samples`` points."""
    m = max(1, int(round(n_samples ** (1.0 / input_dim))))
    while m**input_dim < n_samples:
        m += 1
    while m > 1 and (m - 1) ** input_dim >= n_samples:
        m -= 1
    if m**input_dim > MAX_GRID_POINTS:
        raise ValueError(
            f"sampling='grid' needs {m}^{input_dim} grid points for n_samples={n_samples} in "
            f"{input_dim} dimensions (limit {MAX_GRID_POINTS}); use sampling='uniform'"
        )
    return m


def _sample_uniform(target: TargetFunction, n: int, generator: torch.Generator) -> Tensor:
    low, high = domain_bounds(target.domain)
    # float32 whatever torch's default dtype: a seed draws the same points in every process
    return low + (high - low) * torch.rand(n, target.input_dim, generator=generator, dtype=torch.float32)


def _sample_grid(target: TargetFunction, n: int, generator: torch.Generator) -> Tensor:
    # A full tensor-product grid, then a random subset of n points when the grid is larger.
    m = grid_points_per_axis(n, target.input_dim)
    axes = [torch.linspace(a, b, m, dtype=torch.float32) for a, b in target.domain]
    grid = torch.cartesian_prod(*axes).reshape(-1, target.input_dim)
    keep = torch.randperm(grid.shape[0], generator=generator)[:n]
    return grid[keep]


def check_finite(x: Tensor, y: Tensor, name: str) -> None:
    """Refuse samples whose inputs or targets hold NaN or Inf, saying how many and where."""
    bad = ~(torch.isfinite(x).all(dim=1) & torch.isfinite(y).all(dim=1))
    count = int(bad.sum())
    if count:
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target {name!r} produced {count} non-finite (NaN/Inf) sample(s) out of "
            f"{x.shape[0]}; first bad row {first}: x={x[first].tolist()}, y={y[first].tolist()}. "
            "Restrict the domain to where the function is defined."
        )


def make_dataset(
    target: TargetFunction,
    n_samples: int,
    seed: int = 0,
    noise_level: float = 0.0,
    generator: torch.Generator | None = None,
    sampling: str = "uniform",
) -> tuple[Tensor, Tensor]:
    """Sample ``n_samples`` points ``x`` in the target's domain and ``y = target(x)``, both float64.

    The points are float32 draws (a seed draws the same points whatever torch's default dtype)
    held in float64, and the targets are computed from them in float64: a float64 model then
    fits the function itself, not its float32 rounding (an error of ~1e-7 relative, which
    extrapolation past the training sample amplifies); a float32 model gets them correctly rounded.

    Noise is relative: ``y + noise_level * std(y) * N(0, 1)``, so ``noise_level=0.1`` means noise
    at 10% of the target's own spread whatever its scale. ``generator`` (if given) replaces the
    one seeded by ``seed``.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling={sampling!r} is not one of {SAMPLING_MODES}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    sample = _sample_grid if sampling == "grid" else _sample_uniform
    x = sample(target, n_samples, generator).to(torch.float64)
    y = target.fn(x).to(torch.float64)
    if y.shape != (n_samples, 1):
        raise ValueError(
            f"target {target.name!r} returned shape {tuple(y.shape)}, expected ({n_samples}, 1)"
        )
    check_finite(x, y, target.name)
    if noise_level > 0:
        scale = noise_level * y.std(correction=0)
        # drawn in float32 as before, so a seed keeps its noise
        y = y + scale * torch.randn(y.shape, generator=generator, dtype=torch.float32).to(y.dtype)
    return x, y


def split_sizes(n_samples: int, split: tuple[float, float, float]) -> tuple[int, int, int]:
    """Train/val/test sizes from fractions, rounding cumulatively so they always add up."""
    first = round(n_samples * split[0])
    second = round(n_samples * (split[0] + split[1]))
    return first, second - first, n_samples - second
