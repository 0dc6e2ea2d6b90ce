"""Train and test one configuration: ``kan-train [overrides]`` or ``python -m kan_lightning.train``.

``train(cfg)`` is a plain function (tests call it without the command line); ``main`` wraps it
with ``@hydra.main`` and returns the metric a sweeper optimizes.

Reliability (see ``kan_lightning.config_checks`` and ``kan_lightning.lit.safety``):

- The config is checked before any work starts; a mistake raises ``ConfigError`` naming the key
  and value, which ``kan-train`` prints as ``error: ...`` and exits with status 2.
- Every run leaves ``metrics.json`` with a ``status``: ``completed``; ``failed`` (with
  ``error``, and the traceback in ``error.txt``); ``diverged`` (NaN/Inf loss: the step and the
  message; ``last.ckpt`` keeps the last good epoch); ``interrupted`` (SIGTERM/SIGINT: the state
  is saved to ``checkpoints/last.ckpt`` and ``kan-train`` exits with 128 + the signal number).
- Resume a killed or interrupted run in its own directory with the same overrides plus
  ``ckpt_path=last hydra.run.dir=<old run dir>`` (``last`` means
  ``<run dir>/checkpoints/last.ckpt``), or give ``ckpt_path=<file>``. On CPU with a fixed seed
  the resumed run ends with the same metrics as an uninterrupted one.
- One run per directory, one process at a time (``kan_lightning.run_dir``): a directory in use
  or holding another run is refused unless resumed (a completed run is then reported, not
  trained again) or replaced with ``overwrite=true``.
- In a multirun (``-m``) a failed job is recorded in its directory and re-raised: Hydra marks it
  failed, the other jobs of the sweep still run, and the sweep summary shows the error.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from kan_lightning.devices import device_lease
from kan_lightning.config_checks import ConfigError, config_error, data_widths, instantiate_node, layers_mismatch, resolved_container, validate_config
from kan_lightning.lit import KANRegressor
from kan_lightning.lit.checkpoint import check_state_matches, config_targets, load_plain, read_checkpoint
from kan_lightning.lit.hparams import hydra_context, log_run
from kan_lightning.lit.safety import TrainingDiverged, TrainingInterrupted, raise_on_sigterm
import kan_lightning.resolvers  # noqa: F401  (registers the configs' resolvers)
from kan_lightning.logs import start_logs, summary_line
from kan_lightning.resources import check_resources
from kan_lightning.run_dir import RunDirRefused, check_same_run, claim

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"
# Set by Lightning in the launching process when it starts DDP ranks.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Exit status of kan-train for a mistake in the configuration (argparse's convention).
CONFIG_ERROR_EXIT = 2

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, input_dim: int, output_dim: int) -> torch.nn.Module:
    """The network of ``cfg.model``, checked against the data's dimensions (an ``auto`` first or
    last width takes them, in ``cfg`` too, so the run record shows the widths used)."""
    widths = data_widths(list(cfg.model.layers_hidden), input_dim, output_dim)
    cfg.model.layers_hidden = widths
    if widths[0] != input_dim or widths[-1] != output_dim:
        raise layers_mismatch(widths, input_dim, output_dim)
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
    _try_optimizer(cfg, optimizer, scheduler, model)
    return module


def _try_optimizer(cfg: DictConfig, optimizer: Any, scheduler: Any, model: torch.nn.Module) -> None:
    try:  # building an optimizer (or a scheduler on it) leaves the parameters untouched
        trial = optimizer(list(model.parameters()))
    except (ValueError, TypeError) as err:
        raise config_error("optimizer", cfg.optimizer, err) from err
    if scheduler is not None:
        try:
            scheduler(trial)
        except (ValueError, TypeError) as err:
            raise config_error("scheduler.factory", cfg.scheduler.factory, err) from err


def _instantiate_named(group: DictConfig | None, section: str) -> dict[str, Any]:
    return {
        name: instantiate_node(node, f"{section}.{name}")
        for name, node in (group or {}).items()
        if node is not None and "_target_" in node
    }


def _instantiate_all(group: DictConfig | None, section: str = "callbacks") -> list[Any]:
    return list(_instantiate_named(group, section).values())


def callback_reports(named_callbacks: dict[str, Any]) -> dict[str, Any]:
    """What callbacks with a ``report()`` method have to say about the run (e.g. the metrics
    of every grid-extension stage), keyed by their config name, for ``metrics.json``."""
    return {name: cb.report() for name, cb in named_callbacks.items() if callable(getattr(cb, "report", None))}


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
    """``"last"`` -> ``<run dir>/checkpoints/last.ckpt`` when it exists (else start afresh);
    a path is returned as given."""
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            return str(last)
        log.warning(
            f"ckpt_path=last: no checkpoint at {last}, starting from scratch (to resume a run, "
            "select its directory with hydra.run.dir=<old run dir>)"
        )
        return None
    return ckpt_path


def _checked_resume(ckpt_path: str | None, module: KANRegressor, cfg: DictConfig) -> str | None:
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


def _prepare_data(cfg: DictConfig, datamodule: Any) -> None:
    """Generate the data now (it is idempotent), so a target that yields NaN/Inf fails before
    the Trainer starts, as a ``ConfigError`` naming the function or formula."""
    from kan_lightning.data import SyntheticFunctionDataModule

    if not isinstance(datamodule, SyntheticFunctionDataModule):
        return
    try:
        datamodule.setup("fit")
    except ValueError as err:
        key = "data.formula" if cfg.data.get("formula") is not None else "data.function"
        raise ConfigError(f"{key}={cfg.data.get(key.split('.')[1])!r}: {err}") from None


def _is_global_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def _safe_config(cfg: DictConfig) -> Any:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # a broken interpolation is what failed: keep the unresolved text
        return OmegaConf.to_container(cfg, resolve=False)


def _error_text(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _stopped_record(cfg: DictConfig, start: float, status: str, err: BaseException, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The run record of a run that did not complete."""
    trainer = state.get("trainer")
    model = state.get("model")
    metrics = _scalars(trainer.callback_metrics) if trainer is not None else {}
    record = {
        "status": status,
        "error": _error_text(err),
        "error_type": type(err).__name__,
        "task": cfg.get("task_name"),
        "seed": cfg.get("seed"),
        **extra,
        "metrics": metrics,
        "num_parameters": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "wall_time_s": time.time() - start,
        "overrides": _overrides(),
        "config": _safe_config(cfg),
    }
    return record


