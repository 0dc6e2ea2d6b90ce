"""GridExtension's polish: Levenberg-Marquardt on the whole training set at the end of a stage."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from kan_lightning.nn.levenberg_marquardt import levenberg_marquardt

from .common import network, training_set


def polish(trainer, pl_module, iterations: int, smoothness: float, min_progress: float = 0.0) -> None:
    """``iterations`` Levenberg-Marquardt iterations on the datamodule's ``x_train``/``y_train``
    (every DDP rank computes the same on the same data). Full-batch LBFGS stalls far above what a
    small KAN can fit (docs/results/grid_extension_numerics.md). It fits the squared error alone,
    so it is skipped while a regularization weight is non-zero (sparsification before pruning;
    ``Pruning(drop_penalties=True)`` turns them off once it has pruned). ``smoothness``: weight of
    the refits' difference penalty (:func:`~kan_lightning.nn.levenberg_marquardt.penalty_matrix`)
    added to the squared error, so coefficients without data under them do not fit noise.
    ``min_progress``: end early once 10 iterations lower the objective by less than this fraction.
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
    x, y = training_set(trainer, model, "GridExtension polish_iterations")
    out = levenberg_marquardt(model, x, y, iterations, smoothness=smoothness, min_progress=min_progress)
    rank_zero_info(
        f"GridExtension: Levenberg-Marquardt at grid {model.grid_size}, {out['iterations']} iterations "
        f"({out['solves']} solves): "
        f"training RMSE {out['rmse_before']:.4g} -> {out['rmse_after']:.4g}"
    )
