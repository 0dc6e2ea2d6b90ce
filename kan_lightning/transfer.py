"""Copy a trained KAN's layers into another KAN of other grid sizes (the guide's transfer)."""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import Tensor

from kan_lightning.nn import KAN


@torch.no_grad()
def transfer_weights(
    src: KAN, dst: KAN, layer_mapping: Mapping[int, int] | None = None, x: Tensor | None = None
) -> KAN:
    """Copy ``src``'s layers into ``dst`` (``layer_mapping``: src index -> dst index; default
    all, in order), refitting the spline coefficients when the grid sizes differ.

    Each mapped ``dst`` layer takes ``src``'s grid, refined or coarsened to its own grid size
    like :meth:`KANLayer.extend_grid` (least squares on dense samples of the grid range; exact
    there when the finer grid contains the coarser one), and ``src``'s base weights, spline
    scales and masks. With data ``x`` (all layers, in order) the grids are instead fitted to
    each layer's inputs on ``x`` (:meth:`KAN.extend_grid` with ``x``), which also keeps the
    functions where hidden activations leave the grid range. Layers must have the same in/out
    widths and spline order. Returns ``dst``.
    """
    if layer_mapping is None:
        if len(src.layers) != len(dst.layers):
            raise ValueError(f"src has {len(src.layers)} layers and dst {len(dst.layers)}: give layer_mapping")
        layer_mapping = {i: i for i in range(len(src.layers))}
    for s, d in layer_mapping.items():
        a, b = src.layers[s], dst.layers[d]
        if (a.in_features, a.out_features, a.spline_order) != (b.in_features, b.out_features, b.spline_order):
            raise ValueError(
                f"layer {s} -> {d}: shapes differ ((in, out, order) {(a.in_features, a.out_features, a.spline_order)} "
                f"vs {(b.in_features, b.out_features, b.spline_order)})"
            )
    param = dst.layers[0].spline_weight
    sources = {s: src.layers[s] for s in layer_mapping}
    if x is not None:
        if dict(layer_mapping) != {i: i for i in range(len(src.layers))}:
            raise ValueError("transfer with data x maps all layers in order")
        sizes = {layer.grid_size for layer in dst.layers}
        if len(sizes) != 1:
            raise ValueError(f"transfer with data x needs one grid size in dst, got {sorted(sizes)}")
        tmp = copy.deepcopy(src).to(device=param.device, dtype=param.dtype)
        tmp.extend_grid(sizes.pop(), x=x.to(device=param.device, dtype=param.dtype))
        sources = dict(enumerate(tmp.layers))
    for s, d in layer_mapping.items():
        b = dst.layers[d]
        a = copy.deepcopy(sources[s]).to(device=param.device, dtype=param.dtype)
        if a.grid_size != b.grid_size:
            a.extend_grid(b.grid_size)
        b.grid = a.grid.clone()
        b.uniform_grid = a.uniform_grid
        b.spline_weight.copy_(a.spline_weight)
        b.base_weight.copy_(a.base_weight)
        b.spline_scaler.copy_(a.spline_scaler)
        b.mask.copy_(a.mask)
    if all(layer.grid_size == dst.layers[0].grid_size for layer in dst.layers):
        dst.config["grid_size"] = dst.layers[0].grid_size
    return dst
