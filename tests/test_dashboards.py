"""What a researcher reads: job names, TensorBoard served over HTTP, loggers, logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from kan_lightning.run_names import job_dirname, job_name, short_keys, swept_keys

VENV_BIN = Path(sys.executable).parent
SWEEP = ["model.grid_size=3,5", "model.regularization.l1=0,0.001"]
SMALL = ["trainer.max_epochs=2", "data.n_samples=200", "trainer.enable_model_summary=false"]


def test_job_names_from_swept_overrides(tmp_path):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["trainer.max_epochs=2", *SWEEP, "ckpt_path=a/b"]}}}))
    assert swept_keys(tmp_path, []) == ["model.grid_size", "model.regularization.l1"]
    job = ["trainer.max_epochs=2", "model.grid_size=5", "model.regularization.l1=0.001", "ckpt_path=a/b"]
    assert job_dirname(str(tmp_path), 3, job) == "grid_size=5,l1=0.001"
    assert job_dirname(str(tmp_path), 3, job, numbered=True) == "3_grid_size=5,l1=0.001"
    # with no sweep file (a single run) every overridden key but paths names it; slashes never
    assert job_dirname(str(tmp_path / "none"), 1, job) == "max_epochs=2,grid_size=5,l1=0.001"
    assert job_name(["data.function='a/b'"], ["data.function"], 0) == "function=a_b"
    assert job_name([], ["model.grid_size"], 7) == "7"
    assert short_keys(["model.grid_size", "data.grid_size", "optimizer.lr"]) == {
        "model.grid_size": "model.grid_size", "data.grid_size": "data.grid_size", "optimizer.lr": "lr"}
    long = job_name([f"model.k{i}={'x' * 30}" for i in range(6)], [f"model.k{i}" for i in range(6)], 4)
    assert len(long) < 130 and long.endswith("...4")


def test_optuna_sweeper_params_count_as_swept(tmp_path):
    spec = {"hydra": {"overrides": {"task": ["hparams_search=optuna"]}, "sweeper": {"params": {"optimizer.lr": "interval(1e-3, 1e-1)"}}}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(spec))
    assert swept_keys(tmp_path, []) == ["optimizer.lr"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _sweep(tmp_path: Path) -> Path:
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kan_lightning.train", "-m", *SWEEP, *SMALL, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
def test_tensorboard_serves_a_sweep_by_its_swept_values(tmp_path):
    sweep_dir = _sweep(tmp_path)
    names = {"grid_size=3,l1=0", "grid_size=3,l1=0.001", "grid_size=5,l1=0", "grid_size=5,l1=0.001"}
    assert {p.name for p in sweep_dir.iterdir() if p.is_dir()} == names
    records = [json.loads((sweep_dir / n / "metrics.json").read_text()) for n in sorted(names)]
    assert sorted(r["job"] for r in records) == [0, 1, 2, 3]
    for name in names:  # Lightning's own records reach the job's log file
        text = (sweep_dir / name / "train.log").read_text()
        assert "Trainer.fit` stopped" in text and "completed: test RMSE" in text

    port = _free_port()
    server = subprocess.Popen(
        [str(VENV_BIN / "tensorboard"), "--logdir", str(sweep_dir), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast=false", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        runs: list = []
        while time.time() < deadline:
            try:
                runs = _get(f"{base}/data/runs")
                if len(runs) == 4:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.5)
        assert sorted(runs) == sorted(f"{n}/tensorboard" for n in names)

        tags = _get(f"{base}/data/plugin/scalars/tags")
        for run in runs:
            run_tags = set(tags[run])
            assert {"test/rmse", "val/rmse", "train/objective_epoch", "train/loss_epoch", "run/num_parameters"} <= run_tags
            assert not any(t.startswith("hp/") or t == "hp_metric" for t in run_tags), run_tags

        experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = [h["name"] for h in experiment["hparamInfos"]]
        assert hparams[:2] == ["model.grid_size", "model.regularization.l1"]
        assert {"model", "optimizer", "trainer.max_epochs", "trainer.precision", "tags", "callbacks.grid_update.every_n_steps"} <= set(hparams)
        metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
        assert metrics[:5] == ["test/rmse", "val/rmse", "test/r2", "run/num_parameters", "run/wall_time_s"]
        assert experiment["metricInfos"][0]["displayName"] == "test RMSE"

        groups = _get(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100, "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"],
            "colParams": [{"hparam": "model.grid_size"}, {"metric": {"tag": "test/rmse"}}],
        })
        sessions = {(g["hparams"]["model.grid_size"], g["hparams"]["model.regularization.l1"]): g for g in groups["sessionGroups"]}
        assert set(sessions) == {(3, 0), (3, 0.001), (5, 0), (5, 0.001)}
        for record in records:  # each session's metric is the run's own test/rmse scalar
            key = (record["config"]["model"]["grid_size"], record["config"]["model"]["regularization"]["l1"])
            value = next(m["value"] for m in sessions[key]["metricValues"] if m["name"]["tag"] == "test/rmse")
            assert value == pytest.approx(record["metrics"]["test/rmse"], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
