"""Least-squares refits of spline coefficients that stay well posed where data are sparse.

When a grid is refined or moved, each edge's coefficients are refit to the edge's current
function at the training inputs. On a fine grid some bases have little or no data under them
(the outermost ones, and those in gaps of a hidden activation's distribution): the plain fit
leaves their coefficients to a tiny ridge, which pulls them toward 0, and the spline dips or
swings between and just past the data, where test points land. A P-spline penalty (Eilers &
Marx 1996) on the differences of neighbouring coefficients instead holds such coefficients on
the curve through their neighbours, so the spline continues smoothly across gaps and past the
data's extremes; where data are dense the fit is unchanged up to the penalty's small weight.
By default the differences are of order ``k + 1``: on uniform knots they vanish exactly for a
single polynomial piece of degree ``k``, so past the data the spline continues the polynomial
of its last fitted piece (second differences would continue it as a straight line, whose error
grows with the square of the distance instead of the fourth power for a cubic). The weight is relative to the data's mean weight per basis
(``trace(B^T B) / (G + k)``), so one value serves any sample size and grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .splines import bspline_basis, least_squares


def difference_matrix(n: int, order: int = 2, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The ``(n - order, n)`` matrix of ``order``-th differences of ``n`` coefficients."""
    d = torch.eye(n, dtype=dtype, device=device)
    for _ in range(order):
        d = d[1:] - d[:-1]
    return d


def penalized_fit_coefficients(
    x: Tensor, y: Tensor, grid: Tensor, spline_order: int, smoothness: float, order: int | None = None
) -> Tensor:
    """Coefficients minimizing ``||B c - y||^2 + lam ||D c||^2`` per edge, with ``D`` the
    ``order``-th differences (default ``spline_order + 1``) and ``lam = smoothness * trace(B^T B) / (G + k)`` per input.

    Shapes as :func:`~kan_lightning.nn.splines.fit_coefficients`: ``x`` ``(N, in)``, ``y``
    ``(N, out, in)``, returns ``(out, in, G + k)``. Solved in float64 as one stacked
    least-squares problem (no normal equations, whose condition number is the square).
    """
    if not smoothness > 0:
        raise ValueError(f"smoothness must be > 0, got {smoothness!r}")
    dtype = y.dtype
    basis = bspline_basis(x.double(), grid.double(), spline_order)  # (N, in, nb)
    a = basis.permute(1, 0, 2)  # (in, N, nb)
    b = y.double().permute(2, 0, 1)  # (in, N, out)
    n_bases = a.shape[-1]
    order = min(spline_order + 1 if order is None else order, n_bases - 1)
    d = difference_matrix(n_bases, order, device=a.device)  # (nb - order, nb)
    lam = smoothness * (a * a).sum(dim=(1, 2)) / n_bases  # (in,)
    penalty = lam.sqrt().view(-1, 1, 1) * d  # (in, nb - order, nb)
    a = torch.cat([a, penalty], dim=1)
    b = torch.cat([b, b.new_zeros(b.shape[0], penalty.shape[1], b.shape[2])], dim=1)
    coef = least_squares(a, b)  # (in, nb, out)
    return coef.permute(2, 0, 1).to(dtype).contiguous()


def check_smoothness(smoothness: float) -> float:
    """``smoothness`` as a float, refused unless a finite number >= 0."""
    value = float(smoothness)
    if not (value >= 0 and value != float("inf")):
        raise ValueError(f"smoothness must be a finite number >= 0, got {smoothness!r}")
    return value
