"""The run record ``metrics.json`` of ``kan-train``, however the run ends.

``recorded_attempt`` wraps one attempt at a run: a run that does not complete still leaves its
record, with ``status`` ``failed`` (the error, and the traceback in ``error.txt``), ``diverged``
(the step and message) or ``interrupted`` (the signal and the exit status), before the error
goes on. ``completed_record`` is the record of a run that did complete.
"""

from __future__ import annotations

import errno
import json
import logging
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from kan_lightning.lit.checkpoint import load_plain
from kan_lightning.lit.hparams import hydra_context
from kan_lightning.lit.safety import TrainingDiverged, TrainingInterrupted
from kan_lightning.logs import summary_line
from kan_lightning.run_dir import RunDirRefused

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"

log = logging.getLogger(__name__)


def write_run_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (a sweep summary may read it while jobs run)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / METRICS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    return path


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The one-number entries of ``metrics`` (e.g. ``trainer.callback_metrics``) as floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and torch.as_tensor(v).numel() == 1}


def error_text(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_global_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def _safe_config(cfg: DictConfig) -> Any:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # a broken interpolation is what failed: keep the unresolved text
        return OmegaConf.to_container(cfg, resolve=False)


def completed_record(cfg: DictConfig, state: dict[str, Any], **results: Any) -> dict[str, Any]:
    """The record of a completed run; ``results``: ``metrics``, ``best``, ``test_ckpt``,
    ``resumed_from``."""
    return {
        "status": "completed",
        "task": cfg.get("task_name"),
        "job": hydra_context()[2],
        "seed": cfg.seed,
        **results,
        "num_parameters": sum(p.numel() for p in state["model"].parameters()),
        "wall_time_s": time.time() - state["start"],
        "overrides": _overrides(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def write_completed(output_dir: Path, record: dict[str, Any]) -> None:
    write_run_record(output_dir, record)
    (output_dir / ERROR_FILE).unlink(missing_ok=True)  # from an earlier attempt, now resumed
    log.info(summary_line(record, output_dir))


@contextmanager
def recorded_attempt(cfg: DictConfig, output_dir: Path) -> Iterator[dict[str, Any]]:
    """One attempt at the run, recorded in ``metrics.json`` however it ends. Yields the state
    the record is made of (``start``; the pipeline adds ``model``, ``trainer``, ``lease``)."""
    state: dict[str, Any] = {"start": time.time()}
    try:
        yield state
    except RunDirRefused:  # the directory's run is not this one's to record
        raise
    except TrainingDiverged as err:
        record = _stopped_record(
            cfg, state, "diverged", err, step=err.step, epoch=err.epoch, message=str(err), last_checkpoint=err.checkpoint
        )
        _write_stopped(output_dir, record, err, with_traceback=False)
        raise
    except TrainingInterrupted as err:
        err.record = _interrupted(cfg, output_dir, err, state)
        raise
    except (KeyboardInterrupt, SIGTERMException) as err:
        _raise_interrupted(_interrupted(cfg, output_dir, err, state), err)
    except SystemExit as err:
        # Lightning answers Ctrl-C outside the training loop with sys.exit(1).
        if isinstance(err.__context__, KeyboardInterrupt):
            _raise_interrupted(_interrupted(cfg, output_dir, err.__context__, state), err)
        raise
    except Exception as err:
        _write_stopped(output_dir, _stopped_record(cfg, state, "failed", err), err)
        raise


def _stopped_record(cfg: DictConfig, state: dict[str, Any], status: str, err: BaseException, **extra: Any) -> dict[str, Any]:
    """The run record of a run that did not complete."""
    trainer = state.get("trainer")
    model = state.get("model")
    return {
        "status": status,
        "error": error_text(err),
        "error_type": type(err).__name__,
        "task": cfg.get("task_name"),
        "seed": cfg.get("seed"),
        **extra,
        "metrics": scalars(trainer.callback_metrics) if trainer is not None else {},
        "num_parameters": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "wall_time_s": time.time() - state["start"],
        "overrides": _overrides(),
        "config": _safe_config(cfg),
    }


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


def _raise_interrupted(record: dict[str, Any], cause: BaseException) -> None:
    interrupted = TrainingInterrupted(record["exit_code"] - 128, step=record["step"], epoch=record["epoch"])
    interrupted.record = record
    raise interrupted from cause


def _interrupted(cfg: DictConfig, output_dir: Path, err: BaseException, state: dict[str, Any]) -> dict[str, Any]:
    """Record a run stopped by a signal (SIGTERM, SIGINT/Ctrl-C) as ``interrupted``."""
    if isinstance(err, TrainingInterrupted):
        signum, name, message = err.signum, err.signal_name, str(err)
    else:
        signum = 2 if isinstance(err, KeyboardInterrupt) else 15
        name = "SIGINT" if signum == 2 else "SIGTERM"
        message = f"interrupted by {name}"
    record = _stopped_record(
        cfg, state, "interrupted", err,
        signal=name, exit_code=128 + signum,
        step=getattr(err, "step", None), epoch=getattr(err, "epoch", None),
        checkpoint=getattr(err, "checkpoint", None),
    )
    record["error"] = message
    if _is_global_zero():
        write_run_record(output_dir, record)
    return record
