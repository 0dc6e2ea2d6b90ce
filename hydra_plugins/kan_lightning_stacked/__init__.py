"""``launcher=stacked``: the jobs of a sweep that share a shape train as one stacked model.

    kan-train -m launcher=stacked seed=0,1,2,3 data.function=paper_exp_sin,paper_bessel

Jobs whose configs differ only in what each job may keep for itself (seed, data function, noise,
...: :mod:`kan_lightning.stacked.plan`) and use only what the stacked loop supports train
together in this process (:mod:`kan_lightning.stacked.training`); every job still gets its own
directory, ``.hydra`` record, ``metrics.json``, TensorBoard run and checkpoints. The others run
one by one, as with Hydra's basic launcher, with the reason in the log. A job that fails does
not stop the others.
"""

# (no "from __future__ import annotations": Hydra executes this file outside sys.modules when it
# scans for plugins, where dataclasses cannot resolve string annotations)

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.kan_lightning_stacked.StackedLauncher"
    # at most this many models in one stack (larger groups are split)
    max_models: int = 256


ConfigStore.instance().store(group="hydra/launcher", name="kan_stacked", node=StackedLauncherConf, provider="kan_lightning")


class StackedLauncher(Launcher):
    def __init__(self, max_models: int = 256) -> None:
        super().__init__()
        if not isinstance(max_models, int) or max_models < 1:
            raise ValueError(f"hydra.launcher.max_models must be an integer >= 1, got {max_models!r}")
        self.max_models = max_models
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def _run(self, config: DictConfig, task_function: TaskFunction) -> JobReturn:
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from kan_lightning.stacked.plan import plan
        from kan_lightning.lit.safety import TrainingInterrupted
        from kan_lightning.stacked.training import Job, RunAlone, job_context, train_stack

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, those of one shape stacked")

        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
        configs, returns, jobs, containers = [], [], [], []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
            # run_job makes the job's directory and .hydra record and resolves its runtime;
            # the collecting task only keeps the job's config
            ret = self._run(sweep_config, lambda cfg: None)
            returns.append(ret)
            # the whole config: its hydra node resolves interpolations into it (the sweep dir)
            job = Job(ret.cfg, sweep_config)
            jobs.append(job)
            with job_context(job):
                try:
                    containers.append(OmegaConf.to_container(ret.cfg, resolve=True))
                except Exception as err:  # noqa: BLE001 - a broken config: the job runs alone and says so
                    containers.append({"_broken": str(err)})
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

        stacks, alone = plan(containers, self.max_models)
        for i, reason in sorted(alone.items()):
            log.info(f"#{initial_job_idx + i} runs alone: {reason}")
        for group in stacks:
            log.info(f"stacking {len(group)} jobs: {', '.join(f'#{initial_job_idx + i}' for i in group)}")
            try:
                results = train_stack([jobs[i] for i in group])
            except TrainingInterrupted as err:
                # as kan-train: the machine wants this process gone, the remaining jobs must not start
                print(str(err), file=sys.stderr)
                sys.exit(128 + err.signum)
            except Exception as err:  # noqa: BLE001 - the stack failed as a whole: run its jobs alone
                log.error(f"the stack of jobs {group} failed ({type(err).__name__}: {err}); running them one by one")
                results = [RunAlone(str(err))] * len(group)
            for i, result in zip(group, results):
                if isinstance(result, RunAlone):
                    alone[i] = str(result)
                    log.info(f"#{initial_job_idx + i} runs alone: {result}")
                else:
                    _set_result(returns[i], result, jobs[i])
        for i in sorted(alone):
            returns[i] = self._run(configs[i], self.task_function)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns


def _set_result(ret: JobReturn, result: Any, job: Any) -> None:
    """The JobReturn of a stacked job: ``kan-train``'s return value (the optimized metric), or
    the exception the job ended with."""
    if isinstance(result, BaseException):
        ret.status = JobStatus.FAILED
        ret.return_value = result
        log.error(f"{job.output_dir}: {type(result).__name__}: {result}")
        return
    ret.status = JobStatus.COMPLETED
    ret.return_value = (result.get("metrics") or {}).get(job.cfg.get("optimized_metric"))
