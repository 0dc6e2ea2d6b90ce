"""Pure-PyTorch KAN building blocks (no Lightning, Hydra or plotting imports)."""

from .hybrid import HybridKAN
from .layer import KANLayer
from .mlp import MLP
from .network import KAN
from .splines import (
    bspline_basis,
    bspline_basis_reference,
    bspline_local,
    extend_knots,
    fit_coefficients,
    uniform_grid,
)

__all__ = [
    "HybridKAN",
    "KAN",
    "KANLayer",
    "MLP",
    "bspline_basis",
    "bspline_basis_reference",
    "bspline_local",
    "extend_knots",
    "fit_coefficients",
    "uniform_grid",
]
