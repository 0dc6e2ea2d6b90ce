"""History: per-epoch lists of the logged values (for the Python API)."""

from __future__ import annotations

import math

import lightning as L


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
