"""Sweeps on a real single-node SLURM cluster that these tests start and stop themselves
(``tests/slurm_cluster.py``; Debian packages ``slurm-wlm`` and ``munge``, see ``.ci/install-slurm``):
a job-array sweep with a failing job, DDP over two SLURM tasks, ``scancel`` of a running and of a
pending job, and a time limit with requeue and resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from slurm_cluster import LocalSlurm, SlurmUnavailable, missing_programs

pytestmark = pytest.mark.slow

FAST = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
ON_DEBUG = ["hydra.launcher.partition=debug"]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    missing = missing_programs()
    if missing:
        pytest.skip(f"SLURM is not installed (missing {', '.join(missing)}; .ci/install-slurm installs it)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons run as root")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as err:
        if os.environ.get("CI"):  # installed by CI: it must start
            raise
        pytest.skip(f"SLURM did not start: {err}")
    yield cluster
    cluster.stop()


class PaceEpochs(L.Callback):
    """Make every epoch last at least ``seconds``: training time that does not depend on the load."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        time.sleep(max(0.0, self.seconds - (time.monotonic() - self._start)))


def kan_train(cluster: LocalSlurm, cwd: Path, *overrides: str, timeout: float = 300, module: str = "kan_lightning.commands.train") -> subprocess.CompletedProcess:
    tests = str(Path(__file__).parent)  # for PaceEpochs, in the controller and in the jobs
    env = {**cluster.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def record(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def job(sweep: Path, number: int) -> Path:
    """Job ``number``'s directory: its number, or the number and its swept values, e.g.
    ``1_grid_size=3`` where two jobs share their named values."""
    found = [p for p in sweep.glob(f"{number}*") if p.is_dir() and (p.name == str(number) or p.name.startswith(f"{number}_"))]
    return found[0] if len(found) == 1 else sweep / f"no single directory for job {number}"


def sweep_summary(cluster: LocalSlurm, sweep_dir: Path) -> str:
    out = kan_train(cluster, sweep_dir, str(sweep_dir), "--no-plot", module="kan_lightning.commands.sweep_summary", timeout=120)
    assert out.returncode == 0, out.stderr
    return (sweep_dir / "summary.md").read_text()


def test_cpu_sweep_as_a_job_array_with_a_failing_job(slurm, tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")  # a job that fails while it runs
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    out = kan_train(
        slurm, tmp_path, "-m", "launcher=slurm", *ON_DEBUG, "debug=fast", *FAST, "model.grid_size=3,5",
        f"ckpt_path=last,{corrupt}", f"hydra.sweep.dir={sweep}",
    )
    print(f"4-job array on SLURM: {time.monotonic() - start:.0f} s")
    assert out.returncode == 1, out.stderr[-3000:]  # Hydra reports the failed jobs once all have ended
    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    for line in ("--array=0-3%4", "--cpus-per-task=1", "--mem=2GB", "--gpus-per-node=0", "--partition=debug", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in script, line
    statuses = [record(job(sweep, n))["status"] for n in range(4)]
    assert statuses == ["completed", "failed", "completed", "failed"]
    assert [record(job(sweep, n))["config"]["model"]["grid_size"] for n in range(4)] == [3, 3, 5, 5]
    assert record(job(sweep, 1))["error"].startswith(f"ConfigError: ckpt_path='{corrupt}' cannot be resumed from")
    summary = sweep_summary(slurm, sweep)
    assert summary.count("**FAILED**") == 2 and "cannot be resumed from" in summary


def test_ddp_over_two_slurm_tasks_matches_one_process(slurm, tmp_path):
    data = ["data.n_samples=400", "data.batch_size=full", "trainer.max_epochs=4", "callbacks.grid_update.every_n_steps=1", "ckpt_path=null"]
    start = time.monotonic()
    out = kan_train(
        slurm, tmp_path, "-m", "launcher=slurm_ddp", "trainer.accelerator=cpu", "trainer.devices=2", *ON_DEBUG, *FAST, *data,
        f"hydra.sweep.dir={tmp_path}/ddp",
    )
    print(f"DDP job (2 tasks) on SLURM: {time.monotonic() - start:.0f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    single = kan_train(slurm, tmp_path, *FAST, *data, f"hydra.run.dir={tmp_path}/single")
    assert single.returncode == 0, single.stderr[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "ddp").glob(".submitit/*/*_log.*"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs
    ddp, one = record(tmp_path / "ddp" / "0"), record(tmp_path / "single")
    assert ddp["status"] == "completed"
    for name in ("train/rmse", "val/rmse", "test/rmse", "test/r2"):
        assert ddp["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-3), name


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _submitted_ids(log: Path) -> list[str]:
    found = re.search(r"submitted SLURM jobs (.+)", log.read_text()) if log.exists() else None
    return found.group(1).split(", ") if found else []


def test_scancel_of_a_running_and_a_pending_job_ends_the_sweep(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    log = tmp_path / "controller.log"
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:  # one job at a time: job 0 runs long, jobs 1 and 2 wait
        controller = subprocess.Popen(
            [sys.executable, "-m", "kan_lightning.commands.train", "-m", "launcher=slurm", *ON_DEBUG, "hydra.launcher.array_parallelism=1",
             "debug=fast", *FAST, "trainer.max_epochs=100000,2,2", f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: len(_submitted_ids(log)) == 3, 120, "the submission")
        running, _, pending = _submitted_ids(log)
        _wait_for(lambda: (job(sweep, 0) / "checkpoints" / "last.ckpt").exists(), 180, "job 0 to train")
        for job_id in (pending, running):
            subprocess.run(["scancel", job_id], env=slurm.env, check=True, timeout=30)
        controller.wait(timeout=240)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
    text = log.read_text()
    assert controller.returncode == 1, text[-3000:]  # it ended, reporting the cancelled jobs
    cancelled = record(job(sweep, 0))
    assert cancelled["status"] == "cancelled" and cancelled["slurm"] == {"job_id": running, "state": "CANCELLED", "log": cancelled["slurm"]["log"]}
    assert cancelled["error"].startswith("interrupted by SIGTERM") and Path(cancelled["checkpoint"]).is_file()
    assert record(job(sweep, 1))["status"] == "completed"
    never_ran = record(job(sweep, 2))
    assert never_ran["status"] == "cancelled" and never_ran["error"] == "cancelled before it started"
    assert "trainer.max_epochs=2" in never_ran["overrides"]
    assert f"SLURM job {running} (#0:" in text and "ended cancelled (CANCELLED)" in text
    summary = sweep_summary(slurm, sweep)
    assert summary.count("**CANCELLED**") == 2 and "cancelled before it started" in summary


def test_time_limit_requeues_and_resumes_from_last_checkpoint(slurm, tmp_path):
    # a 2-minute limit, the signal 30 s before it (SLURM may send it up to a minute early, so a
    # run trains 20-80 s), and training of 1500 epochs of at least 0.08 s: at least one requeue
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    out = kan_train(
        slurm, tmp_path, "-m", "launcher=slurm", *ON_DEBUG, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=30",
        "hydra.launcher.max_num_timeout=6", "debug=fast", *FAST, "trainer.max_epochs=1500",
        "+callbacks.pace._target_=test_slurm.PaceEpochs", "+callbacks.pace.seconds=0.08", f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    print(f"requeued job: {time.monotonic() - start:.0f} s")
    assert out.returncode == 0, out.stderr[-3000:]
    done = record(job(sweep, 0))
    assert done["status"] == "completed"
    assert done["resumed_from"] == str(job(sweep, 0) / "checkpoints" / "last.ckpt")
    job_log = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    requeues = set(re.findall(r"Requeued job \S+ \((\d+) remaining timeouts\)", job_log))
    print(f"requeues: {len(requeues)}")
    assert requeues and f"Restoring states from the checkpoint path at {done['resumed_from']}" in job_log
    assert "time limit is near; stopping with a checkpoint" in job_log
