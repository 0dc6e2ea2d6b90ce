"""Evaluate a checkpoint on its data: ``kan-eval ckpt_path=...`` or ``python -m kan_lightning.commands.evaluate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import kan_lightning.resolvers  # noqa: F401  (registers the configs' resolvers)
from kan_lightning.data.normalization import denormalize_x, raw_units_network
from kan_lightning.export import export_torchscript
from kan_lightning.lit import KANRegressor
from kan_lightning.lit.checkpoint import SPLITS, datamodule_from_checkpoint, model_from_checkpoint, read_checkpoint


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
    # a float64 network (a 64-true run) is evaluated in float64: float32 would floor its errors
    double = next(model.parameters()).dtype == torch.float64
    trainer: L.Trainer = instantiate(cfg.trainer, **({"precision": "64-true"} if double else {}))
    loader = getattr(datamodule, f"{cfg.split}_dataloader")()
    results = trainer.test(module, dataloaders=loader, verbose=False)[0]
    metrics = {k.replace("test/", f"{cfg.split}/"): float(v) for k, v in results.items()}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_metrics.json").write_text(json.dumps({"ckpt_path": str(cfg.ckpt_path), "metrics": metrics}, indent=2))
    if cfg.get("export_torchscript"):  # raw inputs to raw outputs, as load_model's; checked against eager
        norm = datamodule.normalization
        example = denormalize_x(datamodule.x_test[:8].double(), norm).to(next(model.parameters()).dtype)
        export_torchscript(raw_units_network(model, norm).eval(), output_dir / "model.pt", example.shape[1], example)
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
