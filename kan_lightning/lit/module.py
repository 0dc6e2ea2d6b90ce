"""KANRegressor: any ``kan_lightning.nn`` model trained on MSE plus its regularization."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

STAGES = ("train", "val", "test")


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "mse": MeanSquaredError(),
            "rmse": MeanSquaredError(squared=False),
            "mae": MeanAbsoluteError(),
            "r2": R2Score(),
        },
        prefix=f"{prefix}/",
    )


class KANRegressor(L.LightningModule):
    """Regression with a KAN (or the MLP baseline).

    The loss is the MSE on the (possibly standardized) targets plus the model's
    ``regularization_loss`` when it has one. Metrics (MSE, RMSE, MAE, R^2) are reported in the
    targets' original units: the target normalization of the datamodule is copied into buffers
    at setup, so it is saved with every checkpoint.

    Args:
        model: the network.
        optimizer: a factory ``optimizer(params) -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: a factory ``scheduler(optimizer) -> LRScheduler`` or ``None``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: the metric a ReduceLROnPlateau-style scheduler watches.
        run_config: the resolved run configuration, stored in checkpoints so that evaluation
            can rebuild the data without the original command line.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.model = model
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.run_config = run_config
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        # ModuleDict keys must not shadow Module attributes such as ``train``.
        self.metrics = nn.ModuleDict({f"{stage}_metrics": _metrics(stage) for stage in STAGES})

    # -- model ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        normalization = getattr(getattr(self.trainer, "datamodule", None), "normalization", None)
        if normalization:
            self.set_target_normalization(normalization)

    def set_target_normalization(self, normalization: dict[str, Tensor]) -> None:
        """Take the datamodule's target standardization (``y_mean``, ``y_std``)."""
        self.y_mean.copy_(torch.as_tensor(normalization["y_mean"]).squeeze())
        self.y_std.copy_(torch.as_tensor(normalization["y_std"]).squeeze())

    def denormalize(self, y: Tensor) -> Tensor:
        return y * self.y_std + self.y_mean

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        regularize = stage == "train" and hasattr(self.model, "regularization_loss")
        if regularize and self.model.needs_edge_scales:
            pred, edge_scales = self.model.forward_with_edge_scales(x)
        else:
            pred, edge_scales = self.model(x), None
        mse = F.mse_loss(pred, y)
        loss = mse
        log = dict(on_step=stage == "train", on_epoch=True, sync_dist=stage != "train", batch_size=x.shape[0])
        if regularize:
            penalty, terms = self.model.regularization_loss(edge_scales)
            loss = mse + penalty
            for name, value in terms.items():
                self.log(f"reg/{name}", value, **log)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", **log)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(self.denormalize(pred.detach()), self.denormalize(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.denormalize(self.model(x))

    # -- optimization -----------------------------------------------------------------------

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def rebuild_optimizers(self) -> None:
        """Recreate optimizers and schedulers, e.g. after a grid extension replaced parameters
        (stale moments and LBFGS curvature history must not carry over)."""
        self.trainer.strategy.setup_optimizers(self.trainer)

    # -- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Enough to rebuild the network without the training config (see kan_lightning.evaluate).
        checkpoint["kan_lightning"] = {
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "model_config": dict(getattr(self.model, "config", {})),
            "run_config": self.run_config,
        }
