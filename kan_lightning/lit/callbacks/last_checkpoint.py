"""LastCheckpoint: ``last.ckpt`` written atomically at the end of every epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from .common import save_checkpoint_atomically


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
        save_checkpoint_atomically(trainer, self.path)  # a collective: every rank calls it, rank 0 writes

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
