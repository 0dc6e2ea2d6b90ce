"""Knot grids, B-spline bases and least-squares coefficient fits.

Conventions shared by every function here:

* A grid for ``in_features`` inputs is a tensor of shape ``(in_features, G + 2k + 1)``: the
  ``G + 1`` knots spanning the grid range plus ``k`` extra knots on each side, strictly
  increasing along the last dimension. It carries ``G + k`` B-spline bases of order ``k``.
* Bases use the half-open Cox-de Boor convention ``t_i <= x < t_{i+1}`` on the full knot
  vector: outside ``[t_0, t_last)`` every basis is zero, and ``0/0`` is taken as ``0`` so that
  repeated knots are harmless.
* ``x`` has shape ``(N, in_features)``.
"""

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


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``0`` where ``den == 0`` (the B-spline convention for repeated knots)."""
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))


def bspline_basis_reference(x: Tensor, grid: Tensor, spline_order: int) -> Tensor:
    """All ``G + k`` bases by the full-grid Cox-de Boor recursion: ``(N, in, G + k)``.

    Simple and slow on purpose: it is the reference the fast kernel is checked against.
    """
    x = x.unsqueeze(-1)
    t = grid.unsqueeze(0)
    bases = ((x >= t[..., :-1]) & (x < t[..., 1:])).to(x.dtype)
    for r in range(1, spline_order + 1):
        left = _safe_div(x - t[..., : -(r + 1)], t[..., r:-1] - t[..., : -(r + 1)])
        right = _safe_div(t[..., r + 1 :] - x, t[..., r + 1 :] - t[..., 1:-r])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def bspline_basis_derivative(x: Tensor, grid: Tensor, spline_order: int) -> Tensor:
    """``dB_m/dx`` of all ``G + k`` bases, ``(N, in, G + k)``, from the bases of order ``k - 1``:
    ``B'_{m,k} = k (B_{m,k-1} / (t_{m+k} - t_m) - B_{m+1,k-1} / (t_{m+k+1} - t_{m+1}))``."""
    k = spline_order
    n_bases = grid.shape[-1] - k - 1
    if k == 0:
        return x.new_zeros(*x.shape, n_bases)
    lower = bspline_basis_reference(x, grid, k - 1)  # (N, in, G + k + 1)
    spans = (grid[:, k:] - grid[:, :-k]).unsqueeze(0)
    scaled = _safe_div(lower, spans)
    return k * (scaled[..., :-1] - scaled[..., 1:])


def _local_values_uniform(frac: Tensor, spline_order: int) -> list[Tensor]:
    """The ``k + 1`` non-zero uniform B-spline values at fractional position ``frac`` in [0, 1)
    of an interval (de Boor's triangle with the knot differences in units of the spacing)."""
    values = [torch.ones_like(frac)]
    for r in range(1, spline_order + 1):
        saved = torch.zeros_like(frac)
        new = []
        for s in range(r):
            # right_{s+1} = s + 1 - frac, left_{r-s} = frac + r - s - 1, their sum is r.
            temp = values[s] / r
            new.append(saved + (s + 1 - frac) * temp)
            saved = (frac + (r - s - 1)) * temp
        values = new + [saved]
    return values


def _local_values_general(x: Tensor, knots: list[Tensor], spline_order: int) -> list[Tensor]:
    """The ``k + 1`` non-zero B-spline values at ``x`` in interval ``[t_j, t_{j+1})`` given
    ``knots = [t_{j-k+1}, ..., t_{j+k}]`` (de Boor's BSPLVB triangle)."""
    k = spline_order
    # knots[k - 1] is t_j; left_r = x - t_{j+1-r}, right_r = t_{j+r} - x.
    left = [None] + [x - knots[k - r] for r in range(1, k + 1)]
    right = [None] + [knots[k - 1 + r] - x for r in range(1, k + 1)]
    values = [torch.ones_like(x)]
    for r in range(1, k + 1):
        saved = torch.zeros_like(x)
        new = []
        for s in range(r):
            temp = _safe_div(values[s], right[s + 1] + left[r - s])
            new.append(saved + right[s + 1] * temp)
            saved = left[r - s] * temp
        values = new + [saved]
    return values


