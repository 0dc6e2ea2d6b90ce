"""Scaling laws: power-law fits of error against grid size or parameter count, and parameter
matching between KANs and MLPs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PowerLaw:
    """``error ~= coefficient * size ** slope`` fitted on ``points`` (indices into the input)."""

    slope: float
    coefficient: float
    points: tuple[int, ...]

    def __call__(self, size: float) -> float:
        return self.coefficient * size**self.slope


def fit_power_law(sizes: Sequence[float], errors: Sequence[float]) -> PowerLaw:
    """Least-squares line through ``(log size, log error)``."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(errors, float))
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"need >= 2 positive finite points, got sizes={list(sizes)}, errors={list(errors)}")
    slope, intercept = np.polyfit(x, y, 1)
    return PowerLaw(float(slope), float(math.exp(intercept)), tuple(range(len(x))))


def fit_before_floor(sizes: Sequence[float], errors: Sequence[float], min_gain: float = 1.5) -> PowerLaw:
    """Fit the power law on the leading points that still improve: stop at the first size whose
    error is not at least ``min_gain`` times smaller than the previous one (the error floor set
    by optimization or float precision)."""
    errors = list(errors)
    end = 1
    while end < len(errors) and errors[end - 1] / errors[end] >= min_gain:
        end += 1
    if end < 2:
        raise ValueError(f"no decreasing run of errors to fit: {errors}")
    return fit_power_law(sizes[:end], errors[:end])


def kan_parameter_count(widths: Sequence[int], grid_size: int, spline_order: int) -> int:
    """Parameters of ``KAN(widths, grid_size, spline_order)``: per edge ``G + k`` spline
    coefficients, a base weight and a spline scale."""
    edges = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return edges * (grid_size + spline_order + 2)


def mlp_parameter_count(widths: Sequence[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def matching_mlp_widths(target_params: int, input_dim: int, output_dim: int, depth: int) -> list[int]:
    """Widths ``[input_dim, h x depth, output_dim]`` of the MLP whose parameter count is closest to
    ``target_params``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")

    def widths(h: int) -> list[int]:
        return [input_dim, *[h] * depth, output_dim]

    h = 1
    while mlp_parameter_count(widths(h + 1)) <= target_params:
        h += 1
    best = min((h, h + 1), key=lambda w: abs(mlp_parameter_count(widths(w)) - target_params))
    return widths(best)
