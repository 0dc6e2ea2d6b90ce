"""DivergenceGuard: stop training with a clear error as soon as the loss or a weight is NaN/Inf."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from kan_lightning.lit.faults import TrainingDiverged

from .common import any_rank, non_finite_parameters
from .graceful_shutdown import GracefulShutdown
from .last_checkpoint import LastCheckpoint


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where this run's last checkpoint goes (``LastCheckpoint`` or ``GracefulShutdown``)."""
    for callback in trainer.callbacks:
        if isinstance(callback, (LastCheckpoint, GracefulShutdown)):
            return callback.path
    return None


class DivergenceGuard(L.Callback):
    """Stop training with :class:`TrainingDiverged` when a training loss is NaN/Inf (or, with
    ``check_weights``, when a weight is), naming the optimizer step, the epoch and the batch.

    The check runs in ``on_train_batch_end``, before validation and before any checkpoint of
    that epoch is written, so the last checkpoint on disk stays the last good one.
    """

    def __init__(self, check_weights: bool = True) -> None:
        self.check_weights = bool(check_weights)
        self.checkpoint: str | None = None
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = float(loss.detach().float().reshape(-1)[0]) if isinstance(loss, torch.Tensor) and loss.numel() else None
        bad_loss = value is not None and not math.isfinite(value)
        bad_weights = non_finite_parameters(pl_module) if self.check_weights and not bad_loss else []
        if not any_rank(trainer, bad_loss or bool(bad_weights)):
            return
        step, epoch = self._step, trainer.current_epoch
        if bad_loss:
            what = f"the training loss is {value}"
        elif bad_weights:
            shown = ", ".join(bad_weights[:3]) + (", ..." if len(bad_weights) > 3 else "")
            what = f"the weights became non-finite ({shown}) after the optimizer step"
        else:
            what = "another rank's training loss or weights became non-finite"
        kept = self._kept_checkpoint(trainer)
        lr = self._learning_rate(trainer)
        message = (
            f"training diverged at step {step} (epoch {epoch}, batch {batch_idx}): {what}. "
            f"Training stopped before anything of this epoch was saved; {kept}. "
            f"Try a smaller optimizer.lr{f' (now {lr:g})' if lr is not None else ''}, gradient clipping "
            "(trainer.gradient_clip_val=1.0), data.normalize_targets=true, or a larger "
            "model.grid_range if the inputs leave the grid."
        )
        raise TrainingDiverged(message, step=step, epoch=epoch, batch_idx=batch_idx, value=value, checkpoint=self.checkpoint)

    def _kept_checkpoint(self, trainer: L.Trainer) -> str:
        self.checkpoint = None
        path = last_checkpoint_path(trainer)
        if path is None or not path.is_file():
            return "no checkpoint had been written yet"
        self.checkpoint = str(path)
        try:
            from kan_lightning.lit.checkpoint import config_targets, read_checkpoint

            # this run's own checkpoint: the targets of its own config are trusted
            saved = read_checkpoint(path, config_targets(getattr(trainer.lightning_module, "run_config", None)))
            return f"the last good checkpoint is {path} (epoch {saved.get('epoch')}, step {saved.get('global_step')})"
        except (OSError, ValueError):
            return f"the last checkpoint is {path}"

    @staticmethod
    def _learning_rate(trainer: L.Trainer) -> float | None:
        try:
            return float(trainer.optimizers[0].param_groups[0]["lr"])
        except (IndexError, KeyError, TypeError, ValueError):
            return None
