"""The end of a stack: the test, each job's checkpoints and run record (``metrics.json``), as
``kan-train`` writes them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from kan_lightning.lit.hparams import hydra_context, log_run
from kan_lightning.lit.safety import TrainingDiverged
from kan_lightning.logs import summary_line
from kan_lightning.nn import KAN
from kan_lightning.run_records import ERROR_FILE, write_run_record

from .jobs import Job, job_context, job_log, log, overrides
from .metrics import evaluate_models


@dataclass
class Outcome:
    """What the stacked loop hands over per model (lists indexed by model)."""

    final: list[KAN]  # at the end of training (last.ckpt)
    delivered: list[KAN]  # what fit delivers: GridExtension's kept stage, else the final model
    best: list[KAN | None]  # the best validation epoch (ModelCheckpoint), if any
    best_epoch: list[int | None]
    best_step: list[int]
    best_value: list[float]
    last: list[dict[str, float]]  # the last logged values
    reports: list[dict[str, Any]]  # the callbacks' reports (metrics.json "callbacks")
    monitor: str | None
    step: int


def finish(jobs: list[Job], outcome: Outcome, data: dict, y_mean, y_std, batch_size) -> None:
    """Test each job's best or delivered model, write its checkpoints and record."""
    cfg = jobs[0].cfg
    testing = bool(cfg.get("test", True))
    use_best = [testing and cfg.get("test_ckpt", "best") == "best" and outcome.best[m] is not None for m in range(len(jobs))]
    tested = [outcome.best[m] if use_best[m] else outcome.delivered[m] for m in range(len(jobs))]
    test_values = evaluate_models(tested, *data["test"], y_mean, y_std, batch_size, "test") if testing else None
    for m, job in enumerate(jobs):
        with job_context(job), job_log(job):
            try:
                job.result = _write_job(job, m, len(jobs), outcome, test_values[m] if test_values else None, use_best[m])
            except Exception as err:  # noqa: BLE001 - one job's disk trouble must not stop the others
                log.error(f"{job.output_dir}: {type(err).__name__}: {err}")
                job.result = err


def _checkpoint(job: Job, model: KAN, epoch: int, step: int, path: Path) -> str:
    module = job.module
    module.model = model  # (its grid may differ from the initial model's)
    checkpoint = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        type(job.datamodule).__qualname__: job.datamodule.state_dict(),
    }
    module.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".ckpt.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return str(path)


def _write_job(job: Job, m: int, n_models: int, outcome: Outcome, test: dict | None, use_best: bool):
    cfg = job.cfg
    checkpoints = job.output_dir / "checkpoints"
    best = None
    if outcome.best[m] is not None:
        epoch = outcome.best_epoch[m]
        path = _checkpoint(job, outcome.best[m], epoch, outcome.best_step[m], checkpoints / f"epoch{epoch:03d}.ckpt")
        best = {"monitor": outcome.monitor, "value": outcome.best_value[m], "path": path}
    if (cfg.get("callbacks") or {}).get("last_checkpoint"):
        _checkpoint(job, outcome.final[m], int(cfg.trainer.max_epochs) - 1, outcome.step, checkpoints / "last.ckpt")
    extension = (cfg.get("callbacks") or {}).get("grid_extension") or {}
    if extension.get("keep_best") and extension.get("delivered_path") and job.diverged is None:
        path = _checkpoint(job, outcome.delivered[m], int(cfg.trainer.max_epochs) - 1, outcome.step, Path(extension.delivered_path))
        outcome.reports[m].setdefault("grid_extension", {})["delivered_checkpoint"] = path
    delivered = job.module.model = outcome.delivered[m]
    metrics = dict(outcome.last[m])
    if test is not None:
        metrics.update(test)
    common = {"task": cfg.get("task_name"), "seed": cfg.seed}
    if job.diverged is not None:
        d = job.diverged
        err = TrainingDiverged(d.message, step=d.step, epoch=d.epoch, batch_idx=d.batch_idx, value=d.value)
        record = {
            "status": "diverged", "error": f"TrainingDiverged: {d.message}", "error_type": "TrainingDiverged", **common,
            "step": d.step, "epoch": d.epoch, "message": d.message, "last_checkpoint": None, "metrics": {},
            "num_parameters": d.num_parameters, "wall_time_s": time.time() - job.start,
            "overrides": overrides(), "config": OmegaConf.to_container(cfg, resolve=True),
            "stacked": {"models": n_models, "slot": m},
        }
        write_run_record(job.output_dir, record)
        (job.output_dir / ERROR_FILE).write_text(f"{record['error']}\n")
        log.error(summary_line(record, job.output_dir))
        return err
    record = {
        "status": "completed",
        **common,
        "job": hydra_context()[2],
        "metrics": metrics,
        "best": best,
        "test_ckpt": best["path"] if use_best and best else None,
        "resumed_from": None,
        "num_parameters": sum(p.numel() for p in delivered.parameters()),
        "wall_time_s": time.time() - job.start,
        "overrides": overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "stacked": {"models": n_models, "slot": m},
    }
    record = {"status": record.pop("status"), "task": record.pop("task"), "job": record.pop("job"), **record}
    if outcome.reports[m]:
        record["callbacks"] = outcome.reports[m]
    log_run(job.loggers, cfg, record, outcome.step, job.output_dir)
    write_run_record(job.output_dir, record)
    (job.output_dir / ERROR_FILE).unlink(missing_ok=True)
    log.info(summary_line(record, job.output_dir))
    return record
