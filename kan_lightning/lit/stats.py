"""Gradient and activation statistics of a network (the guide's ``analyze_gradients``).

Plain functions on an ``nn.Module``: no Lightning needed. :class:`~kan_lightning.lit.callbacks.
GradientStats` logs them during training.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

GROUPINGS = ("parameter", "type", "layer")


def _group_key(name: str, group_by: str) -> str:
    if group_by == "parameter":
        return name
    parts = name.split(".")
    if group_by == "type":  # layers.0.spline_weight -> spline_weight
        return parts[-1]
    # layer: layers.0.spline_weight -> layers.0 (a parameter directly on the model: its name)
    return ".".join(parts[:-1]) or name


@torch.no_grad()
def analyze_gradients(model: nn.Module, group_by: str = "parameter") -> dict[str, dict[str, float]]:
    """Norm, largest magnitude and mean of the gradients, per parameter group.

    ``group_by``: ``"parameter"`` (every named parameter, as in the guide), ``"type"``
    (``base_weight``, ``spline_weight``, ``spline_scaler`` over all layers) or ``"layer"``
    (``layers.0``, ``layers.1``...). A group's norm is the 2-norm of all its gradients, its mean
    the mean over all their entries. Parameters without a gradient are left out. Also returns
    ``numel`` per group.
    """
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")
    acc: dict[str, dict[str, float]] = {}
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        grad = param.grad.detach()
        if grad.is_sparse:
            grad = grad.coalesce().values()
        grad = grad.double()
        key = _group_key(name, group_by)
        entry = acc.setdefault(key, {"sq": 0.0, "max": 0.0, "sum": 0.0, "numel": 0})
        entry["sq"] += float(grad.pow(2).sum())
        entry["max"] = max(entry["max"], float(grad.abs().max())) if grad.numel() else entry["max"]
        entry["sum"] += float(grad.sum())
        entry["numel"] += grad.numel()
    return {
        key: {
            "norm": math.sqrt(e["sq"]),
            "max": e["max"],
            "mean": e["sum"] / e["numel"] if e["numel"] else 0.0,
            "numel": e["numel"],
        }
        for key, e in acc.items()
    }


def total_grad_norm(stats: dict[str, dict[str, float]]) -> float:
    """The 2-norm of all gradients from :func:`analyze_gradients` (any grouping)."""
    return math.sqrt(sum(s["norm"] ** 2 for s in stats.values()))


@torch.no_grad()
def activation_stats(model: nn.Module, x: Tensor) -> dict[str, dict[str, float]]:
    """Per KAN layer, statistics of its inputs on ``x`` and of its edge activations.

    ``in_mean``, ``in_std``, ``in_min``, ``in_max``: the layer's inputs; ``out_of_grid``: the
    fraction of inputs outside the layer's grid range (there only the base branch acts, so a
    large value asks for a grid update); ``edge_mean`` and ``edge_max``: mean and largest
    per-edge mean ``|phi|`` (the scores that L1 regularization and pruning use).
    Needs a model with ``activations(x)`` and ``layers`` (a :class:`~kan_lightning.nn.KAN`).
    """
    if not hasattr(model, "activations"):
        raise TypeError(f"{type(model).__name__} has no per-layer activations (not a KAN)")
    stats: dict[str, dict[str, float]] = {}
    param = next(model.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    for l, (layer, (inputs, phi)) in enumerate(zip(model.layers, model.activations(x))):
        interior = layer.grid_interior()
        outside = (inputs < interior[:, 0]) | (inputs > interior[:, -1])
        scores = phi.abs().mean(0)
        stats[f"layers.{l}"] = {
            "in_mean": float(inputs.mean()),
            "in_std": float(inputs.std(correction=0)),
            "in_min": float(inputs.min()),
            "in_max": float(inputs.max()),
            "out_of_grid": float(outside.double().mean()),
            "edge_mean": float(scores.mean()),
            "edge_max": float(scores.max()),
        }
    return stats


def flatten_stats(stats: dict[str, dict[str, float]], prefix: str, keys: Callable[[str], bool] | None = None) -> dict[str, float]:
    """``{group: {stat: v}}`` -> ``{"prefix/group/stat": v}`` (for loggers)."""
    return {
        f"{prefix}/{group}/{stat}": float(value)
        for group, values in stats.items()
        for stat, value in values.items()
        if keys is None or keys(stat)
    }
