"""GradientStats: gradient (and activation) statistics to the loggers."""

from __future__ import annotations

import lightning as L

from .common import network


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
        stats = analyze_gradients(network(pl_module), self.group_by)
        metrics = flatten_stats(stats, "grad", keys=lambda k: k != "numel")
        metrics["grad/total_norm"] = total_grad_norm(stats)
        self._log(trainer, metrics)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.activations or (trainer.global_step - 1) % self.every_n_steps:
            return
        from kan_lightning.lit.stats import activation_stats, flatten_stats

        model = network(pl_module)
        if not hasattr(model, "activations"):
            return
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._log(trainer, flatten_stats(activation_stats(model, x), "act"))
