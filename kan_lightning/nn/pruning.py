"""Pruning a KAN by activation magnitude (the KAN paper's attribution scores).

An edge's score is the mean ``|phi(x)|`` over the data. A hidden node's incoming score is the
largest score of the edges into it, its outgoing score the largest score of the edges out of it;
the node is kept when both exceed the threshold. Input and output nodes are never removed, so
the pruned network has the same signature. Pruning nodes returns a new, smaller :class:`KAN`;
pruning edges switches them off in place through each layer's ``mask``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


@torch.no_grad()
def edge_scores(model: nn.Module, x: Tensor, chunk_size: int = 4096) -> list[Tensor]:
    """Per layer, every edge's mean ``|phi|`` on ``x``: one ``(out, in)`` tensor per layer.

    Masked edges score zero. ``x`` is processed in chunks of ``chunk_size`` rows.
    """
    x = x.reshape(-1, model.in_features)
    if x.shape[0] == 0:
        raise ValueError("edge_scores needs at least one sample")
    param = next(model.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    totals: list[Tensor] | None = None
    for chunk in x.split(chunk_size):
        h = chunk
        sums = []
        for layer in model.layers:
            phi = layer.edge_activations(h)
            sums.append(phi.abs().sum(0))
            h = phi.sum(-1)
        totals = sums if totals is None else [t + s for t, s in zip(totals, sums)]
    assert totals is not None
    return [t / x.shape[0] for t in totals]


@torch.no_grad()
def grid_edge_scores(model: nn.Module, samples: int = 101) -> list[Tensor]:
    """A data-free edge score: mean ``|phi|`` on ``samples`` equally spaced points of each
    input's grid range (for :func:`prune_edges` without data)."""
    scores = []
    for layer in model.layers:
        interior = layer.grid_interior()  # (in, G + 1)
        u = torch.linspace(0, 1, samples, dtype=interior.dtype, device=interior.device)
        x = interior[:, :1] + (interior[:, -1:] - interior[:, :1]) * u  # (in, samples)
        x = x.T.contiguous()
        x[-1] = x[-1].nextafter(x[0])  # bases are half-open on the right
        scores.append(layer.edge_activations(x).abs().mean(0))
    return scores


def node_scores(scores: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Per hidden layer (between ``layers[l]`` and ``layers[l + 1]``), each node's
    ``(incoming, outgoing)`` score: the max over the edges into and out of it."""
    return [(scores[l].amax(dim=1), scores[l + 1].amax(dim=0)) for l in range(len(scores) - 1)]


def select_nodes(model: nn.Module, x: Tensor, threshold: float = 1e-2) -> list[Tensor]:
    """The indices of the nodes to keep in every layer of widths (inputs and outputs: all).

    A hidden node is kept when its incoming and outgoing scores both exceed ``threshold``; if
    none in a layer does, the one with the largest ``min(incoming, outgoing)`` is kept so the
    network stays connected.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    scores = edge_scores(model, x)
    device = scores[0].device
    keep = [torch.arange(model.layers_hidden[0], device=device)]
    for incoming, outgoing in node_scores(scores):
        important = (incoming > threshold) & (outgoing > threshold)
        if not important.any():
            important[torch.minimum(incoming, outgoing).argmax()] = True
        keep.append(important.nonzero().flatten())
    keep.append(torch.arange(model.layers_hidden[-1], device=device))
    return keep


@torch.no_grad()
def mask_nodes(model: nn.Module, keep: list[Tensor]) -> nn.Module:
    """A copy of ``model`` with every edge into or out of a dropped node masked to zero: the
    function that :func:`prune_nodes` computes with the full widths."""
    masked = copy.deepcopy(model)
    for l, layer in enumerate(masked.layers):
        out_drop = torch.ones(layer.out_features, dtype=torch.bool, device=layer.mask.device)
        out_drop[keep[l + 1].to(layer.mask.device)] = False
        in_drop = torch.ones(layer.in_features, dtype=torch.bool, device=layer.mask.device)
        in_drop[keep[l].to(layer.mask.device)] = False
        layer.mask[out_drop, :] = 0
        layer.mask[:, in_drop] = 0
    return masked


@torch.no_grad()
def prune_nodes(model: nn.Module, keep: list[Tensor]) -> nn.Module:
    """A new :class:`KAN` with only the nodes ``keep[l]`` of every width ``l``.

    Grids, coefficients, base weights, spline scales and masks of the kept edges are copied,
    so the result computes exactly what :func:`mask_nodes` computes (up to float rounding).
    """
    if len(keep) != len(model.layers_hidden):
        raise ValueError(f"keep needs one index list per width ({len(model.layers_hidden)}), got {len(keep)}")
    for l in (0, -1):
        if len(keep[l]) != model.layers_hidden[l]:
            raise ValueError("input and output nodes cannot be pruned")
    widths = [int(len(k)) for k in keep]
    config = {**model.config, "layers_hidden": widths}
    if "base_activation" not in config:  # a module given as the activation: reuse a copy
        config["base_activation"] = copy.deepcopy(model.layers[0].base_activation)
    param = next(model.parameters())
    pruned = type(model)(**config).to(device=param.device, dtype=param.dtype)
    for l, (old, new) in enumerate(zip(model.layers, pruned.layers)):
        rows = keep[l + 1].to(param.device)
        cols = keep[l].to(param.device)
        new.grid = old.grid[cols].clone()
        new.grid_size = old.grid_size
        new.uniform_grid = old.uniform_grid
        new.spline_weight = torch.nn.Parameter(old.spline_weight[rows][:, cols].clone())
        new.base_weight.copy_(old.base_weight[rows][:, cols])
        new.spline_scaler.copy_(old.spline_scaler[rows][:, cols])
        new.mask.copy_(old.mask[rows][:, cols])
        new.train(old.training)
    pruned.train(model.training)
    return pruned


def prune(model: nn.Module, x: Tensor, threshold: float = 1e-2) -> nn.Module:
    """Score nodes on ``x`` and return the smaller KAN without the unimportant hidden nodes."""
    return prune_nodes(model, select_nodes(model, x, threshold))


@torch.no_grad()
def prune_edges(model: nn.Module, threshold: float = 1e-2, x: Tensor | None = None) -> int:
    """Mask (in place) every edge whose score is at most ``threshold``; returns how many edges
    were newly masked. Scores come from ``x`` when given, else from each grid's range."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    scores = edge_scores(model, x) if x is not None else grid_edge_scores(model)
    newly = 0
    for layer, score in zip(model.layers, scores):
        weak = (score <= threshold) & (layer.mask != 0)
        newly += int(weak.sum())
        layer.mask[weak] = 0
    return newly
