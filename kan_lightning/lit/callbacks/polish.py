"""GridExtension's polish: Levenberg-Marquardt on the whole training set at the end of a stage."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info

from kan_lightning.nn.levenberg_marquardt import levenberg_marquardt

from .common import network, split_tensors

# iterations between two validation RMSEs of a polish with ``patience``
CHECK_EVERY = 5


class ValidationWatch:
    """Early stopping inside a fit: the validation RMSE every :data:`CHECK_EVERY` iterations (and
    before the first), the parameters at its lowest kept; ``__call__`` (an ``after_iteration``
    hook) ends the fit once ``patience`` iterations have passed without a lower one, and
    :meth:`restore` puts the kept parameters back."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, patience: int) -> None:
        self.model, self.x, self.y, self.patience = model, x, y.reshape(-1), patience
        self.params = list(model.parameters())
        self.best, self.best_at, self.kept = float("inf"), 0, None
        self._consider(0)

    @torch.no_grad()
    def _consider(self, iteration: int) -> None:
        rmse = float((self.model(self.x).reshape(-1) - self.y).square().mean().sqrt())
        if rmse < self.best:  # (a non-finite RMSE is never kept)
            self.best, self.best_at = rmse, iteration
            self.kept = [p.detach().clone() for p in self.params]

    def __call__(self, iteration: int) -> bool:
        if iteration % CHECK_EVERY:
            return False
        self._consider(iteration)
        return iteration - self.best_at >= self.patience

    @torch.no_grad()
    def restore(self, last_iteration: int) -> None:
        if last_iteration % CHECK_EVERY:  # (the fit ended between two checks)
            self._consider(last_iteration)
        if self.kept is None:  # no finite validation RMSE at all: leave the last iterate
            return
        for p, kept in zip(self.params, self.kept):
            p.copy_(kept)


def polish(trainer, pl_module, iterations: int, smoothness: float, min_progress: float = 0.0, patience: int | None = None) -> None:
    """``iterations`` Levenberg-Marquardt iterations on the datamodule's ``x_train``/``y_train``
    (every DDP rank computes the same on the same data). Full-batch LBFGS stalls far above what a
    small KAN can fit (docs/results/grid_extension_numerics.md). It fits the squared error alone,
    so it is skipped while a regularization weight is non-zero (sparsification before pruning;
    ``Pruning(drop_penalties=True)`` turns them off once it has pruned). ``smoothness``: weight of
    the refits' difference penalty (:func:`~kan_lightning.nn.levenberg_marquardt.penalty_matrix`)
    added to the squared error, so coefficients without data under them do not fit noise.
    ``min_progress``: end early once 10 iterations lower the objective by less than this fraction.
    ``patience``: keep the iterate with the lowest RMSE on ``x_val``/``y_val``
    (:class:`ValidationWatch`) and end once this many iterations found none lower.
    ``iterations`` 0: nothing."""
    if not iterations:
        return
    model = network(pl_module)
    penalties = {term: weight for term, weight in getattr(model, "regularization", {}).items() if weight}
    if penalties:
        # LM fits the squared error alone: it would undo the sparsification the penalty is for
        shown = ", ".join(f"{term}={weight:g}" for term, weight in penalties.items())
        rank_zero_info(f"GridExtension: no polish at grid {model.grid_size} while the penalty is on ({shown})")
        return
    x, y = split_tensors(trainer, model, "GridExtension polish_iterations")
    watch = None
    if patience is not None:
        watch = ValidationWatch(model, *split_tensors(trainer, model, "GridExtension polish_patience", "val"), patience)
    out = levenberg_marquardt(model, x, y, iterations, smoothness=smoothness, min_progress=min_progress, after_iteration=watch)
    kept = ""
    if watch is not None:
        watch.restore(out["iterations"])
        kept = f"; kept iteration {watch.best_at} (validation RMSE {watch.best:.4g})"
    rank_zero_info(
        f"GridExtension: Levenberg-Marquardt at grid {model.grid_size}, {out['iterations']} iterations "
        f"({out['solves']} solves): "
        f"training RMSE {out['rmse_before']:.4g} -> {out['rmse_after']:.4g}{kept}"
    )
