"""The affine normalization of inputs and targets: fitted once on training data, applied and
undone everywhere else (data modules, the LightningModule's metrics, inference, formulas).

A normalization is a dict of tensors ``x_shift, x_scale, y_mean, y_std``:
``x_norm = (x - x_shift) / x_scale`` and ``y_norm = (y - y_mean) / y_std``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

NORM_KEYS = ("x_shift", "x_scale", "y_mean", "y_std")


def identity_normalization(input_dim: int) -> dict[str, Tensor]:
    return {
        "x_shift": torch.zeros(input_dim),
        "x_scale": torch.ones(input_dim),
        "y_mean": torch.zeros(1),
        "y_std": torch.ones(1),
    }


def fit_normalization(
    x: Tensor, y: Tensor, normalize_inputs: bool, normalize_targets: bool, domain: Any = None
) -> dict[str, Tensor]:
    """Affine maps fitted on (training) data: x min..max -> [-1, 1], y -> mean 0, std 1.

    With ``domain`` (``(low, high)`` per input: the box the data is sampled from) the inputs map
    the box, not the sample's range, to [-1, 1]: then no validation or test input falls outside
    [-1, 1], where a KAN's first grid ends and its splines extrapolate.
    """
    norm = identity_normalization(x.shape[1])
    if normalize_inputs:
        if domain is not None:
            low, high = torch.tensor(domain, dtype=x.dtype).T
        else:
            low, high = x.min(dim=0).values, x.max(dim=0).values
        half_range = (high - low) / 2
        norm["x_shift"] = (high + low) / 2
        # A constant feature has no range; leave its scale alone instead of dividing by zero.
        norm["x_scale"] = torch.where(half_range > 0, half_range, torch.ones_like(half_range))
    if normalize_targets:
        std = y.std(dim=0, correction=0)
        norm["y_mean"] = y.mean(dim=0)
        norm["y_std"] = torch.where(std > 0, std, torch.ones_like(std))
    return norm


def normalize_x(x: Tensor, norm: Mapping[str, Tensor]) -> Tensor:
    return (x - norm["x_shift"].to(x)) / norm["x_scale"].to(x)


def denormalize_x(x: Tensor, norm: Mapping[str, Tensor]) -> Tensor:
    return x * norm["x_scale"].to(x) + norm["x_shift"].to(x)


def normalize_y(y: Tensor, norm: Mapping[str, Tensor]) -> Tensor:
    return (y - norm["y_mean"].to(y)) / norm["y_std"].to(y)


def denormalize_y(y: Tensor, norm: Mapping[str, Tensor]) -> Tensor:
    return y * norm["y_std"].to(y) + norm["y_mean"].to(y)


def is_identity(norm: Mapping[str, Tensor] | None) -> bool:
    """Whether ``norm`` (or no normalization) leaves inputs and targets as they are."""
    if norm is None:
        return True
    return bool(
        (norm["x_shift"] == 0).all() and (norm["x_scale"] == 1).all() and (norm["y_mean"] == 0).all() and (norm["y_std"] == 1).all()
    )


class NormalizedModel(nn.Module):
    """A network trained on normalized data, mapping raw inputs to raw outputs:
    ``model((x - x_shift) / x_scale) * y_std + y_mean`` (traceable for TorchScript)."""

    def __init__(self, model: nn.Module, normalization: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        param = next(model.parameters())
        for key in NORM_KEYS:
            self.register_buffer(key, torch.as_tensor(normalization[key]).to(device=param.device, dtype=param.dtype).clone())

    def forward(self, x: Tensor) -> Tensor:
        norm = {key: getattr(self, key) for key in NORM_KEYS}
        return denormalize_y(self.model(normalize_x(x, norm)), norm)


def raw_units_network(model: nn.Module, normalization: Mapping[str, Tensor] | None) -> nn.Module:
    """``model`` mapping raw inputs to raw outputs: itself when ``normalization`` is the
    identity (or none), else wrapped in :class:`NormalizedModel`."""
    return model if is_identity(normalization) else NormalizedModel(model, normalization)
