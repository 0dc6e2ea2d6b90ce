"""Evaluate a checkpoint on its data: ``kan-eval ckpt_path=...`` or ``python -m kan_lightning.evaluate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kan_lightning.lit import KANRegressor
from kan_lightning.config_checks import DATA_TARGETS
from kan_lightning.data import SyntheticFunctionDataModule
from kan_lightning.lit.checkpoint import build_from_plain, check_stored_targets, model_from_checkpoint, read_checkpoint

SPLITS = ("train", "val", "test")


def datamodule_from_checkpoint(checkpoint: dict[str, Any], data_overrides: dict | None = None):
    """The data of the run that wrote ``checkpoint`` (its config, seed and normalization),
    with ``data_overrides`` merged over its config.

    The stored config is data: its ``_target_`` must name this package's data module, which is
    then built from the plain values alone (nothing named in the file is imported or called)."""
    meta = checkpoint.get("kan_lightning")
    run_config = meta.get("run_config") if isinstance(meta, dict) else None
    if not isinstance(run_config, dict) or not isinstance(run_config.get("data"), dict):
        raise ValueError("checkpoint has no run config to rebuild its data from")
    data_cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(run_config["data"]), data_overrides or {}), resolve=True)
    check_stored_targets({"run_config": {"data": data_cfg}}, "checkpoint")
    target = data_cfg.pop("_target_", None)
    if target not in DATA_TARGETS:
        raise ValueError(f"run_config.data._target_={target!r} is not kan-lightning's data module; cannot rebuild the data")
    for key in [k for k in data_cfg if k.startswith("_") and k.endswith("_")]:
        del data_cfg[key]
    check_stored_targets({"run_config": {"data": data_cfg}}, "checkpoint", allowed=())  # plain values: no nested targets
    datamodule = build_from_plain(SyntheticFunctionDataModule, data_cfg, "run_config.data")
    datamodule.setup("test")
    state = checkpoint.get(type(datamodule).__qualname__)
    if state and not data_overrides:
        datamodule.load_state_dict(state)  # the exact normalization used in training
    return datamodule


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Metrics of the checkpoint ``cfg.ckpt_path`` on split ``cfg.split``; also written to
    ``eval_metrics.json`` in the run directory."""
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {cfg.split!r}")
    checkpoint = read_checkpoint(cfg.ckpt_path, list(cfg.get("trusted_targets") or []))
    model = model_from_checkpoint(checkpoint)
    overrides = OmegaConf.to_container(cfg.get("data") or OmegaConf.create({}), resolve=True)
    datamodule = datamodule_from_checkpoint(checkpoint, overrides)
    module = KANRegressor(model)
    module.set_target_normalization(datamodule.normalization)
    trainer: L.Trainer = instantiate(cfg.trainer)
    loader = getattr(datamodule, f"{cfg.split}_dataloader")()
    results = trainer.test(module, dataloaders=loader, verbose=False)[0]
    metrics = {k.replace("test/", f"{cfg.split}/"): float(v) for k, v in results.items()}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_metrics.json").write_text(json.dumps({"ckpt_path": str(cfg.ckpt_path), "metrics": metrics}, indent=2))
    if cfg.get("export_torchscript"):
        example = datamodule.x_test[:2].to(next(model.parameters()).dtype)
        torch.jit.trace(model.eval(), example).save(str(output_dir / "model.pt"))
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://kan_lightning.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """``kan-eval``: a missing, corrupt or foreign checkpoint (or a bad split) prints
    ``error: ...`` naming it and exits with status 2, without a traceback."""
    try:
        metrics = evaluate(cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    width = max(map(len, metrics))
    print(f"checkpoint: {cfg.ckpt_path}")
    for name, value in metrics.items():
        print(f"  {name:<{width}}  {value:.6g}")


if __name__ == "__main__":
    main()
