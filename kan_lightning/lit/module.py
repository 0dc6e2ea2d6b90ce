"""KANRegressor: any ``kan_lightning.nn`` model trained on MSE plus its regularization."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from kan_lightning.data.normalization import denormalize_y
from kan_lightning.lit.closure import ReevaluatingClosure, reevaluation_is_lean
from kan_lightning.lit.lean_lbfgs import lean_optimizer
from kan_lightning.lit.metrics import metrics_dtype, regression_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

STAGES = ("train", "val", "test")
# Inputs further than this fraction of the grid's width outside it are "far outside".
GRID_RANGE_TOLERANCE = 0.1


def grid_range_warning(x: Tensor, layer: nn.Module, tolerance: float = GRID_RANGE_TOLERANCE) -> str | None:
    """A warning when inputs ``x`` reach far outside the knot range of KAN ``layer`` (where its
    splines are zero and only the base branch acts), else ``None``."""
    grid = getattr(layer, "grid", None)
    order = getattr(layer, "spline_order", None)
    if grid is None or order is None or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != grid.shape[0]:
        return None
    lo, hi = grid[:, order].to(x), grid[:, -order - 1].to(x)
    margin = tolerance * (hi - lo)
    x_min, x_max = x.min(dim=0).values, x.max(dim=0).values
    far = (x_min < lo - margin) | (x_max > hi + margin)
    if not bool(far.any()):
        return None
    i = int(far.nonzero()[0, 0])
    outside = float(((x[:, i] < lo[i]) | (x[:, i] > hi[i])).float().mean())
    low, high = min(float(x_min[i]), float(lo[i])), max(float(x_max[i]), float(hi[i]))
    return (
        f"inputs lie far outside the first KAN layer's grid: input x{i} spans "
        f"[{float(x_min[i]):.4g}, {float(x_max[i]):.4g}] ({outside:.0%} of the training points outside) "
        f"but the grid covers [{float(lo[i]):.4g}, {float(hi[i]):.4g}] ({int(far.sum())} input(s) affected); "
        "outside its grid a spline is zero and only the base branch learns. Enable grid updates "
        "(callbacks.grid_update.every_n_steps=20), widen the grid (e.g. "
        f"model.grid_range=[{low:.3g},{high:.3g}]) or set data.normalize_inputs=true."
    )


@torch.no_grad()
def measure_network(
    model: nn.Module, x: Tensor, y: Tensor, stage: str, denormalize: Callable[[Tensor], Tensor], batch_size: int = 65536
) -> dict[str, float]:
    """``<stage>/loss`` (MSE on the scaled targets) and ``<stage>/mse, rmse, mae, r2`` (in the
    targets' units) of ``model`` on the whole of ``(x, y)`` (datamodule units), named as the epoch
    logs name them: the figures of a network other than the one last logged (the grid stage
    ``GridExtension`` delivers)."""
    param = next(model.parameters())
    metrics = regression_metrics(stage).to(param.device).set_dtype(metrics_dtype(param.device))
    squared, count = 0.0, 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        xb, yb = xb.to(device=param.device, dtype=param.dtype), yb.to(device=param.device, dtype=param.dtype)
        pred = model(xb)
        squared += float((pred.double() - yb.double()).square().sum())
        count += yb.numel()
        metrics.update(denormalize(pred).double(), denormalize(yb).double())
    return {f"{stage}/loss": squared / count, **{k: float(v) for k, v in metrics.compute().items()}}


def objective(model: nn.Module, x: Tensor, y: Tensor, regularize: bool = True) -> tuple[Tensor, Tensor, Tensor, dict]:
    """``(objective, mse, prediction, penalty terms)`` of ``model`` on ``(x, y)``: the MSE plus,
    with ``regularize``, the model's ``regularization_loss`` when it has one (what training
    minimizes; :class:`KANRegressor` and the multi-start's candidate fits share it)."""
    regularize = regularize and hasattr(model, "regularization_loss")
    if regularize and model.needs_edge_scales:
        pred, edge_scales = model.forward_with_edge_scales(x)
    else:
        pred, edge_scales = model(x), None
    mse = F.mse_loss(pred, y)
    loss = mse
    penalty_terms = {}
    if regularize:
        penalty, penalty_terms = model.regularization_loss(edge_scales)
        loss = mse + penalty
    return loss, mse, pred, penalty_terms


class KANRegressor(L.LightningModule):
    """Regression with a KAN (or the MLP baseline).

    The training objective (logged as ``train/objective``) is the MSE on the (possibly
    standardized) targets (logged as ``<stage>/loss``) plus the model's ``regularization_loss``
    when it has one. Metrics (MSE, RMSE, MAE, R^2) are reported in the
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
        # float64 as the datamodules' statistics (a float32 copy, made before a 64-bit trainer
        # converts the module, would round them); applied in the prediction's own dtype
        self.register_buffer("y_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("y_std", torch.ones((), dtype=torch.float64))
        # ModuleDict keys must not shadow Module attributes such as ``train``.
        self.metrics = nn.ModuleDict({f"{stage}_metrics": regression_metrics(stage) for stage in STAGES})
        # (global_step, batch_idx) of the last logged training batch: see _step
        self._logged_batch: tuple[int, int] | None = None
        # the closure of the optimizer step in progress, when it re-evaluates directly
        self._closure: ReevaluatingClosure | None = None

    # -- model ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        normalization = getattr(getattr(self.trainer, "datamodule", None), "normalization", None)
        if normalization:
            self.set_target_normalization(normalization)

    def on_fit_start(self) -> None:
        self._logged_batch = None  # global_step may start over in a new fit
        self._metrics_in_float64()
        self._warn_if_inputs_leave_grid()

    def on_validation_start(self) -> None:
        self._metrics_in_float64()

    def on_test_start(self) -> None:
        self._metrics_in_float64()

    def _metrics_in_float64(self) -> None:
        # torchmetrics ignores module.double(): without this a 64-bit run's metrics were
        # float32 roundings. (Here, once the trainer has placed the module on its device.)
        dtype = metrics_dtype(self.device)
        for metrics in self.metrics.values():
            if metrics["r2"].rss.dtype != dtype:  # (set_dtype walks every state)
                metrics.set_dtype(dtype)

    def _grid_updates_planned(self) -> bool:
        """Whether a grid-update callback will adapt the grids to the data in this fit."""
        for callback in self.trainer.callbacks:
            every, stop = getattr(callback, "every_n_steps", None), getattr(callback, "stop_step", None)
            if getattr(callback, "adapts_grids_to_data", False) and every and stop is not None and stop > self.trainer.global_step:
                return True
        return False

    def _warn_if_inputs_leave_grid(self) -> None:
        """Warn (once per module) when the training inputs reach far outside the first KAN
        layer's grid and no grid update is scheduled to follow them."""
        layers = getattr(self.model, "layers", None)
        x = getattr(getattr(self.trainer, "datamodule", None), "x_train", None)
        if getattr(self, "_grid_warned", False) or not layers or not isinstance(x, Tensor):
            return
        if self._grid_updates_planned():
            return
        message = grid_range_warning(x, layers[0])
        if message:
            self._grid_warned = True
            rank_zero_warn(message, category=UserWarning)

    def set_target_normalization(self, normalization: dict[str, Tensor]) -> None:
        """Take the datamodule's target standardization (``y_mean``, ``y_std``)."""
        self.y_mean.copy_(torch.as_tensor(normalization["y_mean"]).squeeze())
        self.y_std.copy_(torch.as_tensor(normalization["y_std"]).squeeze())

    def denormalize(self, y: Tensor) -> Tensor:
        return denormalize_y(y, {"y_mean": self.y_mean, "y_std": self.y_std})

    def _in_network_dtype(self, t: Tensor) -> Tensor:
        # a datamodule of another dtype than the network (float64 samples for a float32 network)
        return t.to(next(self.model.parameters()).dtype)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, batch_idx: int = 0) -> Tensor:
        x, y = map(self._in_network_dtype, batch)
        loss, mse, pred, penalty_terms = objective(self.model, x, y, regularize=stage == "train")
        if stage == "train":
            # LBFGS re-evaluates the closure (up to max_iter times, plus line-search trials) within
            # one optimizer step: log and count only the first evaluation, the loss at the step's
            # starting point as with one-evaluation optimizers; logging every trial point skewed
            # the epoch metrics and cost more than the evaluation itself.
            batch_key = (self.trainer.global_step, batch_idx)
            if batch_key == self._logged_batch:
                return loss
            self._logged_batch = batch_key
        log = dict(on_step=stage == "train", on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        for name, value in penalty_terms.items():
            self.log(f"reg/{name}", value, **log)
        # {stage}/loss is the MSE on the standardized targets in every stage, comparable between
        # train and val; train/objective is what the optimizer minimizes (loss + penalty).
        self.log(f"{stage}/loss", mse, prog_bar=stage != "test", **log)
        if stage == "train":
            self.log("train/objective", loss, **log)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(self.denormalize(pred.detach()), self.denormalize(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        closure = getattr(self, "_closure", None)  # (modules pickled before the attribute)
        if closure is not None:
            closure.record(batch)
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.denormalize(self.model(self._in_network_dtype(x)))

    # -- optimization -----------------------------------------------------------------------

    def configure_optimizers(self):
        # torch's LBFGS with a leaner direction computation, the same iterates (lit.lean_lbfgs)
        optimizer = lean_optimizer(self.optimizer_factory(self.parameters()))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.scheduler_interval}
        if isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        # Closure re-evaluations (LBFGS) without Lightning's per-call hooks where that changes
        # nothing (kan_lightning.lit.closure); one-evaluation optimizers call it once anyway.
        if optimizer_closure is None or not reevaluation_is_lean(self.trainer, self):
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self._closure = ReevaluatingClosure(self, optimizer_closure, optimizer, batch_idx)
        try:
            optimizer.step(closure=self._closure)
        finally:
            self._closure = None

    def rebuild_optimizers(self, keep_schedule: bool = True) -> None:
        """Recreate optimizers and schedulers, e.g. after a grid extension or pruning replaced
        parameters: the new optimizers hold the current ``Parameter`` objects and start with
        empty state (stale Adam moments and LBFGS curvature history must not carry over).

        With ``keep_schedule`` each new scheduler takes over its predecessor's progress
        (``last_epoch``, plateau counters...) and each param group its current learning rate,
        so a cosine or warm-up schedule continues instead of restarting. Under DDP the model is
        wrapped anew, so gradients of the new parameters are all-reduced (a collective: every
        rank must call this at the same point, which callbacks do).
        """
        from lightning.fabric.utilities.optimizer import _optimizers_to_device
        from lightning.pytorch.strategies import DDPStrategy
        from torch.nn.parallel import DistributedDataParallel

        trainer = self.trainer
        strategy = trainer.strategy
        old_optimizers = list(strategy.optimizers)
        old_schedulers = list(strategy.lr_scheduler_configs)
        if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
            strategy.model = strategy._setup_model(self)
            strategy._register_ddp_hooks()
        strategy.setup_optimizers(trainer)
        _optimizers_to_device(strategy.optimizers, strategy.root_device)
        if not keep_schedule:
            return
        for old, new in zip(old_optimizers, strategy.optimizers):
            old = getattr(old, "_optimizer", old)
            if len(old.param_groups) == len(new.param_groups):
                for old_group, new_group in zip(old.param_groups, new.param_groups):
                    for key in ("lr", "initial_lr"):
                        if key in old_group:
                            new_group[key] = old_group[key]
        for old, new in zip(old_schedulers, strategy.lr_scheduler_configs):
            if type(old.scheduler) is type(new.scheduler):
                state = old.scheduler.state_dict()
                # LambdaLR & co. store their functions' state; the new functions are equal.
                new.scheduler.load_state_dict(state)

    # -- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Enough to rebuild the network without the training config (see kan_lightning.commands.evaluate).
        checkpoint["kan_lightning"] = {
            "model_class": f"{type(self.model).__module__}.{type(self.model).__qualname__}",
            "model_config": dict(getattr(self.model, "config", {})),
            "run_config": self.run_config,
        }
