"""The jobs of a stack: each job's config, Hydra context, log file, preparation (data, model,
module and loggers, as ``kan-train`` builds them before ``fit``) and its record when interrupted."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from kan_lightning.config_checks import ConfigError, instantiate_node, resolved_container, validate_config
from kan_lightning.lit.safety import TrainingInterrupted
from kan_lightning.logs import start_logs, summary_line
from kan_lightning.pipeline import build_model, build_module
from kan_lightning.resources import check_resources
from kan_lightning.run_dir import claim
from kan_lightning.run_records import write_run_record

# one logger for the stacked loop, its records and the jobs' own log files (job_log)
log = logging.getLogger("kan_lightning.stacked")


class RunAlone(Exception):
    """The job could not be prepared for a stack (its config or data failed): run it alone,
    where ``kan-train`` records the failure as usual."""


@dataclass
class Job:
    """One job of a stack: its config, its Hydra config (job number, overrides) and its state."""

    cfg: DictConfig
    hydra_cfg: DictConfig | None = None  # the job's whole config with its hydra node
    output_dir: Path = field(init=False)
    start: float = field(default_factory=time.time)
    datamodule: Any = None
    module: Any = None
    loggers: list = field(default_factory=list)
    result: Any = None  # the run record, or the exception the job ended with
    diverged: TrainingDivergedAt | None = None

    def __post_init__(self) -> None:
        with job_context(self):  # (the path may come from Hydra's runtime)
            self.output_dir = Path(self.cfg.paths.output_dir)


@dataclass
class TrainingDivergedAt:
    step: int
    epoch: int
    batch_idx: int
    value: float
    message: str
    num_parameters: int


@contextmanager
def job_context(job: Job) -> Iterator[None]:
    """Hydra's runtime config set to the job's (its number and overrides for the records)."""
    if job.hydra_cfg is None:
        yield
        return
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(job.hydra_cfg)
    try:
        yield
    finally:
        instance.cfg = saved


@contextmanager
def job_log(job: Job) -> Iterator[None]:
    """Also write this module's log lines to the job's own log file (Hydra's job log)."""
    name = OmegaConf.select(job.hydra_cfg, "hydra.job.name") if job.hydra_cfg is not None else None
    handler = logging.FileHandler(job.output_dir / f"{name or 'train'}.log") if job.output_dir.is_dir() else None
    if handler is not None:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        log.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def write_interrupted(job: Job, signum: int) -> None:
    name = TrainingInterrupted(signum).signal_name
    record = {
        "status": "interrupted", "error": f"interrupted by {name}", "error_type": "TrainingInterrupted",
        "task": job.cfg.get("task_name"), "seed": job.cfg.get("seed"), "signal": name, "exit_code": 128 + signum,
        "step": None, "epoch": None, "checkpoint": None, "metrics": {},
        "wall_time_s": time.time() - job.start, "overrides": overrides(),
        "config": OmegaConf.to_container(job.cfg, resolve=True),
    }
    try:
        write_run_record(job.output_dir, record)
        log.error(summary_line(record, job.output_dir))
    except OSError as err:  # never hide the signal behind a disk problem
        log.error(f"could not write the run record to {job.output_dir}: {err}")


@contextmanager
def claimed(job: Job) -> Iterator[dict[str, Any] | None]:
    with claim(job.cfg, job.output_dir) as completed:
        yield completed


def prepare(job: Job) -> None:
    """What ``kan-train`` does before ``fit``, in the same order (so the model's initial
    weights come from the same random numbers)."""
    cfg = job.cfg
    validate_config(cfg)
    check_resources(resolved_container(cfg))
    start_logs(cfg, job.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_node(cfg.data, "data", _convert_="all")
    try:
        datamodule.setup("fit")
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    model = build_model(cfg, datamodule.input_dim, datamodule.output_dim)
    module = build_module(cfg, model)
    module.set_target_normalization(datamodule.normalization)
    job.datamodule, job.module = datamodule, module
    job.loggers = [
        instantiate_node(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None and "_target_" in node
    ]


def overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
