"""Helpers shared by the callbacks: the network, the training inputs, rebuilding optimizers,
collective decisions and the atomic checkpoint save."""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import torch


def network(pl_module: L.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "model", pl_module)


def training_inputs(trainer: L.Trainer, max_samples: int | None) -> torch.Tensor | None:
    """The whole training input set (identical on every DDP rank, so grids stay in sync)."""
    x = getattr(getattr(trainer, "datamodule", None), "x_train", None)
    if x is None:
        return None
    return x if max_samples is None else x[:max_samples]


def split_tensors(trainer: L.Trainer, model: torch.nn.Module, user: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The datamodule's whole ``x_<split>``, ``y_<split>`` on ``model``'s device and dtype (identical
    on every DDP rank); ``user`` names what needs them in the error when there are none."""
    data = getattr(trainer, "datamodule", None)
    x, y = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise RuntimeError(f"{user} needs a datamodule with x_{split} and y_{split}")
    param = next(model.parameters())
    return x.to(device=param.device, dtype=param.dtype), y.to(device=param.device, dtype=param.dtype)


def fit_inputs(trainer: L.Trainer, batch, max_samples: int | None) -> torch.Tensor:
    """The datamodule's training inputs, or else rank 0's current batch broadcast to every rank
    (either way identical on all DDP ranks, so grids and pruning decisions stay in sync)."""
    x = training_inputs(trainer, max_samples)
    if x is None:
        if batch is None:
            raise RuntimeError("no training inputs: use a datamodule with x_train or run at a batch")
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = trainer.strategy.broadcast(x.detach(), src=0)
    return x


def rebuild_optimizers(pl_module: L.LightningModule) -> None:
    rebuild = getattr(pl_module, "rebuild_optimizers", None)
    if rebuild is None:
        pl_module.trainer.strategy.setup_optimizers(pl_module.trainer)
    else:
        rebuild()


def check_epochs(values, name: str) -> list[int] | None:
    if values is None:
        return None
    values = [int(v) for v in values]
    if any(v < 1 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly increasing integers >= 1, got {values}")
    return values


def nonnegative(name: str, value) -> float:
    """``value`` as a float, refused unless a finite number >= 0."""
    if isinstance(value, bool) or not (float(value) >= 0 and math.isfinite(float(value))):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def fraction(name: str, value) -> float:
    """``value`` as a float, refused unless a number in ``[0, 1)``."""
    if isinstance(value, bool) or not 0 <= float(value) < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def integer(name: str, value, minimum: int) -> int:
    """``value`` as an int, refused unless an integer >= ``minimum``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def any_rank(trainer: L.Trainer, flag: bool) -> bool:
    """True on every rank when it is true on one (a collective when world_size > 1)."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
    return flag


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN or Inf."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def save_checkpoint_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename: a kill while writing leaves
    the previous file intact. Every rank must call it (rank 0 writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # the full state, to resume from
    if trainer.is_global_zero:
        os.replace(tmp, path)
