"""Per-model metrics of a stack, accumulated as ``kan-train`` logs them."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from kan_lightning.lit.metrics import metrics_dtype, r_squared
from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN


class StackedMetrics:
    """Per model: the batch-size-weighted mean of the batch losses (as Lightning reduces logged
    values), and MSE, RMSE, MAE, R^2 of the denormalized predictions from the sums
    ``KANRegressor``'s metrics keep (:mod:`kan_lightning.lit.metrics`): the losses in the compute
    dtype, the errors' and R^2's sums in the metrics' dtype (float64)."""

    def __init__(self, n_models: int, n_out: int, device: torch.device, dtype: torch.dtype) -> None:
        z = lambda *shape: torch.zeros(n_models, *shape, device=device, dtype=dtype)  # noqa: E731
        m = lambda *shape: torch.zeros(n_models, *shape, device=device, dtype=metrics_dtype(device))  # noqa: E731
        self.loss_sum, self.count = z(), 0
        self.sq, self.abs, self.n = m(), m(), 0
        self.sum_obs, self.sum_sq_obs, self.rss, self.num_obs = m(n_out), m(n_out), m(n_out), 0

    def update(self, loss: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``loss (M,)``, ``pred`` and ``target`` ``(M, B, out)`` in the targets' units."""
        batch = pred.shape[1]
        self.loss_sum += loss.detach() * batch
        self.count += batch
        err = pred - target
        squared = (err * err).sum(1)  # (M, out)
        self.sq += squared.sum(-1)
        self.abs += err.abs().sum(dim=(1, 2))
        self.n += err[0].numel()
        target = target.to(self.rss.dtype)
        self.sum_obs += target.sum(1)
        self.sum_sq_obs += (target * target).sum(1)
        self.rss += squared
        self.num_obs += batch

    def compute(self, stage: str) -> list[dict[str, float]]:
        mse = self.sq / self.n
        r2 = r_squared(self.sum_obs, self.sum_sq_obs, self.rss, self.num_obs)
        values = {"loss": self.loss_sum / self.count, "mse": mse, "rmse": mse.sqrt(), "mae": self.abs / self.n, "r2": r2}
        columns = {f"{stage}/{k}": v.tolist() for k, v in values.items()}
        return [{k: v[m] for k, v in columns.items()} for m in range(len(self.loss_sum))]


def batches(n: int, batch_size: Any) -> list[slice]:
    size = max(1, n) if batch_size == "full" else int(batch_size)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def denormalized(pred: Tensor, target: Tensor, y_mean: Tensor, y_std: Tensor) -> tuple[Tensor, Tensor]:
    """Predictions and targets ``(M, N, out)`` in the targets' own units, as KANRegressor.denormalize."""
    return pred.detach() * y_std + y_mean, target * y_std + y_mean


def evaluate(stack: StackedKAN, x: Tensor, y: Tensor, y_mean: Tensor, y_std: Tensor, batch_size, stage: str) -> list[dict[str, float]]:
    """The ``<stage>/...`` metrics of every model of ``stack`` on its own ``x[m]``, ``y[m]``."""
    metrics = StackedMetrics(stack.num_models, y.shape[-1], x.device, x.dtype)
    with torch.no_grad():
        for part in batches(x.shape[1], batch_size):
            pred = stack(x[:, part])
            loss = ((pred - y[:, part]) ** 2).mean(dim=(1, 2))
            metrics.update(loss, *denormalized(pred, y[:, part], y_mean, y_std))
    return metrics.compute(stage)


def shape_of(model: KAN) -> tuple:
    return tuple((tuple(layer.grid.shape), tuple(layer.spline_weight.shape)) for layer in model.layers)


def evaluate_models(models: Sequence[KAN], x: Tensor, y: Tensor, y_mean: Tensor, y_std: Tensor, batch_size, stage: str) -> list[dict[str, float]]:
    """:func:`evaluate` for plain KANs that may differ in grid size (after grid extension each
    model delivers its own best stage): those of one shape are evaluated as one stack."""
    groups: dict[tuple, list[int]] = {}
    for m, model in enumerate(models):
        groups.setdefault(shape_of(model), []).append(m)
    out: list[dict[str, float]] = [{} for _ in models]
    for members in groups.values():
        stack = StackedKAN([models[m] for m in members]).to(device=x.device, dtype=x.dtype)
        idx = torch.tensor(members, device=x.device)
        values = evaluate(stack, x[idx], y[idx], y_mean[idx], y_std[idx], batch_size, stage)
        for m, value in zip(members, values):
            out[m] = value
    return out
