"""Knot grids: a grid for ``in_features`` inputs is ``(in_features, G + 2k + 1)`` knots, the
``G + 1`` spanning the grid range and ``k`` more on each side (see :mod:`.splines`)."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_grid(
    in_features: int,
    grid_size: int,
    spline_order: int,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform knots on ``grid_range`` with ``spline_order`` extra knots on each side."""
    lo, hi = float(grid_range[0]), float(grid_range[1])
    h = (hi - lo) / grid_size
    steps = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float64)
    knots = (lo + h * steps).to(dtype=dtype or torch.get_default_dtype(), device=device)
    return knots.expand(in_features, -1).contiguous()


def extend_knots(interior: Tensor, spline_order: int) -> Tensor:
    """Add ``spline_order`` knots on each side of ``interior`` (shape ``(in, G+1)``),
    spaced like the first and last interval, so bases near the edges have full support."""
    if spline_order == 0:
        return interior
    steps = torch.arange(1, spline_order + 1, dtype=interior.dtype, device=interior.device)
    h_lo = interior[:, 1:2] - interior[:, 0:1]
    h_hi = interior[:, -1:] - interior[:, -2:-1]
    left = interior[:, 0:1] - h_lo * steps.flip(0)
    right = interior[:, -1:] + h_hi * steps
    return torch.cat([left, interior, right], dim=1)


def is_uniform(grid: Tensor) -> bool:
    """Whether every row of knots is equally spaced, up to the rounding of the grid's dtype."""
    steps = grid.diff(dim=-1).double()
    tol = 64 * torch.finfo(grid.dtype).eps * grid.abs().amax().double().clamp(min=1)
    return bool(((steps - steps[:, :1]).abs() <= tol).all())
