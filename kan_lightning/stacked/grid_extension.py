"""The grid-extension schedule of a stack: one real :class:`GridExtension` per model.

Each job's own ``callbacks.grid_extension`` is instantiated and its Lightning hooks are called
with a view of that one model (:class:`ModelView`: the model as a plain KAN, its
``denormalize``, ``rebuild_optimizers`` and ``log``; :class:`TrainerView`: the epoch, the step,
the job's datamodule, loggers and last logged values). So the switches, the refit on the
model's own training inputs (``KAN.extend_grid`` as GridExtension calls it), the per-stage
evaluation, ``keep_best`` and the report are GridExtension's own code; the stack only copies the
model out before a hook and back after it (the models switch at the same epochs, so the stack
keeps one shape). The stack calls the hooks that act during training (``on_fit_start``,
``on_train_batch_start``, ``on_train_end``); ``grid/size``, which GridExtension logs at every
epoch end, is logged by the stacked loop from the stack itself (copying every model out at every
epoch would cost more than a small model's epoch).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from kan_lightning.config_checks import instantiate_node
from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN

from .jobs import Job
from .metrics import shape_of as _shape


class TrainerView:
    """What GridExtension reads from the Trainer, for one model of a stack."""

    is_global_zero = True
    world_size = 1
    sanity_checking = False
    strategy = None

    def __init__(self, job: Job, max_epochs: int) -> None:
        self.datamodule = job.datamodule
        self.loggers = job.loggers
        self.max_epochs = max_epochs
        self.current_epoch = 0
        self.global_step = 0
        self.callback_metrics: dict[str, float] = {}


class ModelView:
    """What GridExtension reads and calls on the LightningModule, for model ``m`` of a stack:
    ``model`` is a plain KAN copied out of the stack on first access (then handed back)."""

    def __init__(self, stack: StackedKAN, m: int, job: Job) -> None:
        self.stack, self.m, self.job = stack, m, job
        self._model: KAN | None = None
        self.rebuild = False
        self.logged: dict[str, float] = {}

    @property
    def model(self) -> KAN:
        if self._model is None:
            self._model = self.stack.model(self.m)
        return self._model

    def taken(self) -> KAN | None:
        """The model copied out since the last call (changed or not), and forget it."""
        model, self._model = self._model, None
        return model

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        return self.job.module.denormalize(y)

    def rebuild_optimizers(self, keep_schedule: bool = True) -> None:
        self.rebuild = True

    def log(self, name: str, value: Any, **_: Any) -> None:
        # as pl_module.log stores a Python float: a float32 tensor
        self.logged[name] = float(torch.tensor(float(value), dtype=torch.float32))


class StackedGridExtension:
    """The ``GridExtension`` of every job of a stack, driven over :class:`ModelView`\\ s."""

    def __init__(self, stack: StackedKAN, jobs: Sequence[Job], max_epochs: int, device: torch.device) -> None:
        self.callbacks = [instantiate_node(job.cfg.callbacks.grid_extension, "callbacks.grid_extension") for job in jobs]
        for callback in self.callbacks:
            callback.delivered_path = None  # a TrainerView cannot save: records.py writes the file
        for job in jobs:
            job.module.to(device)  # (its denormalize's buffers, for the stage evaluation)
        self.trainers = [TrainerView(job, max_epochs) for job in jobs]
        self.views = [ModelView(stack, m, job) for m, job in enumerate(jobs)]

    def set_time(self, epoch: int, step: int, metrics: Sequence[dict[str, float]] | None = None) -> None:
        for m, trainer in enumerate(self.trainers):
            trainer.current_epoch, trainer.global_step = epoch, step
            if metrics is not None:
                trainer.callback_metrics = metrics[m]

    def call(self, hook: str, alive: Sequence[bool], *args: Any) -> tuple[list[KAN] | None, bool]:
        """Run ``hook`` of the live models' callbacks. Returns the models to load into the stack
        (``None``: no hook touched a model) and whether the optimizers must be rebuilt. Models
        must stay of one shape and rebuild together (their schedules are equal); a dead model's
        slot takes a live model's shape."""
        for m, (callback, trainer, view) in enumerate(zip(self.callbacks, self.trainers, self.views)):
            if alive[m]:
                getattr(callback, hook)(trainer, view, *args)
        taken = [view.taken() for view in self.views]
        rebuild = [view.rebuild for view in self.views]
        for view in self.views:
            view.rebuild = False
        live = [m for m in range(len(taken)) if alive[m]]
        if all(taken[m] is None for m in live):
            return None, False
        models = [model if model is not None else self.views[m].stack.model(m) for m, model in enumerate(taken)]
        shapes = {_shape(models[m]) for m in live}
        if len(shapes) > 1 or len({rebuild[m] for m in live}) > 1:
            raise RuntimeError(f"GridExtension.{hook} changed the models of one stack differently")
        for m, model in enumerate(models):
            if not alive[m] and _shape(model) not in shapes:
                models[m] = models[live[0]]  # a diverged model's weights are not used any more
        return models, any(rebuild[m] for m in live)

    def finish(self, stack: StackedKAN, alive: Sequence[bool]) -> list[KAN]:
        """``on_train_end`` of every live model (the last stage evaluated, ``keep_best``'s
        stage restored): the delivered models, as plain KANs (their grids may now differ)."""
        delivered = []
        for m, (callback, trainer, view) in enumerate(zip(self.callbacks, self.trainers, self.views)):
            if alive[m]:
                callback.on_train_end(trainer, view)
            model = view.taken()
            delivered.append(model if model is not None else stack.model(m))
        return delivered

    def logged(self, m: int) -> dict[str, float]:
        """What model ``m``'s callback logged since the last call (``grid/val_loss_at_switch``)."""
        values, self.views[m].logged = self.views[m].logged, {}
        return values

    def report(self, m: int) -> dict:
        return self.callbacks[m].report()


def grid_size(stack: StackedKAN) -> float:
    """The ``grid/size`` GridExtension logs at every epoch end."""
    layer = stack.layers[0]
    return float(layer.spline_weight.shape[-1] - layer.spline_order)
