"""Check every job of a multirun before any job is launched, whatever the launcher (basic,
``launcher=parallel``, submitit on this machine or on SLURM): a mistake in one job's values fails
in seconds, where the sweep was started, instead of after that job waited in a queue.

:class:`ValidateSweepJobs` is a Hydra callback (``conf/hydra/default.yaml``). At the start of a
multirun it lists the jobs the sweeper will run, composes each job's config as the launcher will
and runs ``kan_lightning.config_checks.validate_config`` on it. The first mistake ends
``kan-train`` with status 2 and ``error: job #<n> (<its overrides>): <key>=<value> ...``, before
the sweep directory exists.

The basic sweeper's jobs are listed exactly (every combination). A sweeper that picks values as
it goes (Optuna) is checked on every value it may pick, one swept key at a time: each choice, and
both ends of an interval.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Sequence

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from kan_lightning.config_checks import ConfigError, validate_config
import kan_lightning.resolvers  # noqa: F401  (registers the configs' resolvers)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
CONFIG_ERROR_EXIT = 2  # as kan-train's own config errors


def _parsed(config: DictConfig, overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create(config_loader=GlobalHydra.instance().config_loader()).parse_overrides(overrides)


def _candidates(override: Any) -> list[str]:
    """Every value a swept override may take (the ends of an interval)."""
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    interval = override.value()
    return [str(interval.start), str(interval.end)]


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The override lists of the jobs the multirun's sweeper will launch (see the module)."""
    sweeper = config.hydra.sweeper
    arguments = list(config.hydra.overrides.task)
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    if sweeper.get("_target_") == BASIC_SWEEPER:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        batches = BasicSweeper.split_arguments(_parsed(config, params + arguments), None)
        return [list(job) for batch in batches for job in batch]
    values: dict[str, list[str]] = {}  # a later override of a key replaces an earlier one
    for override in _parsed(config, params + arguments):
        key = override.get_key_element()
        values.pop(key, None)
        values[key] = _candidates(override) if override.is_sweep_override() else [override.get_value_element_as_str()]
    firsts = {key: options[0] for key, options in values.items()}
    jobs = [[f"{key}={value}" for key, value in firsts.items()]]
    for key, options in values.items():
        for value in options[1:]:
            jobs.append([f"{k}={value if k == key else v}" for k, v in firsts.items()])
    return jobs


def _job_config(config: DictConfig, overrides: list[str], number: int) -> DictConfig:
    """The job's config as its launcher composes it, with its run directory filled in."""
    job = GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)
    with open_dict(job.hydra):
        job.hydra.job.num = number
        job.hydra.runtime.output_dir = str(Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir))
    return job


def _without_hydra(config: DictConfig) -> DictConfig:
    """What the task function receives (Hydra's own node removed, as ``run_job`` does)."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def check_sweep_jobs(config: DictConfig, jobs: Sequence[Sequence[str]] | None = None) -> int:
    """Compose and validate every job; raise :class:`ConfigError` naming the first bad one.
    Returns the number of jobs checked."""
    jobs = sweep_jobs(config) if jobs is None else jobs
    hydra_config = HydraConfig.instance()
    saved = hydra_config.cfg
    try:
        for number, overrides in enumerate(jobs):
            label = f"job #{number} ({' '.join(overrides)})"
            try:
                job = _job_config(config, list(overrides), number)
                hydra_config.set_config(job)  # for ${hydra:...} in the job's config
                validate_config(_without_hydra(job))
            except ConfigError as err:
                raise ConfigError(f"{label}: {err}") from None
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(f"{label}: {str(err).strip().splitlines()[0]}") from None
    finally:
        hydra_config.cfg = saved
    return len(jobs)


class ValidateSweepJobs(Callback):
    """Validate every job of a multirun of the configs named ``config_names`` before launching."""

    def __init__(self, config_names: Sequence[str] = ("train",)) -> None:
        self.config_names = set(config_names)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.config_name not in self.config_names:
            return
        try:
            check_sweep_jobs(config)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(CONFIG_ERROR_EXIT)
