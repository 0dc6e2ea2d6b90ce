"""Re-evaluations of the training closure without Lightning's per-call hook dispatch.

LBFGS calls the closure up to ``max_iter`` times plus line-search trials per optimizer step. Each
call of Lightning's closure dispatches the training-step, zero-grad and backward hooks to every
callback, with profiler contexts and output processing (in a 60-epoch paper_grid_extension
run, 4000 of its 5900 callback-hook dispatches). :class:`ReevaluatingClosure` runs the step's
first evaluation through Lightning's closure unchanged and later ones as what that closure does
for them: ``training_step``, ``zero_grad``, ``backward``. Automatic optimization stays on, so the step
counters, LR schedulers, gradient clipping and ``on_before_optimizer_step`` (the precision plugin
wraps every call of the closure given to the optimizer) work as before.

Used only where the skipped calls do nothing (:func:`reevaluation_is_lean`): one process on one
device (under DDP the model must run through its wrapper for the gradient all-reduce), a plain
precision plugin (no gradient scaler), no gradient accumulation, and no callback or module that
implements the skipped hooks.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import lightning as L
import torch
from lightning.pytorch.loops.optimization.automatic import Closure, ClosureResult
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

# what Lightning's closure runs besides training_step, zero_grad and backward
SKIPPED_HOOKS = ("on_before_backward", "on_after_backward", "on_before_zero_grad")
MODULE_HOOKS = SKIPPED_HOOKS + ("backward", "optimizer_zero_grad")
PLAIN_PRECISION = (Precision, DoublePrecision, HalfPrecision)


def reevaluation_is_lean(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether closure re-evaluations may bypass Lightning's closure with the same effect."""
    strategy = trainer.strategy
    if type(strategy) is not SingleDeviceStrategy or strategy.model is not module:
        return False
    if type(strategy.precision_plugin) not in PLAIN_PRECISION or trainer.accumulate_grad_batches != 1:
        return False
    if getattr(trainer.fit_loop, "_skip_backward", False):  # (StochasticWeightAveraging's last epoch)
        return False
    if any(is_overridden(hook, module, L.LightningModule) for hook in MODULE_HOOKS):
        return False
    return not any(is_overridden(hook, c, L.Callback) for c in trainer.callbacks for hook in SKIPPED_HOOKS)


class ReevaluatingClosure:
    """The closure handed to the optimizer: the first call runs Lightning's ``closure`` (which
    calls ``training_step`` with the batch, recorded by :meth:`record`), the others
    ``training_step``, ``zero_grad`` and ``backward`` directly. As with Lightning's closure, the
    loop reports the last evaluation's loss (e.g. to ``on_train_batch_end``)."""

    def __init__(self, module: L.LightningModule, closure: Callable[[], Any], optimizer: Any, batch_idx: int) -> None:
        self.module, self.closure, self.optimizer, self.batch_idx = module, closure, optimizer, batch_idx
        self.batch: Any = None
        self.calls = 0
        trainer = module.trainer
        self.precision = trainer.strategy.precision_plugin
        # the zero-grad counters Lightning's closure advances, saved with the loops' state
        loop = trainer.fit_loop.epoch_loop.automatic_optimization
        self.zero_grad_progress = loop.optim_progress.optimizer.zero_grad

    def record(self, batch: Any) -> None:
        self.batch = batch

    def __call__(self) -> Tensor | None:
        self.calls += 1
        if self.calls == 1 or self.batch is None or not isinstance(self.closure, Closure):
            return self.closure()
        with torch.enable_grad(), self.precision.train_step_context():
            output = self.module.training_step(self.batch, self.batch_idx)
        loss = output.get("loss") if isinstance(output, Mapping) else output
        progress = self.zero_grad_progress
        progress.increment_ready()
        progress.increment_started()
        self.optimizer.zero_grad()
        progress.increment_completed()
        if loss is None:
            return None
        with torch.enable_grad():
            loss.backward()
        self.closure._result = ClosureResult(loss.detach())
        return self.closure._result.loss
