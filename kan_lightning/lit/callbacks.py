"""Training-time KAN operations as Lightning callbacks."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info


def _training_inputs(trainer: L.Trainer, max_samples: int | None) -> torch.Tensor | None:
    """The whole training input set (identical on every DDP rank, so grids stay in sync)."""
    x = getattr(getattr(trainer, "datamodule", None), "x_train", None)
    if x is None:
        return None
    return x if max_samples is None else x[:max_samples]


class GridUpdate(L.Callback):
    """Adapt the KAN's grids to the training inputs every ``every_n_steps`` optimizer steps,
    from step 0 up to (not including) ``stop_step`` (pykan's ``grid_update_num`` and
    ``stop_grid_update_step``). Models without ``update_grid`` (the MLP) are left alone.

    Args:
        every_n_steps: steps between updates; 0 disables the callback.
        stop_step: no update at or after this global step.
        max_samples: use at most this many training inputs (``None``: all).
        grid_eps: override the layers' ``grid_eps`` (``None``: keep theirs).
    """

    def __init__(
        self, every_n_steps: int = 20, stop_step: int = 200, max_samples: int | None = None, grid_eps: float | None = None
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps!r}")
        if stop_step < 0:
            raise ValueError(f"stop_step must be >= 0, got {stop_step!r}")
        self.every_n_steps = every_n_steps
        self.stop_step = stop_step
        self.max_samples = max_samples
        self.grid_eps = grid_eps
        self.updates = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        model = getattr(pl_module, "model", pl_module)
        if not self.every_n_steps or step >= self.stop_step or step % self.every_n_steps:
            return
        if not hasattr(model, "update_grid"):
            return
        x = _training_inputs(trainer, self.max_samples)
        if x is None:
            x = batch[0]
        param = next(model.parameters())
        model.update_grid(x.to(device=param.device, dtype=param.dtype), grid_eps=self.grid_eps)
        self.updates += 1
        if self.updates == 1:
            rank_zero_info(f"GridUpdate: adapting grids every {self.every_n_steps} steps until step {self.stop_step}")

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state_dict: dict) -> None:
        self.updates = state_dict.get("updates", 0)


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` at the end of every training epoch, atomically (a kill
    while writing leaves the previous file intact). Lightning's ``save_last`` only refreshes
    it when a top-k checkpoint is saved, which is not enough to resume a killed run.

    The file holds the state of every ``ModelCheckpoint``, including which file is the best:
    it is written after they have saved (and rotated) theirs, whatever the callbacks' order.
    On resuming, checkpoint files that the restored state names but that no longer exist are
    forgotten (see :func:`~kan_lightning.lit.best_checkpoint.forget_missing_files`)."""

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs!r}")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILENAME

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_suffix(".ckpt.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # a collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Lightning calls the on_train_epoch_end of checkpoint callbacks last, in list order:
        # go after every other one (a new list: this hook is iterating over the old one).
        others = [c for c in trainer.callbacks if c is not self]
        trainer.callbacks = [c for c in others if not isinstance(c, Checkpoint)] + [c for c in others if isinstance(c, Checkpoint)] + [self]

    def on_fit_start(self, trainer, pl_module) -> None:
        from kan_lightning.lit.best_checkpoint import forget_missing_files

        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                forget_missing_files(callback)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the schedule callbacks


def _network(pl_module: L.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "model", pl_module)


def _fit_inputs(trainer: L.Trainer, batch, max_samples: int | None) -> torch.Tensor:
    """The datamodule's training inputs, or else rank 0's current batch broadcast to every rank
    (either way identical on all DDP ranks, so grids and pruning decisions stay in sync)."""
    x = _training_inputs(trainer, max_samples)
    if x is None:
        if batch is None:
            raise RuntimeError("no training inputs: use a datamodule with x_train or run at a batch")
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = trainer.strategy.broadcast(x.detach(), src=0)
    return x


def _rebuild(pl_module: L.LightningModule) -> None:
    rebuild = getattr(pl_module, "rebuild_optimizers", None)
    if rebuild is None:
        pl_module.trainer.strategy.setup_optimizers(pl_module.trainer)
    else:
        rebuild()


def _check_epochs(values, name: str) -> list[int] | None:
    if values is None:
        return None
    values = [int(v) for v in values]
    if any(v < 1 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing integers >= 1, got {values}")
    return values


# ---------------------------------------------------------------------------------------------
# Grid extension

EVAL_SPLITS = ("train", "val", "test")


class GridExtension(L.Callback):
    """Train on a sequence of ever finer grids (the KAN paper's grid extension).

    The model starts on ``grids[0]`` (its ``grid_size`` must equal it) and moves to the next
    grid either at the given epochs, at the given optimizer steps, or when the monitored
    validation loss has not improved by ``min_delta`` for ``patience`` validations. Without
    any of those, the stages share ``trainer.max_epochs`` equally. At a switch the coefficients
    are refit by least squares with ``model.extend_grid(G, x=<training inputs>)`` (the grids
    follow the data, as in pykan's ``refine``) and the optimizers are rebuilt with
    ``pl_module.rebuild_optimizers()``: the new coefficient tensors are new ``Parameter`` objects,
    and Adam moments or LBFGS curvature pairs of the old ones would be wrong.

    Logs ``grid/size`` every epoch and, at each switch, ``grid/val_loss_at_switch`` (the
    monitored value reached on the previous grid). :attr:`history` lists every switch.

    With ``evaluate_splits`` (e.g. ``[train, test]``) the end of every stage (just before each
    switch, and at the end of fit) is evaluated too: the RMSE of the model on those splits of
    ``trainer.datamodule`` (``x_<split>``/``y_<split>``, whole split, in the targets' original
    units through ``pl_module.denormalize``). :attr:`stages` lists
    ``{stage, grid, epoch, step, num_parameters, time_s, <split>/rmse...}`` (``epoch``: epochs
    completed; ``time_s``: seconds since the fit started) and
    each value goes to the loggers as ``grid_stage/<split>_rmse`` (also ``grid_stage/num_parameters``)
    with the grid size as the step. Under DDP rank 0 computes on its full copy of the data and
    broadcasts the record, so every rank keeps the same list. :meth:`report` returns
    ``{"stages": [...], "history": [...]}`` (stored in ``metrics.json`` by ``kan_lightning.train``).

    Args:
        grids: grid sizes, one per stage.
        at_epochs: ``len(grids) - 1`` increasing epochs; stage ``i + 1`` starts at ``at_epochs[i]``.
        at_steps: the same in optimizer steps.
        patience: switch after this many validations without improvement.
        monitor, min_delta: the metric (lower is better) and the improvement patience needs.
        use_data: refit on the training inputs (``True``) or on each grid's range (``False``).
        keep_input_range: with ``use_data``, the first layer's grid keeps covering its range
            (the domain the inputs were scaled to) instead of shrinking to the training sample's:
            test inputs just outside the sample then stay on the grid.
        grid_margin: with ``use_data``, the other grids span their inputs' range widened by this
            many grid intervals per side (inputs a little past the training extremes then stay
            in the outermost fitted intervals instead of past the grid).
        hidden_range: with ``use_data``, how the hidden grids' ranges are set: ``"margin"`` (the
            activations' range plus ``grid_margin``) or ``"interval"`` (interval bounds over the
            first grid's whole range, so no input from it can leave a hidden grid; see
            :meth:`KAN.update_grid`).
        max_samples: use at most this many training inputs.
        evaluate_splits: splits (``train``, ``val``, ``test``) whose RMSE is recorded at the end
            of every stage; ``None`` or empty: none (stages still record grid and parameters).
        eval_batch_size: rows per forward pass of the stage evaluation.
        keep_best: deliver the stage with the lowest validation RMSE: ``val`` is evaluated at
            the end of every stage (added to ``evaluate_splits``), the network of the best stage
            so far is kept, and at the end of fit it is restored (grid included) if a later
            stage was worse, so a finer grid never makes the delivered model worse on
            validation. Selection never looks at ``test``. :meth:`report` adds ``delivered``.
        stage_grid_updates: with ``use_data``, in every stage also fit the grids to the training
            inputs (as at a switch) every ``stage_grid_update_every`` steps during its first
            ``stage_grid_updates * stage_grid_update_every`` steps (pykan's ``fit`` does 10 every
            5 steps); 0: only at the switches.
        grid_margin_range: with ``use_data``, widen the other grids by this fraction of their
            inputs' range per side as well, at every grid size (``grid_margin`` is in intervals,
            so it shrinks as the grid is refined, while test inputs go past the training
            sample's extremes by the same amount at any grid).
        refit_smoothness: weight of the second-difference penalty in the coefficient refits at
            switches and grid updates (:func:`~kan_lightning.nn.refit.penalized_fit_coefficients`:
            coefficients with little data under them follow their neighbours instead of a ridge
            toward 0); 0: the plain least-squares refit.
    """

    def __init__(
        self,
        grids=(3, 5, 10, 20, 50),
        at_epochs=None,
        at_steps=None,
        patience: int | None = None,
        monitor: str = "val/loss",
        min_delta: float = 0.0,
        use_data: bool = True,
        keep_input_range: bool = False,
        grid_margin: float = 0.0,
        hidden_range: str = "margin",
        max_samples: int | None = None,
        evaluate_splits=None,
        eval_batch_size: int = 65536,
        keep_best: bool = False,
        stage_grid_updates: int = 0,
        stage_grid_update_every: int = 5,
        refit_smoothness: float = 0.0,
        grid_margin_range: float = 0.0,
    ) -> None:
        grids = [int(g) for g in grids]
        if not grids or any(g < 1 for g in grids):
            raise ValueError(f"grids must be a non-empty list of positive integers, got {grids}")
        given = [name for name, v in (("at_epochs", at_epochs), ("at_steps", at_steps), ("patience", patience)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of at_epochs, at_steps, patience; got {given}")
        self.grids = grids
        self.at_epochs = _check_epochs(at_epochs, "at_epochs")
        self.at_steps = _check_epochs(at_steps, "at_steps")
        for name, values in (("at_epochs", self.at_epochs), ("at_steps", self.at_steps)):
            if values is not None and len(values) != len(grids) - 1:
                raise ValueError(f"{name} needs len(grids) - 1 = {len(grids) - 1} entries, got {values}")
        if patience is not None and (isinstance(patience, bool) or int(patience) < 1):
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.patience = None if patience is None else int(patience)
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.use_data = use_data
        self.keep_input_range = bool(keep_input_range)
        if isinstance(grid_margin, bool) or not (float(grid_margin) >= 0 and math.isfinite(float(grid_margin))):
            raise ValueError(f"grid_margin must be a finite number >= 0, got {grid_margin!r}")
        self.grid_margin = float(grid_margin)
        from kan_lightning.nn.network import HIDDEN_RANGES

        if hidden_range not in HIDDEN_RANGES:
            raise ValueError(f"hidden_range must be one of {HIDDEN_RANGES}, got {hidden_range!r}")
        self.hidden_range = hidden_range
        self.max_samples = max_samples
        splits = [str(v) for v in (evaluate_splits or [])]
        unknown = [v for v in splits if v not in EVAL_SPLITS]
        if unknown or len(set(splits)) != len(splits):
            raise ValueError(f"evaluate_splits must be distinct names out of {EVAL_SPLITS}, got {splits}")
        self.keep_best = bool(keep_best)
        if self.keep_best and "val" not in splits:
            splits.insert(0, "val")
        self.evaluate_splits = splits
        if isinstance(eval_batch_size, bool) or int(eval_batch_size) < 1:
            raise ValueError(f"eval_batch_size must be an integer >= 1, got {eval_batch_size!r}")
        self.eval_batch_size = int(eval_batch_size)
        self.stage = 0
        self.history: list[dict] = []
        self.stages: list[dict] = []
        self._warned_no_data = False
        self._fit_start: float | None = None
        self._best = math.inf
        self._wait = 0
        self._pending = False
        # keep_best: the stage record and a copy of the network's state of the best stage so far
        self.delivered: dict | None = None
        self._best_state: dict | None = None
        self._best_widths: list[int] | None = None
        for name, v in (("stage_grid_updates", stage_grid_updates), ("stage_grid_update_every", stage_grid_update_every)):
            if isinstance(v, bool) or int(v) != v or v < (0 if name == "stage_grid_updates" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'stage_grid_updates' else 1}, got {v!r}")
        self.stage_grid_updates, self.stage_grid_update_every = int(stage_grid_updates), int(stage_grid_update_every)
        if isinstance(refit_smoothness, bool) or not (float(refit_smoothness) >= 0 and math.isfinite(float(refit_smoothness))):
            raise ValueError(f"refit_smoothness must be a finite number >= 0, got {refit_smoothness!r}")
        self.refit_smoothness = float(refit_smoothness)
        if isinstance(grid_margin_range, bool) or not (float(grid_margin_range) >= 0 and math.isfinite(float(grid_margin_range))):
            raise ValueError(f"grid_margin_range must be a finite number >= 0, got {grid_margin_range!r}")
        self.grid_margin_range = float(grid_margin_range)

    @property
    def grid_size(self) -> int:
        return self.grids[self.stage]

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.monotonic()
        model = _network(pl_module)
        if not hasattr(model, "extend_grid"):
            raise TypeError(f"GridExtension needs a model with extend_grid (a KAN), got {type(model).__name__}")
        if model.grid_size != self.grid_size:
            raise ValueError(
                f"GridExtension: the model has grid_size={model.grid_size} but stage {self.stage} of "
                f"grids={self.grids} is {self.grid_size}; start the model on the first grid "
                f"(model.grid_size={self.grids[0]})"
            )
        if self.refit_smoothness:
            from kan_lightning.nn.refit import set_refit_smoothness

            set_refit_smoothness(model, self.refit_smoothness)
        if self.at_epochs is None and self.at_steps is None and self.patience is None and len(self.grids) > 1:
            epochs = trainer.max_epochs
            if epochs is None or epochs < len(self.grids):
                raise ValueError(
                    f"GridExtension without at_epochs/at_steps/patience splits max_epochs over the "
                    f"{len(self.grids)} grids, but max_epochs={epochs}"
                )
            self.at_epochs = [round(i * epochs / len(self.grids)) for i in range(1, len(self.grids))]

    def _due(self, trainer) -> bool:
        if self.stage >= len(self.grids) - 1:
            return False
        if self.at_epochs is not None:
            return trainer.current_epoch >= self.at_epochs[self.stage]
        if self.at_steps is not None:
            return trainer.global_step >= self.at_steps[self.stage]
        return self._pending

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        while self._due(trainer):
            self.extend(trainer, pl_module, batch)
        if self.stage_grid_updates and self.use_data:
            since = trainer.global_step - (self.history[-1]["step"] if self.history else 0)
            every = self.stage_grid_update_every
            if since % every == 0 and since < self.stage_grid_updates * every:
                self.update_grids(trainer, pl_module, batch)

    def update_grids(self, trainer, pl_module, batch=None) -> None:
        """Fit the current stage's grids to the training inputs, as at a switch (same size)."""
        model = _network(pl_module)
        param = next(model.parameters())
        x = _fit_inputs(trainer, batch, self.max_samples).to(device=param.device, dtype=param.dtype)
        extra = {"hidden_range": self.hidden_range} if self.hidden_range != "margin" else {}
        margin = self.grid_margin + self.grid_margin_range * self.grid_size
        model.update_grid(x, keep_input_range=self.keep_input_range, margin=margin, **extra)

    def extend(self, trainer, pl_module, batch=None) -> None:
        """Move to the next grid now: refit the coefficients and rebuild the optimizers."""
        model = _network(pl_module)
        new_size = self.grids[self.stage + 1]
        value = trainer.callback_metrics.get(self.monitor)
        value = float(value) if value is not None else math.nan
        self.record_stage(trainer, pl_module)
        x = None
        if self.use_data:
            param = next(model.parameters())
            x = _fit_inputs(trainer, batch, self.max_samples).to(device=param.device, dtype=param.dtype)
        extra = {"hidden_range": self.hidden_range} if self.hidden_range != "margin" else {}
        margin = self.grid_margin + self.grid_margin_range * new_size  # (intervals per side)
        model.extend_grid(new_size, x=x, keep_input_range=self.keep_input_range, margin=margin, **extra)
        _rebuild(pl_module)
        self.history.append(
            {
                "from": self.grid_size,
                "to": new_size,
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                self.monitor: value,
            }
        )
        self.stage += 1
        self._best, self._wait, self._pending = math.inf, 0, False
        if math.isfinite(value):
            pl_module.log("grid/val_loss_at_switch", value, on_step=False, on_epoch=True, sync_dist=False)
        rank_zero_info(
            f"GridExtension: grid {self.history[-1]['from']} -> {new_size} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step} ({self.monitor}={value:.4g})"
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.patience is None or trainer.sanity_checking or self.stage >= len(self.grids) - 1:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if value < self._best - self.min_delta:
            self._best, self._wait = value, 0
        else:
            self._wait += 1
            if self._wait >= self.patience:
                self._pending = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("grid/size", float(_network(pl_module).grid_size), on_step=False, on_epoch=True, sync_dist=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.record_stage(trainer, pl_module)
        if self.keep_best:
            self.restore_best(trainer, pl_module)

    # -- best stage -------------------------------------------------------------------------

    def _keep_if_best(self, pl_module, record: dict) -> None:
        value = record.get("val/rmse")
        if value is None or not math.isfinite(value):
            return
        model = _network(pl_module)
        widths = list(getattr(model, "layers_hidden", []))
        # a network pruned since the best stage cannot take its state back: only the stages of
        # the current widths compete
        if self.delivered is None or widths != self._best_widths or value < self.delivered["val/rmse"]:
            self.delivered, self._best_widths = dict(record), widths
            state = model.state_dict()
            self._best_state = {k: v.detach().clone() for k, v in state.items()}

    def restore_best(self, trainer, pl_module) -> None:
        """Load the best stage's network (its grids too) unless the current one is it."""
        if self.delivered is None or self._best_state is None:
            rank_zero_info("GridExtension: keep_best found no finite validation RMSE; delivering the last stage")
            return
        last = self.stages[-1] if self.stages else None
        if last is not None and last["stage"] == self.delivered["stage"] and last["step"] == self.delivered["step"]:
            return
        model = _network(pl_module)
        model.load_state_dict(self._best_state)
        if isinstance(getattr(model, "config", None), dict) and "grid_size" in model.config:
            model.config["grid_size"] = model.grid_size
        _rebuild(pl_module)  # the optimizers held the last stage's parameters
        rank_zero_info(
            f"GridExtension: delivering stage {self.delivered['stage']} (grid {self.delivered['grid']}, "
            f"val RMSE {self.delivered['val/rmse']:.4g}); the last stage had val RMSE "
            f"{(last or {}).get('val/rmse', math.nan):.4g}"
        )

    # -- stage evaluation -------------------------------------------------------------------

    @torch.no_grad()
    def split_rmse(self, pl_module, x: torch.Tensor, y: torch.Tensor) -> float:
        """RMSE of ``pl_module``'s network on ``(x, y)`` (datamodule units) in the targets'
        original units, accumulated in float64."""
        model = _network(pl_module)
        param = next(model.parameters())
        denormalize = getattr(pl_module, "denormalize", None) or (lambda t: t)
        total, count = 0.0, 0
        for start in range(0, x.shape[0], self.eval_batch_size):
            xb = x[start : start + self.eval_batch_size].to(device=param.device, dtype=param.dtype)
            yb = y[start : start + self.eval_batch_size].to(device=param.device, dtype=param.dtype)
            err = denormalize(model(xb)).double() - denormalize(yb).double()
            total += float(err.pow(2).sum())
            count += err.numel()
        return math.sqrt(total / count) if count else math.nan

    def _evaluate(self, trainer, pl_module) -> dict:
        model = _network(pl_module)
        record = {
            "grid": int(getattr(model, "grid_size", self.grid_size)),
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "num_parameters": int(sum(p.numel() for p in model.parameters())),
            # seconds since this fit started (earlier stage evaluations included: milliseconds)
            "time_s": time.monotonic() - self._fit_start if self._fit_start is not None else None,
        }
        datamodule = getattr(trainer, "datamodule", None)
        for split in self.evaluate_splits:
            x, y = getattr(datamodule, f"x_{split}", None), getattr(datamodule, f"y_{split}", None)
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                if not self._warned_no_data:
                    self._warned_no_data = True
                    rank_zero_info(f"GridExtension: no datamodule with x_{split}/y_{split}; stage RMSE not recorded")
                continue
            record[f"{split}/rmse"] = self.split_rmse(pl_module, x, y)
        return record

    def record_stage(self, trainer, pl_module) -> dict | None:
        """Evaluate the current stage, append it to :attr:`stages` and log it (once per stage
        and step). Called on every rank at the same point: rank 0 computes, then broadcasts."""
        if self.stages and self.stages[-1]["stage"] == self.stage and self.stages[-1]["step"] == trainer.global_step:
            return None
        record = self._evaluate(trainer, pl_module) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            record = trainer.strategy.broadcast(record, src=0)
        record = {"stage": self.stage, **record}
        self.stages.append(record)
        if self.keep_best:
            self._keep_if_best(pl_module, record)
        if trainer.is_global_zero:
            metrics = {f"grid_stage/{k.replace('/', '_')}": float(v) for k, v in record.items() if k.endswith("/rmse")}
            metrics["grid_stage/num_parameters"] = float(record["num_parameters"])
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=record["grid"])
            values = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k.endswith("/rmse"))
            rank_zero_info(
                f"GridExtension: stage {self.stage} (grid {record['grid']}, {record['num_parameters']} parameters) "
                f"ended at epoch {record['epoch']}, step {record['step']}" + (f": {values}" if values else "")
            )
        return record

    def report(self) -> dict:
        """``{"stages": [...], "history": [...]}`` for the run record (``metrics.json``); with
        ``keep_best`` also ``delivered``: the record of the stage delivered (lowest val RMSE)."""
        report = {"stages": [dict(s) for s in self.stages], "history": [dict(h) for h in self.history]}
        if self.keep_best:
            report["delivered"] = dict(self.delivered) if self.delivered else None
        return report

    def state_dict(self) -> dict:
        return {
            "stage": self.stage,
            "history": self.history,
            "stages": self.stages,
            "best": self._best,
            "wait": self._wait,
            "pending": self._pending,
            "at_epochs": self.at_epochs,
            "delivered": self.delivered,
            "best_state": self._best_state,
            "best_widths": self._best_widths,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.stage = state_dict.get("stage", 0)
        self.history = list(state_dict.get("history", []))
        self.stages = list(state_dict.get("stages", []))
        self._best = state_dict.get("best", math.inf)
        self._wait = state_dict.get("wait", 0)
        self._pending = state_dict.get("pending", False)
        self.delivered = state_dict.get("delivered")
        self._best_state = state_dict.get("best_state")
        self._best_widths = state_dict.get("best_widths")
        if self.at_epochs is None and self.at_steps is None and self.patience is None:
            self.at_epochs = state_dict.get("at_epochs")


# ---------------------------------------------------------------------------------------------
# Regularization schedule


SCHEDULE_SHAPES = ("linear", "cosine", "geometric")


class RegularizationSchedule(L.Callback):
    """Move one penalty weight ``model.regularization[term]`` from ``start`` to ``end``
    (the guide's progressive sparsification), set at the start of every training epoch and
    logged as ``reg_weight/<term>``.

    The weight is ``start`` up to ``start_epoch``, ``end`` from ``end_epoch`` on (default: the
    last epoch), and in between follows ``shape``: ``linear``, ``cosine`` (half a cosine, flat at
    both ends) or ``geometric`` (linear in log space; needs both weights > 0). With
    ``start_epoch == end_epoch`` it is a step (e.g. switching regularization off for fine-tuning).
    """

    def __init__(
        self,
        term: str = "l1",
        start: float = 1e-3,
        end: float = 1e-1,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        shape: str = "linear",
    ) -> None:
        from kan_lightning.nn.network import REGULARIZATION_TERMS

        if term not in REGULARIZATION_TERMS:
            raise ValueError(f"unknown regularization term {term!r}; known: {', '.join(REGULARIZATION_TERMS)}")
        if shape not in SCHEDULE_SHAPES:
            raise ValueError(f"shape must be one of {SCHEDULE_SHAPES}, got {shape!r}")
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < 0:
            raise ValueError(f"start and end must be finite and >= 0, got {start!r}, {end!r}")
        if shape == "geometric" and (start <= 0 or end <= 0):
            raise ValueError("shape='geometric' needs start > 0 and end > 0")
        if start_epoch < 0 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(f"need 0 <= start_epoch <= end_epoch, got {start_epoch}, {end_epoch}")
        self.term = term
        self.start = start
        self.end = end
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self.shape = shape

    def value(self, epoch: int, end_epoch: int | None = None) -> float:
        """The weight in ``epoch`` (``end_epoch`` replaces a missing ``self.end_epoch``)."""
        last = self.end_epoch if self.end_epoch is not None else end_epoch
        if last is None:
            raise ValueError("RegularizationSchedule needs end_epoch (or a trainer with max_epochs)")
        last = max(last, self.start_epoch)
        if epoch >= last:
            return self.end
        if epoch <= self.start_epoch:
            return self.start
        progress = (epoch - self.start_epoch) / (last - self.start_epoch)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * progress
        if self.shape == "cosine":
            return self.start + (self.end - self.start) * 0.5 * (1 - math.cos(math.pi * progress))
        return self.start * (self.end / self.start) ** progress

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        model = _network(pl_module)
        if not isinstance(getattr(model, "regularization", None), dict):
            return
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else None
        model.regularization[self.term] = self.value(trainer.current_epoch, last)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        model = _network(pl_module)
        if isinstance(getattr(model, "regularization", None), dict):
            pl_module.log(f"reg_weight/{self.term}", model.regularization[self.term], on_step=False, on_epoch=True)


# ---------------------------------------------------------------------------------------------
# Pruning


class Pruning(L.Callback):
    """Prune the KAN once, at the start of epoch ``at_epoch``, on the training inputs.

    Hidden nodes whose incoming or outgoing activation score is at most ``threshold`` are
    removed (:meth:`KAN.prune`); with ``edge_threshold`` weak edges of the result are then
    masked. The smaller network replaces ``pl_module.model`` and the optimizers are rebuilt.
    Logs ``prune/width_<l>`` for every width and ``prune/num_parameters``; :attr:`widths` keeps
    the widths before and after.

    Checkpoints keep working: while this callback is attached, loading a state dict whose
    KAN widths differ from the module's (resuming after the pruning, or testing a "best"
    checkpoint from before it) first rebuilds ``pl_module.model`` with the saved widths.
    """

    def __init__(self, at_epoch: int = 0, threshold: float = 1e-2, edge_threshold: float | None = None, max_samples: int | None = None) -> None:
        if at_epoch < 0:
            raise ValueError(f"at_epoch must be >= 0, got {at_epoch!r}")
        if not threshold >= 0 or (edge_threshold is not None and not edge_threshold >= 0):
            raise ValueError(f"thresholds must be >= 0, got {threshold!r}, {edge_threshold!r}")
        self.at_epoch = int(at_epoch)
        self.threshold = float(threshold)
        self.edge_threshold = edge_threshold
        self.max_samples = max_samples
        self.done = False
        self.widths: dict[str, list[int]] = {}
        self._hooked: set[int] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if id(pl_module) not in self._hooked:
            pl_module.register_load_state_dict_pre_hook(_match_saved_widths)
            self._hooked.add(id(pl_module))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.done or trainer.current_epoch < self.at_epoch:
            return
        self.prune(trainer, pl_module, batch)

    def prune(self, trainer, pl_module, batch=None) -> None:
        model = _network(pl_module)
        if not hasattr(model, "prune"):
            raise TypeError(f"Pruning needs a model with prune (a KAN), got {type(model).__name__}")
        param = next(model.parameters())
        x = _fit_inputs(trainer, batch, self.max_samples).to(device=param.device, dtype=param.dtype)
        pruned = model.prune(x, threshold=self.threshold)
        if self.edge_threshold is not None:
            pruned.prune_edges(self.edge_threshold, x)
        pl_module.model = pruned
        _rebuild(pl_module)
        self.done = True
        self.widths = {"before": list(model.layers_hidden), "after": list(pruned.layers_hidden)}
        for l, width in enumerate(pruned.layers_hidden):
            pl_module.log(f"prune/width_{l}", float(width), on_step=False, on_epoch=True)
        pl_module.log("prune/num_parameters", float(sum(p.numel() for p in pruned.parameters())), on_step=False, on_epoch=True)
        rank_zero_info(f"Pruning: widths {self.widths['before']} -> {self.widths['after']} at epoch {trainer.current_epoch}")

    def state_dict(self) -> dict:
        return {"done": self.done, "widths": self.widths}

    def load_state_dict(self, state_dict: dict) -> None:
        self.done = state_dict.get("done", False)
        self.widths = dict(state_dict.get("widths", {}))


def _match_saved_widths(module, state_dict, prefix, *args) -> None:
    """A load_state_dict pre-hook: rebuild ``module.model`` (a KAN) with the widths stored in
    ``state_dict`` when they differ (grids and weights are then loaded as usual)."""
    from kan_lightning.nn import KAN

    model = getattr(module, "model", None)
    if not isinstance(model, KAN):
        return
    key = prefix + "model.layers.{}.base_weight"
    n = len(model.layers)
    shapes = [state_dict.get(key.format(i)) for i in range(n)]
    if any(s is None for s in shapes) or key.format(n) in state_dict:
        return  # another depth: let loading report it
    widths = [int(shapes[0].shape[1])] + [int(s.shape[0]) for s in shapes]
    if widths == list(model.layers_hidden):
        return
    config = {**model.config, "layers_hidden": widths, "regularization": dict(model.regularization)}
    if "base_activation" not in config:
        config["base_activation"] = model.layers[0].base_activation
    param = next(model.parameters())
    module.model = KAN(**config).to(device=param.device, dtype=param.dtype)
    rank_zero_info(f"Pruning: rebuilt the network with the saved widths {widths}")


# ---------------------------------------------------------------------------------------------
# Statistics and history


class GradientStats(L.Callback):
    """Log gradient statistics (norm, max, mean per parameter group; see
    :func:`kan_lightning.lit.stats.analyze_gradients`) to every logger every ``every_n_steps``
    optimizer steps, as ``grad/<group>/<stat>`` and ``grad/total_norm``. With ``activations``,
    also each layer's input and edge statistics on the training batch
    (:func:`~kan_lightning.lit.stats.activation_stats`) as ``act/layers.<l>/<stat>``.
    The newest values are kept in :attr:`latest`.
    """

    def __init__(self, every_n_steps: int = 50, group_by: str = "parameter", activations: bool = False) -> None:
        from kan_lightning.lit.stats import GROUPINGS

        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        if group_by not in GROUPINGS:
            raise ValueError(f"group_by must be one of {GROUPINGS}, got {group_by!r}")
        self.every_n_steps = int(every_n_steps)
        self.group_by = group_by
        self.activations = activations
        self.latest: dict[str, float] = {}
        self._logged_step = -1

    def _log(self, trainer, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from kan_lightning.lit.stats import analyze_gradients, flatten_stats, total_grad_norm

        step = trainer.global_step
        # LBFGS evaluates its closure several times per step: log the first gradient only.
        if step % self.every_n_steps or step == self._logged_step:
            return
        self._logged_step = step
        stats = analyze_gradients(_network(pl_module), self.group_by)
        metrics = flatten_stats(stats, "grad", keys=lambda k: k != "numel")
        metrics["grad/total_norm"] = total_grad_norm(stats)
        self._log(trainer, metrics)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.activations or (trainer.global_step - 1) % self.every_n_steps:
            return
        from kan_lightning.lit.stats import activation_stats, flatten_stats

        model = _network(pl_module)
        if not hasattr(model, "activations"):
            return
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._log(trainer, flatten_stats(activation_stats(model, x), "act"))


class History(L.Callback):
    """Per-epoch lists of the logged training and validation values (for the Python API).

    ``history`` maps ``epoch``, ``train_loss``, ``val_loss``, ``train_mse``, ``val_mse`` and
    ``lr`` (the first param group's learning rate during the epoch) to lists; a value not
    logged in an epoch is ``nan``.
    """

    KEYS = {"train_loss": "train/objective_epoch", "val_loss": "val/loss", "train_mse": "train/mse", "val_mse": "val/mse"}

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"epoch": [], "lr": [], **{k: [] for k in self.KEYS}}
        self._lr = math.nan

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Epoch schedulers step before on_train_epoch_end: read the epoch's rate here.
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.history["epoch"].append(trainer.current_epoch)
        for key, name in self.KEYS.items():
            value = metrics.get(name)
            self.history[key].append(float(value) if value is not None else math.nan)
        self.history["lr"].append(self._lr)
