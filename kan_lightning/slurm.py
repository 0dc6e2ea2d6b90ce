"""Sweeps on SLURM (``launcher=slurm``, ``launcher=slurm_ddp``) that end cleanly whatever happens
to their jobs.

:class:`SlurmLauncher` is Hydra's submitit SLURM launcher with two changes:

- In the job: the time-limit signal that submitit asks SLURM for (``USR2``, ``signal_delay_s``
  before the limit) first stops training like SIGTERM does (``last.ckpt`` saved at the next batch
  boundary), then goes to submitit, which requeues the job (status ``requeued``; the requeued job
  resumes with ``ckpt_path=last``) or, after ``max_num_timeout`` requeues, ends it (``timeout``).
- In the sweep controller: jobs are followed with ``squeue`` (no accounting database needed), so a
  job that ends without a result (``scancel``, time limit, out of memory, node failure, cancelled
  while pending) is noticed instead of waited for. Its ``metrics.json`` gets the SLURM job id and
  state and the status ``cancelled``, ``timeout`` or ``failed``; Hydra then reports it as a failed
  job once every job has finished, and ``kan-sweep-summary`` lists it.

The resolvers ``kan_slurm_gpus``, ``kan_slurm_cpus`` and ``kan_slurm_mem_gb`` size the request from
the trainer and data settings (registered by ``kan_lightning.resolvers``).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

TIME_LIMIT_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM to send (its default)
# squeue states of a job that may still produce a result
UNFINISHED = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
}
STATUS_OF_STATE = {"CANCELLED": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout"}
GPU_ACCELERATORS = ("gpu", "cuda")
MEM_GB_PER_TASK = 2


# ---------------------------------------------------------------------------------------------
# Resource resolvers (conf/launcher/slurm*.yaml)


def gpus_per_node(accelerator: Any, devices: Any) -> int:
    """GPUs to request per node: the trainer's devices when it trains on GPUs, else none."""
    if str(accelerator).lower() not in GPU_ACCELERATORS:
        return 0
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    return int(devices) if isinstance(devices, int) and devices > 0 else 1


def cpus_per_task(num_workers: Any) -> int:
    """One CPU for the training process and one per data-loader worker."""
    return 1 + max(0, int(num_workers or 0))


def mem_gb(tasks_per_node: Any, per_task: Any = MEM_GB_PER_TASK) -> int:
    return int(tasks_per_node) * int(per_task)


# ---------------------------------------------------------------------------------------------
# In the job


def _job_record_path() -> Path | None:
    if not HydraConfig.initialized():
        return None
    output_dir = HydraConfig.get().runtime.get("output_dir")
    return Path(output_dir) / "metrics.json" if output_dir else None


def update_record(path: Path | None, **changes: Any) -> dict[str, Any] | None:
    """Merge ``changes`` into the run record at ``path`` (nothing when there is none)."""
    if path is None or not path.is_file():
        return None
    from kan_lightning.run_records import write_run_record

    record = json.loads(path.read_text())
    record.update(changes)
    write_run_record(path.parent, record)
    return record


class _TimeLimitSignal:
    """While active, the time-limit signal runs the current SIGTERM handler (the run saves
    ``last.ckpt`` and stops) and is remembered, to be passed on to submitit afterwards."""

    def __init__(self) -> None:
        self.received = False
        self.submitit_handler: Any = None

    def __enter__(self) -> "_TimeLimitSignal":
        self.submitit_handler = signal.getsignal(TIME_LIMIT_SIGNAL)
        signal.signal(TIME_LIMIT_SIGNAL, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(TIME_LIMIT_SIGNAL, self.submitit_handler or signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning(f"{signal.Signals(signum).name}: the job's time limit is near; stopping with a checkpoint")
        self.received = True
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if callable(on_sigterm):
            on_sigterm(signal.SIGTERM, frame)

    def hand_over(self) -> None:
        """Let submitit requeue the job (it exits) or refuse to (it raises)."""
        from submitit.core.utils import UncompletedJobError

        handler: Callable | Any = self.submitit_handler
        if not callable(handler):
            return
        record = _job_record_path()
        # requeueing kills this process with SIGTERM: let it finish recording first
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            handler(TIME_LIMIT_SIGNAL, None)
        except SystemExit:
            update_record(record, status="requeued")
            raise
        except UncompletedJobError as err:
            update_record(record, status="timeout", error=f"time limit reached; not requeued: {err}")
            raise


class SlurmLauncher(_SubmititSlurmLauncher):
    """See the module's docstring."""

    poll_s = 2.0
    squeue_every_s = 10.0
    result_grace_s = 10.0

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        with _TimeLimitSignal() as time_limit:
            try:
                return super().__call__(*args, **kwargs)
            except SystemExit:  # kan-train exits after saving an interrupted run
                if time_limit.received:
                    time_limit.hand_over()
                raise

    # -- in the sweep controller -------------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and self.hydra_context is not None
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout", 0)
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"SLURM sweep output dir: {sweep_dir}")
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        for number, overrides in zip(numbers, job_overrides):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        jobs = executor.map_array(
            self,
            [list(o) for o in job_overrides],
            ["hydra.sweep.dir"] * len(numbers),
            numbers,
            [f"job_id_for_{n}" for n in numbers],
            [state] * len(numbers),
        )
        log.info(f"submitted SLURM jobs {', '.join(job.job_id for job in jobs)}")
        ended = wait_for_jobs(jobs, self.poll_s, self.squeue_every_s, self.result_grace_s)
        return [self._job_return(job, ended.get(job.job_id), n, list(o)) for job, n, o in zip(jobs, numbers, job_overrides)]

    def _job_dir(self, number: int, overrides: list[str]) -> Path:
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def _job_return(self, job: Any, slurm_state: str | None, number: int, overrides: list[str]) -> JobReturn:
        """The job's own result, or a failed one naming its SLURM state when it left none."""
        from submitit.core.utils import UncompletedJobError

        failure = None
        if job.paths.result_pickle.exists():
            try:
                return job.results()[0]
            except UncompletedJobError as err:  # it ended by raising (e.g. timed out too often)
                failure = _last_line(str(err))
        state = slurm_state or "UNKNOWN"
        job_dir = self._job_dir(number, overrides)
        record = record_slurm_end(job_dir, job.job_id, state, job.paths.stdout, overrides, failure)
        message = f"SLURM job {job.job_id} (#{number}: {' '.join(filter_overrides(overrides))}) ended {record['status']} ({state}): {record.get('error')}"
        log.error(message)
        return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.FAILED, _return_value=SlurmJobEnded(message))


