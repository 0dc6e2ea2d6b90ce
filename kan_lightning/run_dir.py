"""The life cycle of a run directory: one run per directory, one process at a time.

``claim(cfg, output_dir)`` is entered by ``kan_lightning.commands.train.train`` before anything else:

- A lock (``fcntl.flock`` on ``<run dir>/.run.lock``, released by the kernel however the process
  ends) keeps a second process out while a run is in progress: it is refused, naming the
  directory and the pid of the process that holds it.
- A directory that holds a completed run, or checkpoints of an unfinished one, is refused unless
  the command asks to resume it (``ckpt_path=last`` or a file) or to replace it
  (``overwrite=true``, which first deletes the old run's record, checkpoints and logs, so nothing
  of it mixes with the new run). Leftovers of a recorded run that saved no checkpoint (a config
  error, a crash in the first epoch) are deleted when a run starts afresh there. Without a run
  record or checkpoints a directory is not a run's, and nothing in it is deleted.
- Resuming a completed run does nothing: the stored record is returned as it is (a requeued or
  re-run job of a sweep stays ``completed``), exit status 0.
- Resuming with another model or data config than the run's is refused, naming each differing
  key with both values (:func:`check_same_run`).

Refusals raise :class:`RunDirRefused` (a ``ConfigError``: ``kan-train`` exits 2) and change
nothing in the directory. Only the launching process (global rank 0) takes the lock and deletes
files; DDP ranks started for its run (Lightning re-runs the command in the same directory) or by
``srun``/``torchrun`` skip those steps, but return a completed run's record just as rank 0 does.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from kan_lightning.config_checks import ConfigError, data_widths

LOCK_FILE = ".run.lock"
RECORD_FILES = ("metrics.json", "metrics.json.tmp", "error.txt")
# What the shipped configs write into a run directory (the config may name more; see _outputs).
OUTPUT_DIRS = ("checkpoints", "tensorboard", "csv", "figures")
# Data settings that change how a run is computed, not what it learns from.
OPERATIONAL_DATA_KEYS = ("batch_size", "num_workers")
# Set to a nonzero rank in every process of a distributed run but the first.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")

log = logging.getLogger(__name__)


class RunDirRefused(ConfigError):
    """The run directory cannot be used as asked; nothing in it was changed."""


def is_launching_process() -> bool:
    """True unless this process is a nonzero rank of a distributed run."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


@contextmanager
def claim(cfg: DictConfig, output_dir: Path) -> Iterator[dict[str, Any] | None]:
    """Hold ``output_dir`` for one run. Yields the record of a completed run that the command
    asks to resume (nothing is left to do), else ``None``: the run may start."""
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise RunDirRefused(f"overwrite={overwrite!r} must be true or false")
    launching = is_launching_process()
    lock = _lock(output_dir) if launching else None
    try:
        yield _check(cfg, output_dir, overwrite, launching)
    finally:
        if lock is not None:
            os.close(lock)  # releases the lock


def _check(cfg: DictConfig, output_dir: Path, overwrite: bool, launching: bool) -> dict[str, Any] | None:
    resume = cfg.get("ckpt_path")
    record = read_record(output_dir)
    status = record.get("status") if record else None
    checkpoints = sorted(str(p) for d in _checkpoint_dirs(cfg, output_dir) for p in d.glob("*.ckpt"))
    if overwrite:
        if resume == "last" or (resume and _inside(Path(resume), output_dir)):
            raise RunDirRefused(f"overwrite=true would delete the checkpoint that ckpt_path={resume!r} resumes from: give one of them")
        if launching and (record or checkpoints):
            _clear(cfg, output_dir)
        return None
    if status == "completed":
        if resume is None:
            raise RunDirRefused(
                f"{output_dir} holds a completed run: choose another hydra.run.dir, or add overwrite=true to "
                "replace it (with ckpt_path=last it is reported, not trained again)"
            )
        check_same_run(record.get("config"), cfg, f"{output_dir} holds a completed run")
        if launching:
            log.warning(f"{output_dir}: the run has already completed (status in {output_dir / RECORD_FILES[0]}); nothing to do")
        return record
    if checkpoints and resume is None:
        what = f"an unfinished run (status {status})" if status else "checkpoints of an unfinished run"
        raise RunDirRefused(
            f"{output_dir} holds {what}: resume it with ckpt_path=last, replace it with overwrite=true, "
            "or choose another hydra.run.dir"
        )
    if checkpoints and resume == "last" and not any(Path(p).name == "last.ckpt" for p in checkpoints):
        raise RunDirRefused(
            f"ckpt_path=last: {output_dir} has no last.ckpt but other checkpoints ({checkpoints[0]}, ...): "
            "give ckpt_path=<file>, or overwrite=true to start afresh"
        )
    if record and not checkpoints and launching:
        _clear(cfg, output_dir)  # what a run that saved nothing left behind
    return None


