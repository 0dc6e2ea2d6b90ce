"""Interval bounds of a KAN's activations over a box of inputs.

Every edge is a function of one variable, so over an input interval ``[a, b]`` it is bounded by
the range of its base branch plus the range of its spline; a layer's output ``j`` is bounded by
the sum of its edges' bounds. A B-spline lies in the convex hull of the coefficients whose
bases do not vanish on ``[a, b]``: inside the grid range the bases sum to one, outside it they
sum to less (and vanish past the outer knots), so there the hull also takes in 0. Propagated
layer by layer from the data domain, the bounds hold for every input in the domain, not only
for the training sample (used by ``KAN.update_grid(hidden_range="interval")``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Interior extrema of the non-monotone base activations (the rest here are monotone).
# SiLU: x / (1 + e^-x) has its minimum where 1 + e^-x + x e^-x = 0 ... solved numerically.
_CRITICAL_POINTS: dict[type, tuple[float, ...]] = {
    nn.SiLU: (-1.2784645427610738,),
    nn.GELU: (-0.7517915246935610,),
}
_MONOTONE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def activation_bounds(activation: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise range of ``activation`` over ``[lo, hi]``: its values at the ends and at any
    interior extremum."""
    kind = type(activation)
    if isinstance(activation, _MONOTONE):
        points = []
    elif kind in _CRITICAL_POINTS and not (isinstance(activation, nn.GELU) and activation.approximate != "none"):
        points = list(_CRITICAL_POINTS[kind])
    else:
        raise ValueError(
            f"interval bounds need a base activation with known extrema (silu, gelu, relu, tanh, sigmoid, "
            f"identity), got {activation!r}"
        )
    ends = torch.stack([activation(lo), activation(hi)])
    low, high = ends.amin(0), ends.amax(0)
    for c in points:
        inside = (lo <= c) & (c <= hi)
        value = activation(torch.full_like(lo, c))
        low = torch.where(inside, torch.minimum(low, value), low)
        high = torch.where(inside, torch.maximum(high, value), high)
    return low, high


def spline_bounds(layer, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds ``(out, in)`` of every edge's scaled spline over ``[lo_i, hi_i]`` (``lo, hi``: ``(in,)``)."""
    k, grid = layer.spline_order, layer.grid  # (in, G + 2k + 1)
    coef = layer.scaled_coefficients().detach()  # (out, in, G + k)
    n_bases = coef.shape[-1]
    a, b = lo.to(grid).unsqueeze(-1), hi.to(grid).unsqueeze(-1)
    first, last = grid[:, k : k + 1], grid[:, n_bases : n_bases + 1]  # the grid range
    if layer.extrapolate == "linear":
        # past the range the spline is linear: its extremes there are at the interval's ends
        # (computed below) and at the range's ends (inside the hull of the inner part)
        a_in, b_in = torch.maximum(a, first), torch.minimum(b, last)
    else:
        a_in, b_in = a, b
    # basis m is non-zero on [t_m, t_{m+k+1}); closed ends keep the test conservative
    support_lo, support_hi = grid[:, :n_bases], grid[:, k + 1 : k + 1 + n_bases]
    meets = (support_hi >= a_in) & (support_lo <= b_in) & (a_in <= b_in)  # (in, G + k)
    big = torch.finfo(coef.dtype).max
    c_lo = torch.where(meets, coef, torch.full_like(coef, big)).amin(-1)
    c_hi = torch.where(meets, coef, torch.full_like(coef, -big)).amax(-1)
    none = ~meets.any(-1)  # past the outer knots: the bases vanish
    c_lo, c_hi = torch.where(none, 0.0, c_lo), torch.where(none, 0.0, c_hi)
    if layer.extrapolate != "linear":
        # outside [first, last] the bases sum to less than one: the hull takes in 0
        partial = ((a < first) | (b > last)).squeeze(-1)
        c_lo, c_hi = torch.where(partial, c_lo.clamp(max=0), c_lo), torch.where(partial, c_hi.clamp(min=0), c_hi)
    else:
        ends = torch.stack([lo, hi]).to(grid)  # (2, in)
        values = torch.einsum("nim,oim->noi", layer.spline_bases(ends), coef)  # (2, out, in)
        c_lo, c_hi = torch.minimum(c_lo, values.amin(0)), torch.maximum(c_hi, values.amax(0))
    return c_lo, c_hi


def layer_bounds(layer, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds ``(out,)`` of a :class:`KANLayer`'s outputs over the box ``[lo, hi]`` (``(in,)``)."""
    lo, hi = lo.to(layer.grid), hi.to(layer.grid)
    b_lo, b_hi = activation_bounds(layer.base_activation, lo, hi)  # (in,)
    w = (layer.base_weight * layer.mask).detach()  # (out, in)
    base_lo = torch.minimum(w * b_lo, w * b_hi)
    base_hi = torch.maximum(w * b_lo, w * b_hi)
    s_lo, s_hi = spline_bounds(layer, lo, hi)
    return (base_lo + s_lo).sum(-1), (base_hi + s_hi).sum(-1)


def network_bounds(model, lo: Tensor, hi: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Bounds of every layer's inputs for network inputs in ``[lo, hi]``: one ``(lo, hi)`` pair
    per layer and one for the output."""
    bounds = [(lo, hi)]
    for layer in model.layers:
        lo, hi = layer_bounds(layer, lo, hi)
        bounds.append((lo, hi))
    return bounds
