"""``KANTrainer``'s arguments as ``kan-train``'s config: the optimizer of ``conf/optimizer/``,
the schedule of ``conf/scheduler/``, the callbacks of ``conf/callbacks/``, the trainer of
``conf/trainer/``, each set from the arguments (the network and the data are objects, not
config: ``model`` and ``data`` stay empty)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, open_dict

from kan_lightning.compose import compose_config, group_options

# The config's callbacks the API uses (the others guard kan-train's run directory).
API_CALLBACKS = ("model_checkpoint", "grid_update", "early_stopping")


def optimizer_config(
    optimizer_name: str, lr: float | None, weight_decay: float | None, optimizer_kwargs: Mapping[str, Any], *overrides: str
) -> DictConfig:
    """The composed config with ``conf/optimizer/<optimizer_name>.yaml`` (any case) and the
    given settings over its own; ``overrides`` choose other groups."""
    name, options = str(optimizer_name).lower(), group_options("optimizer")
    if name not in options:
        raise ValueError(f"unknown optimizer_name {optimizer_name!r}; known: {', '.join(options)}")
    cfg = compose_config([f"optimizer={name}", "logger=none", *overrides])
    with open_dict(cfg):
        optimizer = cfg.optimizer
        if lr is not None:
            optimizer.lr = float(lr)
        if weight_decay is not None and "weight_decay" in optimizer:
            optimizer.weight_decay = float(weight_decay)
        elif weight_decay:
            raise ValueError(f"{optimizer_name} has no weight_decay: use weight_decay=0 (or a regularization) with {optimizer_name}")
        optimizer.update(optimizer_kwargs)
        cfg.model = None
        cfg.data = None
    return cfg


def schedule_choice(lr_schedule: str | Callable | None) -> str:
    """The ``conf/scheduler/`` config of ``lr_schedule`` (``none`` for a factory or ``None``)."""
    schedules = group_options("scheduler")
    if not (lr_schedule is None or callable(lr_schedule) or lr_schedule in schedules):
        raise ValueError(f"lr_schedule must be one of {tuple(schedules)}, None or a callable, got {lr_schedule!r}")
    return lr_schedule if isinstance(lr_schedule, str) else "none"


def set_fit(cfg: DictConfig, trainer: Mapping[str, Any], n_batches: int, monitor: str, grid_update: Any, patience: int | None,
            min_delta: float, checkpoint_dir: str | None) -> None:
    """Set ``cfg`` for one ``fit``: the trainer's arguments, the metric the schedule and the
    callbacks watch, and the callbacks used (grid updates unless ``grid_update`` is false or
    the model has none; early stopping with ``patience``; checkpoints into ``checkpoint_dir``)."""
    with open_dict(cfg):
        cfg.trainer.update(trainer, num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, n_batches)))
        cfg.scheduler.monitor = monitor
        callbacks = cfg.callbacks
        for name in [n for n in callbacks if n not in API_CALLBACKS]:
            del callbacks[name]
        if not grid_update:
            del callbacks["grid_update"]
        elif isinstance(grid_update, Mapping):
            callbacks.grid_update.update(dict(grid_update))
        if patience is not None:
            callbacks.early_stopping.update(monitor=monitor, patience=int(patience), min_delta=min_delta, verbose=False)
        if checkpoint_dir is not None:
            callbacks.model_checkpoint.update(dirpath=checkpoint_dir, monitor=monitor, save_weights_only=True)
        else:
            del callbacks["model_checkpoint"]
        cfg.trainer.enable_checkpointing = checkpoint_dir is not None


def set_regularization(model: Any, activation: float | None, entropy: float | None) -> None:
    """``regularize_activation`` and ``regularize_entropy``: the weights ``l1`` and ``entropy``
    of the network's penalty (``None`` keeps one)."""
    regularization = getattr(model, "regularization", None)
    for key, value in (("l1", activation), ("entropy", entropy)):
        if value is None:
            continue
        if regularization is None:
            if value:
                raise ValueError(f"{type(model).__name__} has no regularization: regularize_* needs a KAN")
            continue
        if not value >= 0 or not math.isfinite(value):
            raise ValueError(f"regularization weights must be finite and >= 0, got {value!r}")
        regularization[key] = float(value)
