"""GridExtension's polish: Levenberg-Marquardt on the whole training set at the end of a stage."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_info

from kan_lightning.nn.levenberg_marquardt import levenberg_marquardt

from .common import network, training_set


def polish(trainer, pl_module, iterations: int, smoothness: float) -> None:
    """``iterations`` Levenberg-Marquardt iterations on the datamodule's ``x_train``/``y_train``
    (every DDP rank computes the same on the same data). Full-batch LBFGS stalls far above what a
    small KAN can fit (docs/results/grid_extension_numerics.md); the loss's regularization terms,
    if any, are not part of this fit. ``smoothness``: weight of the refits' difference penalty
    (:func:`~kan_lightning.nn.levenberg_marquardt.penalty_matrix`) added to the squared error, so
    coefficients without data under them do not fit noise. ``iterations`` 0: nothing."""
    if not iterations:
        return
    model = network(pl_module)
    x, y = training_set(trainer, model, "GridExtension polish_iterations")
    out = levenberg_marquardt(model, x, y, iterations, smoothness=smoothness)
    rank_zero_info(
        f"GridExtension: Levenberg-Marquardt at grid {model.grid_size}, {out['iterations']} iterations: "
        f"training RMSE {out['rmse_before']:.4g} -> {out['rmse_after']:.4g}"
    )
