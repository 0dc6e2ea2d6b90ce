"""Sparsity and smoothness penalties of a KAN, each a differentiable scalar.

The activation-based terms follow the KAN paper: an edge's magnitude is the batch mean of
``|phi(x)|``; a layer's L1 is the sum of its edge magnitudes and its entropy is that of the
magnitudes normalized to sum to one. The coefficient-based terms are cheap proxies that need no
forward pass with per-edge outputs.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from .layer import KANLayer


def _entropy(magnitudes: Tensor, eps: float = 1e-12) -> Tensor:
    p = magnitudes / (magnitudes.sum() + eps)
    # p log p -> 0 at p = 0; clamping inside the log keeps the gradient finite for pruned edges.
    tiny = torch.finfo(p.dtype).tiny
    return -torch.where(p > 0, p * torch.log(p.clamp_min(tiny)), torch.zeros_like(p)).sum()


def activation_l1(edge_scales: Sequence[Tensor]) -> Tensor:
    """Sum over layers and edges of the mean ``|phi|`` (``edge_scales``: one ``(out, in)`` per layer)."""
    return torch.stack([s.sum() for s in edge_scales]).sum()


def activation_entropy(edge_scales: Sequence[Tensor]) -> Tensor:
    """Sum over layers of the entropy of the normalized edge magnitudes."""
    return torch.stack([_entropy(s) for s in edge_scales]).sum()


def _coefficient_scales(layers: Iterable[KANLayer]) -> list[Tensor]:
    return [layer.scaled_coefficients().abs().mean(-1) for layer in layers]


def coefficient_l1(layers: Iterable[KANLayer]) -> Tensor:
    """Sum over layers and edges of the mean ``|c|`` of the (scaled) spline coefficients."""
    return activation_l1(_coefficient_scales(layers))


def coefficient_entropy(layers: Iterable[KANLayer]) -> Tensor:
    """Sum over layers of the entropy of the normalized per-edge mean ``|c|``."""
    return activation_entropy(_coefficient_scales(layers))


def smoothness(layers: Iterable[KANLayer]) -> Tensor:
    """Sum of squared second differences of the (scaled) coefficients along each edge's grid."""
    layers = list(layers)
    terms = []
    for layer in layers:
        c = layer.scaled_coefficients()
        if c.shape[-1] >= 3:
            terms.append((c[..., 2:] - 2 * c[..., 1:-1] + c[..., :-2]).pow(2).sum())
    if not terms:
        return layers[0].spline_weight.new_zeros(())
    return torch.stack(terms).sum()
