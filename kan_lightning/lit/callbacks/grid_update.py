"""GridUpdate: adapt the KAN's grids to the training inputs while training."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from .common import training_inputs


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

    # Declared for the module's grid-range warning: this callback makes the grids follow the data.
    adapts_grids_to_data = True

    def __init__(
        self, every_n_steps: int = 20, stop_step: int = 200, max_samples: int | None = None, grid_eps: float | None = None
    ) -> None:
        self.every_n_steps = every_n_steps
        self.stop_step = stop_step
        for name in ("every_n_steps", "stop_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
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
        x = training_inputs(trainer, self.max_samples)
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
