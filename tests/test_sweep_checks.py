"""Every job of a multirun is composed and validated before any is launched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def kan_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_CONF": str(cwd / "no-cluster.conf")}
    return subprocess.run([sys.executable, "-m", "kan_lightning.commands.train", *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_slurm_sweep_with_a_bad_value_fails_before_anything_is_submitted(tmp_path):
    # SLURM_CONF names no cluster: had a job been submitted, sbatch would fail differently
    result = kan_train(tmp_path, "-m", "launcher=slurm", "model.grid_size=3,5", "optimizer.lr=0.01,-1", f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: job #1 (launcher=slurm model.grid_size=3 optimizer.lr=-1): optimizer.lr=-1 must be a number > 0"
    assert "Traceback" not in result.stderr and "sbatch" not in result.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_optuna_search_checks_every_value_it_may_pick(tmp_path):
    result = kan_train(
        tmp_path, "hparams_search=optuna", "debug=fast", "hydra.sweeper.storage=null", "optimizer.lr=interval(-1,0.1)",
        f"hydra.sweep.dir={tmp_path}/sweep",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].endswith("optimizer.lr=-1.0 must be a number > 0")
    assert "optimizer.lr=-1.0" in result.stderr.split("): ")[0]  # the job is named by its values
    assert not (tmp_path / "sweep").exists()
