"""GridExtension: train on ever finer grids (the KAN paper's grid extension)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from .common import check_epochs as _check_epochs
from .common import fraction, integer, nonnegative
from .common import fit_inputs as _fit_inputs
from .common import network as _network
from .common import rebuild_optimizers as _rebuild
from .common import save_checkpoint_atomically
from .best_stage import BestStage
from .polish import polish
from .stage_record import EVAL_SPLITS, stage_record


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
    ``{"stages": [...], "history": [...]}`` (stored in ``metrics.json`` by ``kan_lightning.commands.train``).

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
            first grid's whole range, so no input from it can leave a hidden grid, up to two
            spans of the data past the data; see :meth:`KAN.update_grid`).
        max_samples: use at most this many training inputs.
        evaluate_splits: splits (``train``, ``val``, ``test``) whose RMSE is recorded at the end
            of every stage; ``None`` or empty: none (stages still record grid and parameters).
        eval_batch_size: rows per forward pass of the stage evaluation.
        keep_best: deliver the stage with the lowest validation RMSE: ``val`` is evaluated at
            the end of every stage (added to ``evaluate_splits``), the network of the best stage
            so far is kept, and at the end of fit it is restored (grid included) if a later
            stage was worse, so a finer grid never makes the delivered model worse on
            validation. Selection never looks at ``test``. :meth:`report` adds ``delivered``.
        delivered_path: with ``keep_best``, where the delivered network is saved at the end of fit
            (a checkpoint ``kan-eval`` and ``kan-symbolic`` read; ``last.ckpt`` and the best one are
            saved at epoch ends, before a stage's polish); :meth:`report` adds
            ``delivered_checkpoint``. ``None``: not saved.
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
        polish_iterations, polish_smoothness: Levenberg-Marquardt iterations at the end of every
            stage, before it is evaluated, and its penalty weight (:func:`.polish.polish`); 0: none.
        polish_min_progress: end a polish early once 10 iterations lowered its objective by less
            than this fraction; 0: always ``polish_iterations``.
        polish_patience: early stopping inside each polish: keep the iterate with the lowest
            validation RMSE (every 5 iterations) and end once this many found none lower; ``None``: off.
        stage_patience: with ``keep_best``, end the fit once this many stages in a row have a
            validation RMSE no lower than the best stage's: the finer grids are not fitted (on
            the Feynman table, validation RMSE falls and then rises over the grids, and a
            stage's cost grows with G). ``None``: every grid.
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
        delivered_path: str | None = None,
        stage_grid_updates: int = 0,
        stage_grid_update_every: int = 5,
        refit_smoothness: float = 0.0,
        grid_margin_range: float = 0.0,
        polish_iterations: int = 0,
        polish_smoothness: float = 0.0,
        polish_min_progress: float = 0.0,
        polish_patience: int | None = None,
        stage_patience: int | None = None,
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
        self.grid_margin = nonnegative("grid_margin", grid_margin)
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
        self.delivered_path = Path(delivered_path) if delivered_path and self.keep_best else None
        if self.keep_best and "val" not in splits:
            splits.insert(0, "val")
        self.evaluate_splits = splits
        self.eval_batch_size = integer("eval_batch_size", eval_batch_size, 1)
        self.stage = 0
        self.history: list[dict] = []
        self.stages: list[dict] = []
        self._warned_no_data, self._fit_start = False, None
        self._best, self._wait, self._pending = math.inf, 0, False
        self.best_stage = BestStage()  # keep_best's choice
        self.stage_grid_updates = integer("stage_grid_updates", stage_grid_updates, 0)
        self.stage_grid_update_every = integer("stage_grid_update_every", stage_grid_update_every, 1)
        self.polishing = (
            integer("polish_iterations", polish_iterations, 0),
            nonnegative("polish_smoothness", polish_smoothness),
            fraction("polish_min_progress", polish_min_progress),
            None if polish_patience is None else integer("polish_patience", polish_patience, 1),
        )
        self.refit_smoothness = nonnegative("refit_smoothness", refit_smoothness)
        self.grid_margin_range = nonnegative("grid_margin_range", grid_margin_range)
        self.stage_patience = None if stage_patience is None else integer("stage_patience", stage_patience, 1)
        if self.stage_patience is not None and not self.keep_best:
            raise ValueError(f"stage_patience={stage_patience} needs keep_best=true (it counts stages worse than the best)")
        self.stopped = False  # stage_patience ended the fit

    @property
    def grid_size(self) -> int:
        return self.grids[self.stage]

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.monotonic()
        self.best_stage.measured = {}
        model = _network(pl_module)
        if not hasattr(model, "extend_grid"):
            raise TypeError(f"GridExtension needs a model with extend_grid (a KAN), got {type(model).__name__}")
        if model.grid_size != self.grid_size:
            raise ValueError(
                f"GridExtension: the model has grid_size={model.grid_size} but stage {self.stage} of "
                f"grids={self.grids} is {self.grid_size}; start the model on the first grid "
                f"(model.grid_size={self.grids[0]})"
            )
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
        if self.stopped:  # (also after a resume)
            trainer.should_stop = True
            return
        while self._due(trainer):
            if self._stop_here(trainer, pl_module):
                return
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
        model.update_grid(x, keep_input_range=self.keep_input_range, margin=margin, smoothness=self.refit_smoothness, **extra)

    def _stop_here(self, trainer, pl_module) -> bool:
        """With ``stage_patience``: record the stage that ends now and end the fit if the last
        ``stage_patience`` stages were all worse than the best one (this batch's step is the last)."""
        if self.stage_patience is None:
            return False
        self.record_stage(trainer, pl_module)
        best = self.best_stage.record
        if best is None or self.stage - best["stage"] < self.stage_patience:
            return False
        self.stopped = trainer.should_stop = True
        rank_zero_info(
            f"GridExtension: {self.stage - best['stage']} stage(s) since the best (grid {best['grid']}, val RMSE "
            f"{best['val/rmse']:.4g}); the grids {self.grids[self.stage + 1:]} are not fitted (stage_patience={self.stage_patience})"
        )
        return True

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
        model.extend_grid(
            new_size, x=x, keep_input_range=self.keep_input_range, margin=margin, smoothness=self.refit_smoothness, **extra
        )
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
        if not self.stopped:  # (a stopped fit recorded its last stage when it stopped)
            self.record_stage(trainer, pl_module)
        if self.keep_best:
            self.best_stage.restore(trainer, pl_module, self.stages[-1] if self.stages else None)
            if self.delivered_path is not None:
                save_checkpoint_atomically(trainer, self.delivered_path)
        elif self.polishing[0]:  # the last stage was polished after the last validation epoch
            self.best_stage.measured = self.best_stage.measure(trainer, pl_module)

    @property
    def delivered(self) -> dict | None:
        """The record of the stage delivered (keep_best: the lowest validation RMSE)."""
        return self.best_stage.record

    @property
    def delivered_metrics(self) -> dict[str, float]:
        """The delivered network's ``train/*``, ``val/*`` and ``grid/size``, measured at the end of
        fit (``keep_best``, or a polish): for the run record, in place of the last logged values."""
        return self.best_stage.measured

    def _evaluate(self, trainer, pl_module) -> dict:
        # (seconds since this fit started; earlier stage evaluations included: milliseconds)
        seconds = time.monotonic() - self._fit_start if self._fit_start is not None else None
        record, missing = stage_record(trainer, pl_module, self.evaluate_splits, self.eval_batch_size, seconds)
        if missing and not self._warned_no_data:
            self._warned_no_data = True
            rank_zero_info(f"GridExtension: no datamodule with x_{missing[0]}/y_{missing[0]}; stage RMSE not recorded")
        return record

    def record_stage(self, trainer, pl_module) -> dict | None:
        """Evaluate the current stage, append it to :attr:`stages` and log it (once per stage
        and step). Called on every rank at the same point: rank 0 computes, then broadcasts."""
        if self.stages and self.stages[-1]["stage"] == self.stage and self.stages[-1]["step"] == trainer.global_step:
            return None
        polish(trainer, pl_module, *self.polishing)  # (iterations, penalty weight, min progress, patience)
        record = self._evaluate(trainer, pl_module) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            record = trainer.strategy.broadcast(record, src=0)
        record = {"stage": self.stage, **record}
        self.stages.append(record)
        if self.keep_best:
            self.best_stage.consider(pl_module, record)
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
            if self.delivered_path is not None and self.delivered_path.exists():
                report["delivered_checkpoint"] = str(self.delivered_path)
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
            "stopped": self.stopped,
            **self.best_stage.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.stage = state_dict.get("stage", 0)
        self.history = list(state_dict.get("history", []))
        self.stages = list(state_dict.get("stages", []))
        self._best = state_dict.get("best", math.inf)
        self._wait = state_dict.get("wait", 0)
        self._pending = state_dict.get("pending", False)
        self.stopped = state_dict.get("stopped", False)
        self.best_stage.load_state_dict(state_dict)
        if self.at_epochs is None and self.at_steps is None and self.patience is None:
            self.at_epochs = state_dict.get("at_epochs")
