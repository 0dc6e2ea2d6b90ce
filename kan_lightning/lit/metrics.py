"""The regression metrics a run logs (MSE, RMSE, MAE, R^2), accumulated in the network's precision.

torchmetrics keeps its states in float32 through ``module.double()`` (only ``set_dtype``
changes them), so a 64-bit run's figures were float32 roundings: the states are float64
(:func:`metrics_dtype`) whatever the network's precision. torchmetrics' ``R2Score`` reads exactly
1 whenever the residual sum of squares is below 1e-4 in absolute terms, whatever the targets'
spread (a constant prediction of targets whose standard deviation is 1e-4 scored 1):
:class:`RSquared` computes ``1 - SSE / SST`` from the same sums without that shortcut.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection


def r_squared(sum_obs: Tensor, sum_sq_obs: Tensor, rss: Tensor, num_obs: int | Tensor) -> Tensor:
    """``1 - SSE / SST`` from per-output sums over ``num_obs`` rows, averaged over the outputs
    (the last dimension). An output with constant targets scores 1 if fitted exactly, else 0
    (as scikit-learn's ``r2_score``); fewer than two rows give NaN."""
    if int(num_obs) < 2:
        return torch.full(rss.shape[:-1], float("nan"), dtype=rss.dtype, device=rss.device)
    tss = sum_sq_obs - sum_obs * sum_obs / num_obs
    # constant up to the rounding of the sums (|tss| of constant targets is a few ulps of sum_sq)
    constant = tss <= 16 * torch.finfo(tss.dtype).eps * sum_sq_obs
    score = torch.where(constant, (rss == 0).to(rss.dtype), 1 - rss / torch.where(constant, torch.ones_like(tss), tss))
    return score.mean(-1)


class RSquared(Metric):
    """R^2 of predictions ``(N, out)`` or ``(N,)`` against targets, averaged over the outputs."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("sum_obs", "sum_sq_obs", "rss"):  # (1,) here, (out,) after the first update
            self.add_state(name, default=torch.zeros(1), dist_reduce_fx="sum")
        self.add_state("num_obs", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        dtype = self.rss.dtype
        preds, target = preds.to(dtype).reshape(target.shape[0], -1), target.to(dtype).reshape(target.shape[0], -1)
        self.sum_obs = self.sum_obs + target.sum(0)
        self.sum_sq_obs = self.sum_sq_obs + target.square().sum(0)
        self.rss = self.rss + (preds - target).square().sum(0)
        self.num_obs = self.num_obs + target.shape[0]

    def compute(self) -> Tensor:
        return r_squared(self.sum_obs, self.sum_sq_obs, self.rss, self.num_obs)


def regression_metrics(prefix: str | None = None) -> MetricCollection:
    """MSE, RMSE, MAE and R^2 (named ``<prefix>/mse``... with a prefix): what ``KANRegressor``
    logs, and what ``KANTrainer.metrics`` reports."""
    return MetricCollection(
        {"mse": MeanSquaredError(), "rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError(), "r2": RSquared()},
        prefix=f"{prefix}/" if prefix else None,
    )


def metrics_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype of the metrics' states on ``device``: float64 (MPS has none: float32 there)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
