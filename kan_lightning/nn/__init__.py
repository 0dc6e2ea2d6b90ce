"""Pure-PyTorch KAN building blocks (no Lightning, Hydra or plotting imports).

The B-spline functions live in :mod:`kan_lightning.nn.splines`."""

from .config import KANConfig, SplineConfig
from .hybrid import HybridKAN
from .layer import KANLayer
from .mlp import MLP
from .network import KAN
from .splines import fit_coefficients

__all__ = ["HybridKAN", "KAN", "KANConfig", "KANLayer", "MLP", "SplineConfig", "fit_coefficients"]