def _write_stopped(output_dir: Path, record: dict[str, Any], err: BaseException, with_traceback: bool = True) -> None:
    if not _is_global_zero():
        return
    try:
        try:
            write_run_record(output_dir, record)
        except OSError as io_err:
            if io_err.errno != errno.ENOSPC:
                raise
            # A full disk: what the failed writes left behind is garbage; free it and record the
            # failure in a short record (the config may not fit).
            removed = _remove_partial_files(output_dir)
            short = {k: record[k] for k in ("status", "error", "error_type", "task", "seed", "wall_time_s") if k in record}
            write_run_record(output_dir, {**short, "removed_partial_files": removed})
        log.error(summary_line(record, output_dir))
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__)) if with_traceback else f"{record['error']}\n"
        (output_dir / ERROR_FILE).write_text(text)
    except OSError as io_err:  # never hide the original error behind a disk problem
        log.error(f"could not write the run record to {output_dir}: {io_err}")


def _remove_partial_files(output_dir: Path) -> list[str]:
    """Delete the leftovers of writes a full disk cut short: temporary files, and checkpoints
    that cannot be read back (truncated)."""
    removed = []
    for path in [*output_dir.glob("*.tmp"), *output_dir.glob("checkpoints/*.tmp"), *output_dir.glob("checkpoints/*.ckpt")]:
        if path.suffix == ".ckpt":
            try:
                load_plain(path, "checkpoint")
                continue
            except FileNotFoundError:
                continue
            except ValueError as bad:
                if "corrupt or truncated" not in str(bad) and "empty" not in str(bad):
                    continue
        path.unlink(missing_ok=True)
        removed.append(str(path))
    return removed


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test, the configured model; write ``metrics.json`` into the run directory.

    The run directory is held for this run only (see ``kan_lightning.run_dir``): a directory in
    use, or holding another run, is refused with ``RunDirRefused`` (a ``ConfigError``); resuming
    a completed run returns its record untouched.

    Returns the run record: ``status``, ``metrics`` (final train/val/test values), ``best``
    (the checkpoint monitor's best value), ``num_parameters``, ``wall_time_s``, ``seed``,
    ``overrides`` and the resolved ``config``.

    A run that does not complete writes ``metrics.json`` too, then raises: ``failed`` (the
    error itself; a mistake in the config is a ``ConfigError``), ``diverged``
    (``TrainingDiverged``) or ``interrupted`` (SIGTERM, SIGINT/Ctrl-C: ``TrainingInterrupted``,
    a ``BaseException`` like ``KeyboardInterrupt``, whose ``record`` holds ``checkpoint``,
    ``signal`` and ``exit_code``).
    """
    output_dir = Path(cfg.paths.output_dir)
    with claim(cfg, output_dir) as completed:
        return completed if completed is not None else _attempt(cfg, output_dir)


def _attempt(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """One attempt at the run, recorded in ``metrics.json`` however it ends."""
    start = time.time()
    state: dict[str, Any] = {}
    pool = cfg.get("device_pool") or {}
    try:
        with raise_on_sigterm(), device_lease(
            bool(pool.get("enabled")), str(cfg.trainer.get("accelerator", "cpu")), pool.get("slots"),
            pool.get("dir", "/tmp/kan-lightning-devices"), pool.get("timeout_s"),
        ) as lease:
            state["lease"] = lease
            return _train(cfg, output_dir, start, state)
    except RunDirRefused:  # the directory's run is not this one's to record
        raise
    except TrainingDiverged as err:
        record = _stopped_record(
            cfg, start, "diverged", err, state, step=err.step, epoch=err.epoch, message=str(err), last_checkpoint=err.checkpoint
        )
        _write_stopped(output_dir, record, err, with_traceback=False)
        raise
    except TrainingInterrupted as err:
        err.record = _interrupted(cfg, output_dir, start, err, state)
        raise
    except (KeyboardInterrupt, SIGTERMException) as err:
        _raise_interrupted(_interrupted(cfg, output_dir, start, err, state), err)
    except SystemExit as err:
        # Lightning answers Ctrl-C outside the training loop with sys.exit(1).
        if isinstance(err.__context__, KeyboardInterrupt):
            _raise_interrupted(_interrupted(cfg, output_dir, start, err.__context__, state), err)
        raise
    except Exception as err:
        _write_stopped(output_dir, _stopped_record(cfg, start, "failed", err, state), err)
        raise
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """End this run's DDP process group: the next job of a multirun, in this same process, must
    start its own with its own child processes, not reuse one whose peers have exited."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _raise_interrupted(record: dict[str, Any], cause: BaseException) -> None:
    interrupted = TrainingInterrupted(record["exit_code"] - 128, step=record["step"], epoch=record["epoch"])
    interrupted.record = record
    raise interrupted from cause


def _interrupted(cfg: DictConfig, output_dir: Path, start: float, err: BaseException, state: dict[str, Any]) -> dict[str, Any]:
    """Record a run stopped by a signal (SIGTERM, SIGINT/Ctrl-C) as ``interrupted``."""
    if isinstance(err, TrainingInterrupted):
        signum, name, message = err.signum, err.signal_name, str(err)
    else:
        signum = 2 if isinstance(err, KeyboardInterrupt) else 15
        name = "SIGINT" if signum == 2 else "SIGTERM"
        message = f"interrupted by {name}"
    record = _stopped_record(
        cfg, start, "interrupted", err, state,
        signal=name, exit_code=128 + signum,
        step=getattr(err, "step", None), epoch=getattr(err, "epoch", None),
        checkpoint=getattr(err, "checkpoint", None),
    )
    record["error"] = message
    if _is_global_zero():
        write_run_record(output_dir, record)
    return record


def _train(cfg: DictConfig, output_dir: Path, start: float, state: dict[str, Any]) -> dict[str, Any]:
    validate_config(cfg)
    check_resources(resolved_container(cfg))  # before anything is allocated
    start_logs(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate_node(cfg.data, "data", _convert_="all")
    _prepare_data(cfg, datamodule)
    model = state["model"] = build_model(cfg, datamodule.input_dim, datamodule.output_dim)
    module = build_module(cfg, model)
    loggers = _instantiate_all(cfg.get("logger"), "logger")
    named_callbacks = _instantiate_named(cfg.get("callbacks"), "callbacks")
    callbacks = list(named_callbacks.values())
    # Lightning refuses to start with a learning-rate monitor but no logger, or a progress bar
    # callback while progress bars are off: drop those callbacks instead.
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    lease = state.get("lease") or {}
    trainer: L.Trainer = instantiate_node(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **lease.get("trainer", {})
    )
    state["trainer"] = trainer

    with ddp_children_run_this_job():  # the Trainer's DDP ranks live through fit and test
        resumed_from = None
        if cfg.get("train", True):
            resumed_from = _checked_resume(_resolve_ckpt_path(cfg.get("ckpt_path"), output_dir), module, cfg)
            trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)
        metrics = _scalars(trainer.callback_metrics)

        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        best = None
        if checkpoint is not None and checkpoint.best_model_score is not None:
            best = {"monitor": checkpoint.monitor, "value": float(checkpoint.best_model_score), "path": checkpoint.best_model_path}

        test_ckpt = None
        if cfg.get("test", True):
            if cfg.get("test_ckpt", "best") == "best" and best and best["path"]:
                test_ckpt = best["path"]
            trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True)
            metrics.update(_scalars(trainer.callback_metrics))

    record = {
        "status": "completed",
        "task": cfg.get("task_name"),
        "job": hydra_context()[2],
        "seed": cfg.seed,
        "metrics": metrics,
        "best": best,
        "test_ckpt": test_ckpt,
        "resumed_from": resumed_from,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "wall_time_s": time.time() - start,
        "overrides": _overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    reports = callback_reports(named_callbacks)
    if reports:
        record["callbacks"] = reports
    if lease:
        record["device_lease"] = {"slot": lease["slot"], "start": lease["start"], "end": time.time()}
    if trainer.is_global_zero:
        _log_hparams(trainer, cfg, record)
        write_run_record(output_dir, record)
        (output_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier attempt, now resumed
        log.info(summary_line(record, output_dir))
    return record


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, record: dict[str, Any]) -> None:
    """The same hyperparameters and final values to every logger (``kan_lightning.lit.hparams``)."""
    log_run(trainer.loggers, cfg, record, trainer.global_step, cfg.paths.output_dir)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def ddp_children_run_this_job() -> Iterator[None]:
    """Lightning starts DDP ranks > 0 by re-running the command line with ``hydra.run.dir`` set
    to ``HydraConfig.run.dir``. In a multirun job that command line is the whole sweep, so each
    child would start a second sweep in a new directory: make it this job's single run, in this
    job's directory, for the duration of the ``with`` block. Lightning also leaves the rank
    variables in this process's environment, which would make the next job believe its ranks
    were started from outside: they are restored afterwards."""
    if not _is_multirun() or os.environ.get("LOCAL_RANK"):
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, run_dir = sys.argv, hydra_cfg.run.dir
    saved_env = {name: os.environ.get(name) for name in DDP_ENV}
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@hydra.main(version_base="1.3", config_path="pkg://kan_lightning.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """``kan-train``: exit status 0 (completed), 2 (a mistake in the config: ``error: ...`` on
    stderr, no traceback), 1 (diverged, a full disk or out of memory: one line; other crashes
    with their traceback), 128 + signal (interrupted, state saved).
    In a multirun a failed job re-raises instead, so Hydra marks it failed and runs the rest."""
    try:
        record = train(cfg)
    except (ConfigError, TrainingDiverged) as err:
        if _is_multirun():
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT if isinstance(err, ConfigError) else 1)
    except (OSError, MemoryError, torch.OutOfMemoryError, RuntimeError) as err:
        # A full disk or memory mid-run: metrics.json records it (where the disk still allows).
        out_of_memory = isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
        if _is_multirun() or (isinstance(err, RuntimeError) and not (out_of_memory or isinstance(err, torch.OutOfMemoryError))):
            raise
        print(f"error: the run failed: {_error_text(err).splitlines()[0]} (recorded in {Path(cfg.paths.output_dir) / METRICS_FILE})", file=sys.stderr)
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
    value = record["metrics"].get(cfg.get("optimized_metric"))
    return value


if __name__ == "__main__":
    main()
