"""Training-time KAN operations as Lightning callbacks."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
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


class LastCheckpoint(L.Callback):
    """Write ``<dirpath>/last.ckpt`` at the end of every training epoch, atomically (a kill
    while writing leaves the previous file intact). Lightning's ``save_last`` only refreshes
    it when a top-k checkpoint is saved, which is not enough to resume a killed run."""

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
        trainer.save_checkpoint(tmp)  # a collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save(trainer)
