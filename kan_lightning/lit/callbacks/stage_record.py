"""The record of a grid stage: its grid, size and time, and the network's RMSE on the
datamodule's splits in the targets' original units."""

from __future__ import annotations

import math

import torch

from .common import network as _network

EVAL_SPLITS = ("train", "val", "test")


@torch.no_grad()
def split_rmse(pl_module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """RMSE of ``pl_module``'s network on ``(x, y)`` (datamodule units) in the targets'
    original units, ``batch_size`` rows per pass, accumulated in float64."""
    model = _network(pl_module)
    param = next(model.parameters())
    denormalize = getattr(pl_module, "denormalize", None) or (lambda t: t)
    total, count = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device=param.device, dtype=param.dtype)
        yb = y[start : start + batch_size].to(device=param.device, dtype=param.dtype)
        err = denormalize(model(xb)).double() - denormalize(yb).double()
        total += float(err.pow(2).sum())
        count += err.numel()
    return math.sqrt(total / count) if count else math.nan


def stage_record(trainer, pl_module, splits, batch_size: int, seconds: float | None) -> tuple[dict, list[str]]:
    """``{grid, epoch, step, num_parameters, time_s, <split>/rmse...}`` of the network now, and
    the splits the datamodule does not hold (``x_<split>``/``y_<split>`` tensors)."""
    model = _network(pl_module)
    record = {
        "grid": int(model.grid_size),
        "epoch": int(trainer.current_epoch),
        "step": int(trainer.global_step),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "time_s": seconds,
    }
    datamodule, missing = getattr(trainer, "datamodule", None), []
    for split in splits:
        x, y = getattr(datamodule, f"x_{split}", None), getattr(datamodule, f"y_{split}", None)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            record[f"{split}/rmse"] = split_rmse(pl_module, x, y, batch_size)
        else:
            missing.append(split)
    return record, missing
