"""From a composed config to the objects that train: data, model, LightningModule, callbacks,
loggers and the Lightning ``Trainer``. Both ways in use it: ``kan-train`` (``commands/train.py``) and the
Python API (``api.KANTrainer``), so a config means the same thing to both.

Every builder turns a bad value into a ``ConfigError`` naming its key (``config_checks``), before
training starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from kan_lightning.config_checks import ConfigError, config_error, data_widths, instantiate_node
from kan_lightning.lit import KANRegressor
from kan_lightning.lit.checkpoint import check_state_matches, config_targets, read_checkpoint
from kan_lightning.run_dir import check_same_run

log = logging.getLogger(__name__)


def build_data(cfg: DictConfig) -> L.LightningDataModule:
    """The data module of ``cfg.data``, with its data generated now (it is idempotent), so a
    target that yields NaN/Inf fails before the Trainer starts, as a ``ConfigError`` naming the
    function or formula."""
    from kan_lightning.data import SyntheticFunctionDataModule

    datamodule = instantiate_node(cfg.data, "data", _convert_="all")
    if isinstance(datamodule, SyntheticFunctionDataModule):
        try:
            datamodule.setup("fit")
        except ValueError as err:
            key = "data.formula" if cfg.data.get("formula") is not None else "data.function"
            raise ConfigError(f"{key}={cfg.data.get(key.split('.')[1])!r}: {err}") from None
    return datamodule


def build_model(cfg: DictConfig, input_dim: int, output_dim: int) -> torch.nn.Module:
    """The network of ``cfg.model``; an ``auto`` first or last width takes the data's dimension,
    in ``cfg`` too, so the run record shows the widths used (``validate_config`` has checked
    the explicit ones against the data)."""
    cfg.model.layers_hidden = data_widths(list(cfg.model.layers_hidden), input_dim, output_dim)
    return instantiate_node(cfg.model, "model", _convert_="all")


def build_module(cfg: DictConfig, model: torch.nn.Module) -> KANRegressor:
    """The LightningModule, after a trial construction of the optimizer and scheduler on the
    model's parameters (so a bad value fails now, naming its key, not inside ``fit``)."""
    optimizer = instantiate_node(cfg.optimizer, "optimizer")
    factory = cfg.scheduler.get("factory")
    scheduler = instantiate_node(factory, "scheduler.factory") if factory else None
    try:
        module = KANRegressor(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=cfg.scheduler.interval,
            scheduler_monitor=cfg.scheduler.monitor,
            run_config=OmegaConf.to_container(cfg, resolve=True),
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"scheduler: {err}") from err
    try:  # building an optimizer (or a scheduler on it) leaves the parameters untouched
        trial = optimizer(list(model.parameters()))
    except (ValueError, TypeError) as err:
        raise config_error("optimizer", cfg.optimizer, err) from err
    if scheduler is not None:
        try:
            scheduler(trial)
        except (ValueError, TypeError) as err:
            raise config_error("scheduler.factory", cfg.scheduler.factory, err) from err
    return module


def _instantiate_named(group: DictConfig | None, section: str) -> dict[str, Any]:
    return {
        name: instantiate_node(node, f"{section}.{name}")
        for name, node in (group or {}).items()
        if node is not None and "_target_" in node
    }


def build_loggers(cfg: DictConfig) -> list[Any]:
    return list(_instantiate_named(cfg.get("logger"), "logger").values())


def build_callbacks(cfg: DictConfig, with_loggers: bool) -> dict[str, L.Callback]:
    """The callbacks of ``cfg.callbacks`` by name. Lightning refuses to start with a
    learning-rate monitor but no logger, or a progress bar callback while progress bars are
    off: those are left out instead."""
    named = _instantiate_named(cfg.get("callbacks"), "callbacks")
    progress_bars = cfg.trainer.get("enable_progress_bar", True)
    return {
        name: cb
        for name, cb in named.items()
        if not (isinstance(cb, LearningRateMonitor) and not with_loggers) and not (isinstance(cb, ProgressBar) and not progress_bars)
    }


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any], **extra: Any) -> L.Trainer:
    """The Lightning ``Trainer`` of ``cfg.trainer``; ``extra`` overrides its arguments (e.g. the
    devices of a leased slot)."""
    return instantiate_node(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **extra)


def callback_reports(named_callbacks: dict[str, Any]) -> dict[str, Any]:
    """What callbacks with a ``report()`` method have to say about the run (e.g. the metrics
    of every grid-extension stage), keyed by their config name, for ``metrics.json``."""
    return {name: cb.report() for name, cb in named_callbacks.items() if callable(getattr(cb, "report", None))}


def delivered_metrics(metrics: dict[str, float], named_callbacks: dict[str, Any]) -> dict[str, float]:
    """``metrics`` (the trainer's last logged values) with the figures of the network a callback
    delivers at the end of fit (``GridExtension(keep_best=True)``'s ``delivered_metrics``) in
    place of every logged entry of the splits it measured (``train/objective`` too: it was the
    last stage's)."""
    for callback in named_callbacks.values():
        measured = getattr(callback, "delivered_metrics", None)
        if measured:
            replaced = {key.split("/")[0] for key in measured if key.split("/")[0] in ("train", "val")}
            metrics = {k: v for k, v in metrics.items() if k.split("/")[0] not in replaced} | dict(measured)
    return metrics


def best_checkpoint(trainer: L.Trainer) -> dict[str, Any] | None:
    """The checkpoint callback's best so far: ``monitor``, ``value``, ``path`` (or ``None``)."""
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is None or checkpoint.best_model_score is None:
        return None
    return {"monitor": checkpoint.monitor, "value": float(checkpoint.best_model_score), "path": checkpoint.best_model_path}


def resume_path(cfg: DictConfig, module: KANRegressor, output_dir: Path) -> str | None:
    """The checkpoint ``cfg.ckpt_path`` names (``"last"``: ``<run dir>/checkpoints/last.ckpt``
    when it exists, else none), read safely and checked against this run."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            log.warning(
                f"ckpt_path=last: no checkpoint at {last}, starting from scratch (to resume a run, "
                "select its directory with hydra.run.dir=<old run dir>)"
            )
        ckpt_path = str(last) if last.exists() else None
    return checked_resume(ckpt_path, module, cfg)


def checked_resume(ckpt_path: str | None, module: KANRegressor, cfg: DictConfig) -> str | None:
    """Read the checkpoint to resume from safely (``weights_only=True``) before ``fit`` does, so
    a missing, corrupt, truncated or foreign file, or one of another model or data config
    than ``cfg``, fails with a message naming it."""
    if ckpt_path is None:
        return None
    try:
        # Targets of this run's own config are trusted too (a user's callback, say).
        checkpoint = read_checkpoint(ckpt_path, trusted_targets=config_targets(module.run_config))
        check_state_matches(checkpoint, module, ckpt_path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"ckpt_path={ckpt_path!r} cannot be resumed from: {err}") from None
    check_same_run((checkpoint.get("kan_lightning") or {}).get("run_config"), cfg, f"ckpt_path={ckpt_path!r} is a checkpoint")
    return ckpt_path
