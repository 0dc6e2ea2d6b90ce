"""Train and test one configuration: ``kan-train [overrides]`` or ``python -m kan_lightning.train``.

``train(cfg)`` is a plain function (tests call it without the command line); ``main`` wraps it
with ``@hydra.main`` and returns the metric a sweeper optimizes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from kan_lightning.lit import KANRegressor

METRICS_FILE = "metrics.json"


def build_model(cfg: DictConfig, input_dim: int, output_dim: int) -> torch.nn.Module:
    """The network of ``cfg.model``, checked against the data's dimensions."""
    widths = list(cfg.model.layers_hidden)
    if widths[0] != input_dim or widths[-1] != output_dim:
        raise ValueError(
            f"model.layers_hidden={widths} does not fit the data: its first width must be the input "
            f"dimension {input_dim} and its last the output dimension {output_dim} "
            f"(e.g. model.layers_hidden=[{input_dim},{','.join(map(str, widths[1:-1]))},{output_dim}])"
        )
    return instantiate(cfg.model, _convert_="all")


def build_module(cfg: DictConfig, model: torch.nn.Module) -> KANRegressor:
    return KANRegressor(
        model=model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.factory) if cfg.scheduler.get("factory") else None,
        scheduler_interval=cfg.scheduler.interval,
        scheduler_monitor=cfg.scheduler.monitor,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The swept-over sections of the config, flattened to ``section/key`` scalars for
    TensorBoard's hparams view (lists become strings)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    container = {k: resolved.get(k) for k in ("model", "data", "optimizer", "scheduler")}
    flat: dict[str, Any] = {"seed": cfg.seed}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_partial_",):
                    walk(f"{prefix}/{key}" if prefix else key, value)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    walk("", container)
    return flat


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and torch.as_tensor(v).numel() == 1}


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def write_run_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (a sweep summary may read it while jobs run)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / METRICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    return path


def _resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    return ckpt_path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test, the configured model; write ``metrics.json`` into the run directory.

    Returns the run record: ``status``, ``metrics`` (final train/val/test values), ``best``
    (the checkpoint monitor's best value), ``num_parameters``, ``wall_time_s``, ``seed``,
    ``overrides`` and the resolved ``config``.
    """
    start = time.time()
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg, datamodule.input_dim, datamodule.output_dim)
    module = build_module(cfg, model)
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    # Lightning refuses to start with a learning-rate monitor but no logger, or a progress bar
    # callback while progress bars are off: drop those callbacks instead.
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resolve_ckpt_path(cfg.get("ckpt_path"), output_dir))
    metrics = _scalars(trainer.callback_metrics)

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = None
    if checkpoint is not None and checkpoint.best_model_score is not None:
        best = {"monitor": checkpoint.monitor, "value": float(checkpoint.best_model_score), "path": checkpoint.best_model_path}

    test_ckpt = None
    if cfg.get("test", True):
        if cfg.get("test_ckpt", "best") == "best" and best and best["path"]:
            test_ckpt = best["path"]
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
        metrics.update(_scalars(trainer.callback_metrics))

    record = {
        "status": "completed",
        "task": cfg.get("task_name"),
        "seed": cfg.seed,
        "metrics": metrics,
        "best": best,
        "test_ckpt": test_ckpt,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": time.time() - start,
        "overrides": _overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        _log_hparams(trainer, cfg, metrics, best)
        write_run_record(output_dir, record)
    return record


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float], best: dict | None) -> None:
    """Final metrics as ``hp/*`` in TensorBoard's hparams view, to compare the runs of a sweep."""
    hp = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(("train/", "val/", "test/"))}
    if best:
        hp[f"hp/best_{best['monitor'].replace('/', '_')}"] = best["value"]
    hp = {k: v for k, v in hp.items() if math.isfinite(v)}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat_hparams(cfg), metrics=hp)
            logger.finalize("success")


@hydra.main(version_base="1.3", config_path="pkg://kan_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    record = train(cfg)
    value = record["metrics"].get(cfg.get("optimized_metric"))
    return value


if __name__ == "__main__":
    main()