def _resolve_auto_widths(new_model: Any, stored_model: Any) -> None:
    """An ``auto`` end of ``model.layers_hidden`` means the data's dimension, which the run
    recorded resolved (the data config is compared on its own)."""
    if not (isinstance(new_model, dict) and isinstance(stored_model, dict)):
        return
    new, old = new_model.get("layers_hidden"), stored_model.get("layers_hidden")
    if isinstance(new, list) and isinstance(old, list) and new and old:
        new_model["layers_hidden"] = data_widths(new, old[0], old[-1])


def check_same_run(stored: dict[str, Any] | None, cfg: DictConfig, what: str) -> None:
    """Refuse to continue a run (``stored``: its resolved config) with another model or data
    config, naming every differing key and both values. Nothing stored: nothing to compare."""
    if not isinstance(stored, dict):
        return
    new = OmegaConf.to_container(cfg, resolve=True)
    _resolve_auto_widths(new.get("model"), stored.get("model"))
    changes = []
    for section in ("model", "data"):
        if not isinstance(stored.get(section), dict):
            continue
        old_flat, new_flat = _flatten(stored[section], section), _flatten(new.get(section) or {}, section)
        for key in sorted(old_flat.keys() | new_flat.keys()):
            if section == "data" and key.split(".")[1] in OPERATIONAL_DATA_KEYS:
                continue
            old, value = old_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
            if old != value:
                changes.append(f"{key}={value!r} (the run has {old!r})")
    if changes:
        raise RunDirRefused(
            f"{what} of another config: {', '.join(changes)}; resume with the run's values, or start afresh "
            "(overwrite=true or another hydra.run.dir)"
        )


def read_record(output_dir: Path) -> dict[str, Any] | None:
    """The run record (``metrics.json``) in ``output_dir``; ``status: unreadable`` if damaged."""
    path = output_dir / RECORD_FILES[0]
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "unreadable"}
    return record if isinstance(record, dict) else {"status": "unreadable"}


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}"))
        return flat
    return {prefix: node}


def _lock(output_dir: Path) -> int | None:
    """Take the run directory's lock, or refuse naming the process that holds it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):  # a file system without locks
            os.close(fd)
            log.warning(f"cannot lock {output_dir} ({err}): another process could use it at the same time")
            return None
        holder = _holder(fd)
        os.close(fd)
        raise RunDirRefused(
            f"{output_dir} is in use by another run (pid {holder}): wait for it to end, or choose another hydra.run.dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(fd: int) -> str:
    """The pid written by the lock's holder (which writes it just after locking)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "unknown"


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path != directory and path.is_relative_to(directory)


def _configured_dirs(cfg: DictConfig) -> list[Path]:
    """Directories the config's callbacks (``dirpath``) and loggers (``save_dir``/``name``) write to."""
    found = []
    for section in ("callbacks", "logger"):
        node = cfg.get(section)
        nodes = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        for item in nodes.values():
            if not isinstance(item, dict):
                continue
            if item.get("dirpath"):
                found.append(Path(item["dirpath"]))
            if item.get("save_dir"):
                found.append(Path(item["save_dir"]) / str(item.get("name") or ""))
    return found


def _checkpoint_dirs(cfg: DictConfig, output_dir: Path) -> list[Path]:
    dirs = [output_dir / "checkpoints", *_configured_dirs(cfg)]
    return [d for d in dict.fromkeys(dirs) if _inside(d, output_dir) and d.is_dir()]


def _clear(cfg: DictConfig, output_dir: Path) -> None:
    """Delete an earlier run's record, checkpoints and logs (only paths inside ``output_dir``;
    Hydra's ``.hydra/`` and log file belong to the run starting now)."""
    paths = [output_dir / name for name in (*RECORD_FILES, *OUTPUT_DIRS)] + _configured_dirs(cfg)
    removed = []
    for path in dict.fromkeys(paths):
        if not _inside(path, output_dir) or not path.exists():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    if removed:
        log.info(f"{output_dir}: deleted the earlier run's {', '.join(removed)}")
