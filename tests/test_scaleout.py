"""Scaling out for real: DDP with 2 CPU processes (gloo), parallel sweep jobs on leased device
slots, the submitit launcher, and a resumable Optuna search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

FAST = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def run_train(cwd: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kan_lightning.commands.train", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))]


def test_slurm_launchers_compose():
    GlobalHydra.instance().clear()
    with initialize_config_module("kan_lightning.conf", version_base="1.3"):
        cpu = compose("train", ["launcher=slurm"], return_hydra_config=True)
        gpu = compose("train", ["launcher=slurm", "trainer=gpu", "data.num_workers=3"], return_hydra_config=True)
        ddp = compose("train", ["launcher=slurm_ddp", "trainer.num_nodes=2", "trainer.devices=4"], return_hydra_config=True)
        ddp_cpu = compose("train", ["launcher=slurm_ddp", "trainer.accelerator=cpu", "trainer.devices=2"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    request = lambda cfg: {k: cfg.hydra.launcher[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb")}
    # GPUs only when the trainer uses them; 1 CPU + the loader workers; 2 GB per task
    assert request(cpu) == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2}
    assert request(gpu) == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1, "cpus_per_task": 4, "mem_gb": 2}
    assert request(ddp) == {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4, "cpus_per_task": 1, "mem_gb": 8}
    assert request(ddp_cpu) == {"nodes": 1, "tasks_per_node": 2, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 4}
    for cfg in (cpu, ddp):
        assert cfg.hydra.launcher._target_ == "hydra_plugins.kan_lightning_slurm.SlurmLauncher"
        assert cfg.ckpt_path == "last"  # a requeued job resumes
        assert cfg.trainer.plugins[0].auto_requeue is False  # submitit requeues, Lightning does not
    assert ddp.trainer.strategy == "ddp"


DDP_DATA = ["data.n_samples=400", "data.batch_size=full", "trainer.max_epochs=4", "callbacks.grid_update.every_n_steps=1"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    run_train(tmp_path, *FAST, *DDP_DATA, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path}/ddp")
    run_train(tmp_path, *FAST, *DDP_DATA, f"hydra.run.dir={tmp_path}/single")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"], "one output directory per run"
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").exists()
    (ddp,), (single,) = records(tmp_path / "ddp"), records(tmp_path / "single")
    for name in ("train/rmse", "val/rmse", "test/rmse", "test/r2"):
        assert ddp["metrics"][name] == pytest.approx(single["metrics"][name], rel=1e-3), name


@pytest.mark.slow
def test_ddp_inside_a_multirun_keeps_one_directory_per_job(tmp_path):
    run_train(
        tmp_path, "-m", *FAST, *DDP_DATA, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "model.grid_size=3,5", f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"], "no second sweep directory"
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["grid_size=3", "grid_size=5"]
    done = records(tmp_path / "sweep")
    assert [r["status"] for r in done] == ["completed", "completed"]
    assert sorted(r["config"]["model"]["grid_size"] for r in done) == [3, 5]


@pytest.mark.slow
def test_parallel_sweep_leases_distinct_slots(tmp_path):
    # jobs of ~3 s, so that the two workers' jobs overlap even when one worker starts late
    run_train(
        tmp_path, "-m", *FAST, "debug=fast", "trainer.max_epochs=150", "launcher=parallel", "device_pool.slots=2",
        f"device_pool.dir={tmp_path}/pool", "model.grid_size=3,4,5,6", f"hydra.sweep.dir={tmp_path}/sweep",
    )
    done = records(tmp_path / "sweep")
    assert len(done) == 4 and all(r["status"] == "completed" for r in done)
    leases = [r["device_lease"] for r in done]
    assert {lease["slot"] for lease in leases} <= {0, 1}
    overlapping = [(a, b) for i, a in enumerate(leases) for b in leases[i + 1:] if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, f"the jobs ran one after another: {leases}"
    assert all(a["slot"] != b["slot"] for a, b in overlapping), f"a slot was shared: {leases}"
    assert {lease["slot"] for lease in leases} == {0, 1}
    if "OMP_NUM_THREADS" not in os.environ:  # each CPU job its half of the cores
        assert {lease["threads"] for lease in leases} == {max(1, (os.cpu_count() or 1) // 2)}


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    run_train(tmp_path, "-m", *FAST, "debug=fast", "launcher=submitit_local", "model.grid_size=3,5", f"hydra.sweep.dir={tmp_path}/sweep")
    done = records(tmp_path / "sweep")
    assert sorted(r["config"]["model"]["grid_size"] for r in done) == [3, 5]
    assert all(r["status"] == "completed" for r in done)


@pytest.mark.slow
def test_optuna_search_writes_its_study_and_resumes(tmp_path):
    optuna = pytest.importorskip("optuna")
    search = ["hparams_search=optuna", *FAST, "debug=fast", "task_name=search"]
    run_train(tmp_path, *search, "hydra.sweeper.n_trials=2")
    study_file = tmp_path / "sweeps" / "search" / "optuna_kan_search" / "study.db"
    assert study_file.is_file()
    study = optuna.load_study(study_name="kan_search", storage=f"sqlite:///{study_file}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    run_train(tmp_path, *search, "hydra.sweeper.n_trials=1")  # resume: one more trial
    study = optuna.load_study(study_name="kan_search", storage=f"sqlite:///{study_file}")
    assert len(study.trials) == 3 and all(t.value is not None for t in study.trials)