def bspline_local(
    x: Tensor, grid: Tensor, spline_order: int, uniform: bool = False
) -> tuple[Tensor, Tensor]:
    """The ``k + 1`` non-zero bases per input and the index of the first one.

    Returns ``values`` of shape ``(N, in, k + 1)`` and ``start`` of shape ``(N, in)`` (int64):
    ``values[..., m]`` is basis ``start + m``. Entries whose basis index falls outside
    ``[0, G + k)``, or whose input lies outside ``[t_0, t_last)``, are zero and their index is
    clamped into range, so the result can be scattered or gathered without masks.

    ``uniform=True`` uses the closed form for equally spaced knots (no knot gathers).
    """
    k = spline_order
    n_knots = grid.shape[-1]
    n_bases = n_knots - k - 1
    inside = (x >= grid[:, 0]) & (x < grid[:, -1])

    if uniform:
        h = (grid[:, -1] - grid[:, 0]) / (n_knots - 1)
        pos = (x - grid[:, 0]) / h
        j = pos.floor().clamp(0, n_knots - 2)
        # Rounding can put x a hair on the wrong side of a knot; the knots decide.
        j_long = j.long()
        t_j = torch.gather(grid, 1, j_long.T).T
        t_next = torch.gather(grid, 1, (j_long + 1).clamp(max=n_knots - 1).T).T
        j_long = j_long - (x < t_j).long() + (x >= t_next).long()
        j_long = j_long.clamp(0, n_knots - 2)
        t_j = torch.gather(grid, 1, j_long.T).T
        frac = ((x - t_j) / h).clamp(0, 1)
        values = _local_values_uniform(frac, k)
    else:
        j_long = torch.searchsorted(grid, x.T.contiguous(), right=True).T - 1
        j_long = j_long.clamp(0, n_knots - 2)
        padded = extend_knots(grid, k)
        # knots t_{j-k+1}, ..., t_{j+k} sit at padded positions j+1, ..., j+2k.
        knots = [torch.gather(padded, 1, (j_long + m).T).T for m in range(1, 2 * k + 1)]
        values = _local_values_general(x, knots, k)

    start = j_long - k
    index = start.unsqueeze(-1) + torch.arange(k + 1, device=x.device)
    valid = (index >= 0) & (index < n_bases) & inside.unsqueeze(-1)
    values = torch.stack(values, dim=-1) * valid.to(x.dtype)
    return values, start


def bspline_basis(x: Tensor, grid: Tensor, spline_order: int, uniform: bool = False) -> Tensor:
    """All ``G + k`` bases ``(N, in, G + k)``, computing only the ``k + 1`` non-zero ones."""
    k = spline_order
    values, start = bspline_local(x, grid, k, uniform)
    n_bases = grid.shape[-1] - k - 1
    index = (start.unsqueeze(-1) + torch.arange(k + 1, device=x.device)).clamp(0, n_bases - 1)
    out = x.new_zeros(*x.shape, n_bases)
    return out.scatter_add(-1, index, values)


def fit_coefficients(
    x: Tensor, y: Tensor, grid: Tensor, spline_order: int, ridge: float = 1e-8
) -> Tensor:
    """Least-squares spline coefficients so that ``sum_m c[o, i, m] B_m(x_i) ~= y[:, o, i]``.

    ``x``: ``(N, in)``, ``y``: ``(N, out, in)``; returns ``(out, in, G + k)``. A small ridge
    term keeps bases with little data support well posed. Solved in float64.
    """
    dtype = y.dtype
    basis = bspline_basis(x.double(), grid.double(), spline_order)  # (N, in, nb)
    a = basis.permute(1, 0, 2)  # (in, N, nb)
    b = y.double().permute(2, 0, 1)  # (in, N, out)
    n_bases = a.shape[-1]
    if ridge > 0:
        eye = torch.eye(n_bases, dtype=a.dtype, device=a.device) * ridge**0.5
        a = torch.cat([a, eye.expand(a.shape[0], -1, -1)], dim=1)
        b = torch.cat([b, b.new_zeros(b.shape[0], n_bases, b.shape[2])], dim=1)
    coef = torch.linalg.lstsq(a, b).solution  # (in, nb, out)
    return coef.permute(2, 0, 1).to(dtype).contiguous()
