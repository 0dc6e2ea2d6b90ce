"""Train and test one configuration: ``kan-train [overrides]`` or ``python -m kan_lightning.commands.train``.

``train(cfg)`` is a plain function (tests call it without the command line); ``main`` wraps it
with ``@hydra.main`` and returns the metric a sweeper optimizes. The objects come from
``kan_lightning.pipeline`` (shared with the Python API), the run record from
``kan_lightning.run_records``.

- The config is checked before any work starts (``kan_lightning.config_checks``); a mistake is a
  ``ConfigError`` naming the key and value: ``error: ...`` and exit status 2.
- Every run leaves ``metrics.json`` with a ``status``: ``completed``, ``failed``, ``diverged``
  or ``interrupted`` (SIGTERM/SIGINT: the state is saved to ``checkpoints/last.ckpt`` and
  ``kan-train`` exits with 128 + the signal number).
- Resume in the run's own directory with the same overrides plus
  ``ckpt_path=last hydra.run.dir=<old run dir>``, or give ``ckpt_path=<file>``.
- One run per directory, one process at a time (``kan_lightning.run_dir``).
- In a multirun (``-m``) a failed job is recorded in its directory and re-raised: Hydra marks it
  failed and the other jobs of the sweep still run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from kan_lightning import pipeline
from kan_lightning.config_checks import ConfigError, resolved_container, validate_config
from kan_lightning.ddp_multirun import ddp_children_run_this_job, is_multirun, own_process_group
from kan_lightning.devices import device_lease
from kan_lightning.lit.hparams import log_run
from kan_lightning.lit.safety import TrainingDiverged, TrainingInterrupted, raise_on_sigterm
import kan_lightning.resolvers  # noqa: F401  (registers the configs' resolvers)
from kan_lightning.logs import start_logs
from kan_lightning.resources import check_resources
from kan_lightning.run_dir import claim
from kan_lightning.run_records import METRICS_FILE, completed_record, error_text, recorded_attempt, scalars, write_completed

# Exit status of kan-train for a mistake in the configuration (argparse's convention).
CONFIG_ERROR_EXIT = 2


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test, the configured model; write ``metrics.json`` into the run directory and
    return that record (``status``, ``metrics``, ``best``, ``num_parameters``, ...). A directory
    in use or holding another run is refused (``RunDirRefused``); resuming a completed run
    returns its record untouched. A run that does not complete is recorded, then raises:
    ``ConfigError`` or the error itself, ``TrainingDiverged``, ``TrainingInterrupted``."""
    output_dir = Path(cfg.paths.output_dir)
    with claim(cfg, output_dir) as completed:
        if completed is not None:
            return completed
        pool = cfg.get("device_pool") or {}
        with recorded_attempt(cfg, output_dir) as state, own_process_group(), raise_on_sigterm(), device_lease(
            bool(pool.get("enabled")), str(cfg.trainer.get("accelerator", "cpu")), pool.get("slots"),
            pool.get("dir", "/tmp/kan-lightning-devices"), pool.get("timeout_s"),
        ) as lease:
            state["lease"] = lease
            return _run(cfg, output_dir, state)


def _run(cfg: DictConfig, output_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    validate_config(cfg)
    check_resources(resolved_container(cfg))  # before anything is allocated
    start_logs(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = pipeline.build_data(cfg)
    model = state["model"] = pipeline.build_model(cfg, datamodule.input_dim, datamodule.output_dim)
    module = pipeline.build_module(cfg, model)
    loggers = pipeline.build_loggers(cfg)
    named_callbacks = pipeline.build_callbacks(cfg, with_loggers=bool(loggers))
    lease = state.get("lease") or {}
    trainer = state["trainer"] = pipeline.build_trainer(cfg, list(named_callbacks.values()), loggers, **lease.get("trainer", {}))

    with ddp_children_run_this_job():  # the Trainer's DDP ranks live through fit and test
        resumed_from = None
        if cfg.get("train", True):
            resumed_from = pipeline.resume_path(cfg, module, output_dir)
            trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)
        metrics = pipeline.delivered_metrics(scalars(trainer.callback_metrics), named_callbacks)
        best = pipeline.best_checkpoint(trainer)
        test_ckpt = None
        if cfg.get("test", True):
            if cfg.get("test_ckpt", "best") == "best" and best and best["path"]:
                test_ckpt = best["path"]
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True)
            metrics.update(scalars(trainer.callback_metrics))

    record = completed_record(cfg, state, metrics=metrics, best=best, test_ckpt=test_ckpt, resumed_from=resumed_from)
    reports = pipeline.callback_reports(named_callbacks)
    if reports:
        record["callbacks"] = reports
    if lease:
        record["device_lease"] = {
            "slot": lease["slot"], "start": lease["start"], "end": time.time(), "threads": lease.get("threads")
        }
    if trainer.is_global_zero:
        _log_hparams(trainer, cfg, record)
        write_completed(output_dir, record)
    return record


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, record: dict[str, Any]) -> None:
    """The same hyperparameters and final values to every logger (``kan_lightning.lit.hparams``)."""
    log_run(trainer.loggers, cfg, record, trainer.global_step, cfg.paths.output_dir)


@hydra.main(version_base="1.3", config_path="pkg://kan_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """``kan-train``: exit status 0 (completed), 2 (a mistake in the config: ``error: ...`` on
    stderr, no traceback), 1 (diverged, a full disk or out of memory: one line; other crashes
    with their traceback), 128 + signal (interrupted, state saved).
    In a multirun a failed job re-raises instead, so Hydra marks it failed and runs the rest."""
    try:
        record = train(cfg)
    except (ConfigError, TrainingDiverged) as err:
        if is_multirun():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT if isinstance(err, ConfigError) else 1)
    except (OSError, MemoryError, torch.OutOfMemoryError, RuntimeError) as err:
        # A full disk or memory mid-run: metrics.json records it (where the disk still allows).
        out_of_memory = isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
        if is_multirun() or (isinstance(err, RuntimeError) and not (out_of_memory or isinstance(err, torch.OutOfMemoryError))):
            raise
        print(f"error: the run failed: {error_text(err).splitlines()[0]} (recorded in {Path(cfg.paths.output_dir) / METRICS_FILE})", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as err:
        record = getattr(err, "record", None) or {"error": str(err), "exit_code": err.exit_code}
        has_checkpoint = (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()
        resume = f"; resume with the same overrides plus ckpt_path=last hydra.run.dir={cfg.paths.output_dir}" if has_checkpoint else ""
        print(f"{record['error']}{resume}", file=sys.stderr)
        sys.stderr.flush()
        # Stop here, also in a multirun (SystemExit passes through Hydra's job runner): the
        # machine wants this process gone, so the sweep's remaining jobs must not start.
        sys.exit(record["exit_code"])
    return record["metrics"].get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