class SlurmJobEnded(RuntimeError):
    """A SLURM job ended without a result (cancelled, timed out, killed)."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    return next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else text)


def record_slurm_end(
    job_dir: Path, job_id: str, state: str, log_path: Path, overrides: list[str], failure: str | None = None
) -> dict[str, Any]:
    """Write into ``<job_dir>/metrics.json`` how SLURM ended the job; returns the record. A job
    that never started and that slurmctld no longer lists was cancelled while pending."""
    from kan_lightning.run_records import write_run_record

    path = job_dir / "metrics.json"
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            record = {}
    previous = record.get("status")
    never_started = not record and not Path(log_path).exists()
    if never_started and state == "UNKNOWN":
        record["status"], record["error"] = "cancelled", "cancelled before it started"
    elif previous != "completed":
        record["status"] = STATUS_OF_STATE.get(state) or (previous if previous not in (None, "interrupted", "requeued") else "failed")
    if not record.get("error"):
        record["error"] = failure or f"ended ({state}) before the run wrote its record; see {log_path}"
    record.setdefault("overrides", overrides)
    record["slurm"] = {"job_id": job_id, "state": state, "log": str(log_path)}
    write_run_record(job_dir, record)
    return record


# ---------------------------------------------------------------------------------------------
# Following jobs with squeue


def squeue_states(array_ids: Sequence[str]) -> dict[str, str] | None:
    """``{job id: state}`` for every job slurmctld still knows among ``array_ids`` (array
    elements as ``<array id>_<index>``); ``None`` when squeue cannot be asked."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "--states=all", "-o", "%i %T", "-j", ",".join(array_ids)],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning(f"squeue failed: {err}")
        return None
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every one of them is gone already
            return {}
        log.warning(f"squeue failed: {out.stderr.strip()}")
        return None
    return dict(line.split()[:2] for line in out.stdout.splitlines() if len(line.split()) >= 2)


def _finished_state(job_id: str, states: dict[str, str]) -> str | None:
    """The final SLURM state of ``job_id``, ``None`` while it may still run."""
    state = states.get(job_id)
    if state is not None:
        return None if state in UNFINISHED else state
    array_id = job_id.split("_")[0]
    if any(key.startswith(f"{array_id}_[") for key in states):  # pending elements not yet listed one by one
        return None
    return "UNKNOWN"  # forgotten by slurmctld: long finished


def wait_for_jobs(jobs: Sequence[Any], poll_s: float, squeue_every_s: float, grace_s: float) -> dict[str, str]:
    """Wait until every job has a result file or has ended without one; returns the final SLURM
    state of the latter."""
    waiting = {job.job_id: job for job in jobs}
    ended: dict[str, str] = {}
    gone_since: dict[str, float] = {}
    last_squeue = 0.0
    while waiting:
        for job_id, job in list(waiting.items()):
            if job.paths.result_pickle.exists():
                del waiting[job_id]
        now = time.monotonic()
        if waiting and now - last_squeue >= squeue_every_s:
            last_squeue = now
            states = squeue_states(sorted({job_id.split("_")[0] for job_id in waiting}))
            for job_id in list(waiting):
                final = _finished_state(job_id, states) if states is not None else None
                if final is None:
                    gone_since.pop(job_id, None)
                    continue
                ended[job_id] = final
                # a result file may still be on its way (shared file systems lag)
                if now - gone_since.setdefault(job_id, now) >= grace_s:
                    del waiting[job_id]
        if waiting:
            time.sleep(poll_s)
    return {job_id: state for job_id, state in ended.items() if not _has_result(jobs, job_id)}


def _has_result(jobs: Sequence[Any], job_id: str) -> bool:
    return any(job.job_id == job_id and job.paths.result_pickle.exists() for job in jobs)
