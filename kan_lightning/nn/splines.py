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

from .bases import local_bases
from .knots import extend_knots, uniform_grid

__all__ = [
    "bspline_basis",
    "bspline_basis_derivative",
    "bspline_basis_reference",
    "bspline_local",
    "extend_knots",
    "fit_coefficients",
    "uniform_grid",
]


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


def bspline_local(
    x: Tensor, grid: Tensor, spline_order: int, uniform: bool = False
) -> tuple[Tensor, Tensor]:
    """The ``k + 1`` non-zero bases per input and the index of the first one.

    Returns ``values`` of shape ``(N, in, k + 1)`` and ``start`` of shape ``(N, in)`` (int64):
    ``values[..., m]`` is basis ``start + m``. Entries whose basis index falls outside
    ``[0, G + k)``, or whose input lies outside ``[t_0, t_last)``, are zero, so the result can
    be scattered (indices clamped into range) or gathered without masks.

    ``uniform=True`` uses the closed form for equally spaced knots (no knot gathers). The
    spline kernels' own bases (:func:`~kan_lightning.nn.bases.local_bases`).
    """
    values, _, start = local_bases(x, grid, spline_order, uniform, derivatives=False)
    n_bases = grid.shape[-1] - spline_order - 1
    return values, start.clamp(-spline_order, n_bases - 1)


def bspline_basis(x: Tensor, grid: Tensor, spline_order: int, uniform: bool = False) -> Tensor:
    """All ``G + k`` bases ``(N, in, G + k)``, computing only the ``k + 1`` non-zero ones."""
    k = spline_order
    values, start = bspline_local(x, grid, k, uniform)
    n_bases = grid.shape[-1] - k - 1
    index = (start.unsqueeze(-1) + torch.arange(k + 1, device=x.device)).clamp(0, n_bases - 1)
    out = x.new_zeros(*x.shape, n_bases)
    return out.scatter_add(-1, index, values)


def least_squares(a: Tensor, b: Tensor) -> Tensor:
    """``torch.linalg.lstsq(a, b).solution``, the same bits on every call: on CPU by the SVD
    driver (``gelsd``), since the default ``gelsy`` returns slightly different last bits from call
    to call, which L-BFGS then amplifies into runs that differ at the same seed."""
    driver = "gelsd" if a.device.type == "cpu" else None
    return torch.linalg.lstsq(a, b, driver=driver).solution


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
    coef = least_squares(a, b)  # (in, nb, out)
    return coef.permute(2, 0, 1).to(dtype).contiguous()
