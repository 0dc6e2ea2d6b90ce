"""Words (with units) for metric and config keys, for axis labels, legends and dashboards."""

from __future__ import annotations

LABELS = {
    "test/rmse": "test RMSE",
    "val/rmse": "validation RMSE",
    "train/rmse": "train RMSE",
    "test/mse": "test MSE",
    "val/mse": "validation MSE",
    "train/mse": "train MSE",
    "test/mae": "test MAE",
    "val/mae": "validation MAE",
    "train/mae": "train MAE",
    "test/r2": "test R²",
    "val/r2": "validation R²",
    "train/r2": "train R²",
    "val/loss": "validation loss (MSE, standardized targets)",
    "train/loss": "train loss (MSE, standardized targets)",
    "train/objective": "train objective (loss + penalty)",
    "num_parameters": "parameters",
    "run/num_parameters": "parameters",
    "wall_time_s": "wall time (s)",
    "run/wall_time_s": "wall time (s)",
    "seed": "seed",
    "model.grid_size": "grid size G",
    "model.spline_order": "spline order k",
    "model.layers_hidden": "layer widths",
    "model.regularization.l1": "L1 penalty λ",
    "model.regularization.entropy": "entropy penalty",
    "optimizer.lr": "learning rate",
    "optimizer.weight_decay": "weight decay",
    "data.n_samples": "samples",
    "data.noise_level": "noise level",
    "data.batch_size": "batch size",
    "data.function": "target function",
    "trainer.max_epochs": "epochs",
    "trainer.precision": "precision",
    "grid_size": "grid size G",
    "stage": "stage",
}


def label(key: str) -> str:
    """``test/rmse`` -> ``test RMSE``; ``model.grid_size`` -> ``grid size G``; aggregates keep
    their suffix (``test/rmse_mean`` -> ``test RMSE (mean)``); unknown keys are returned as is."""
    if key in LABELS:
        return LABELS[key]
    for suffix in ("_mean", "_std", "_epoch", "_step"):
        if key.endswith(suffix) and key[: -len(suffix)] in LABELS:
            return f"{LABELS[key[: -len(suffix)]]} ({suffix[1:]})"
    return key
