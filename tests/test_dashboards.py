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


@pytest.mark.parametrize("task,number,expected", [
    (["model.grid_size=3,5", "ckpt_path=last,a.ckpt"], 1, "1_grid_size=3"),  # ckpt_path never names
    (["trainer.max_epochs=100,2,2"], 2, "2_max_epochs=2"),  # a value listed twice
    (["model.grid_size=3,5", "ckpt_path=last"], 1, "grid_size=5"),  # one value: names stay unique
])
def test_job_names_that_could_repeat_carry_the_job_number(tmp_path, task, number, expected):
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    # what the basic sweeper gives job `number`: the cartesian product, last key fastest
    from itertools import product

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(task)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()] for o in parsed]
    job = [f"{o.key_or_group}={v}" for o, v in zip(parsed, list(product(*values))[number])]
    assert job_dirname(str(tmp_path), number, job) == expected


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
        [sys.executable, "-m", "kan_lightning.commands.train", "-m", *SWEEP, *SMALL, f"hydra.sweep.dir={sweep_dir}"],
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


def _train_cli(tmp_path: Path, *overrides: str, timeout: float = 300) -> dict:
    run_dir = tmp_path / "runs" / "train" / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kan_lightning.commands.train", *SMALL, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def _check_mlflow_run(client, record: dict) -> str:
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    params, metrics = run.data.params, run.data.metrics
    assert params["model.grid_size"] == "5" and params["optimizer"] == "adam" and params["trainer.max_epochs"] == "2"
    for name in ("test/rmse", "val/rmse", "test/r2"):
        assert metrics[name] == pytest.approx(record["metrics"][name], rel=1e-6), name
    assert metrics["run/num_parameters"] == record["num_parameters"]
    return run.info.run_id


@pytest.mark.slow
def test_mlflow_local_sqlite_store_by_default(tmp_path):
    pytest.importorskip("mlflow", reason="needs the [mlflow] extra")
    from mlflow.tracking import MlflowClient

    record = _train_cli(tmp_path, "logger=mlflow")
    store = tmp_path / "runs" / "train" / "mlflow.db"
    assert store.is_file(), "one SQLite store next to the task's run directories"
    _check_mlflow_run(MlflowClient(tracking_uri=f"sqlite:///{store}"), record)


@pytest.mark.slow
def test_mlflow_server_gets_params_metrics_and_the_network_figure(tmp_path):
    pytest.importorskip("mlflow", reason="needs the [mlflow] extra")
    from mlflow.tracking import MlflowClient

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,  # its own group: uvicorn runs as a child
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not start within 180 s"
            time.sleep(1)
        record = _train_cli(
            tmp_path, "logger=mlflow", f"logger.mlflow.tracking_uri={url}", "logger.mlflow.artifact_location=null",
            "callbacks=edge_plots", "callbacks.edge_plots.every_n_epochs=0",
        )
        client = MlflowClient(tracking_uri=url)
        run_id = _check_mlflow_run(client, record)
        names = [a.path for a in client.list_artifacts(run_id, "figures")]
        assert names == ["figures/network_final.png"]
        local = client.download_artifacts(run_id, "figures/network_final.png", str(tmp_path / "download"))
        saved = tmp_path / "runs" / "train" / "run" / "figures" / "network_final.png"
        assert Path(local).read_bytes() == saved.read_bytes()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def _wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB-style
    log records in 32 KiB blocks (checksum, length, type: full, first, middle, last)."""
    import struct

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            yield pending


@pytest.mark.slow
def test_wandb_offline_run_files_hold_params_and_metrics(tmp_path):
    pytest.importorskip("wandb", reason="needs the [wandb] extra")
    from wandb.proto import wandb_internal_pb2

    record = _train_cli(tmp_path, "logger=wandb")
    (run_file,) = (tmp_path / "runs" / "train" / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    config, summary = {}, {}
    for data in _wandb_records(run_file):
        message = wandb_internal_pb2.Record.FromString(data)
        kind = message.WhichOneof("record_type")
        if kind in ("config", "summary"):
            target = config if kind == "config" else summary
            # W&B splits keys with slashes into nested keys
            target.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in getattr(message, kind).update})
    assert config["model.grid_size"] == 5 and config["optimizer"] == "adam" and config["trainer.max_epochs"] == 2
    for name in ("test/rmse", "val/rmse", "test/r2"):
        assert summary[name] == pytest.approx(record["metrics"][name], rel=1e-6), name
    assert summary["run/num_parameters"] == record["num_parameters"]


def test_edge_plots_log_one_legible_image_per_small_layer(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kan_lightning.commands.train import train

    train(make_cfg("debug=fast", "trainer.enable_progress_bar=false", "logger=tensorboard", "callbacks=edge_plots",
                   "model.layers_hidden=[2,5,1]", "data.n_samples=100"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"kan/network", "kan/network_layer0", "kan/network_layer1"}
    layer0 = events.Images("kan/network_layer0")[-1]
    assert layer0.width / 2 >= 150 and layer0.height / 5 >= 120, "a panel per edge, 2 inputs x 5 outputs, that reads"


@pytest.mark.slow
def test_debug_presets_run(make_cfg, tmp_path):
    from kan_lightning.lit.checkpoint import read_checkpoint
    from kan_lightning.commands.train import train

    quick = ["trainer.enable_progress_bar=false", "data.n_samples=400"]
    record = train(make_cfg("debug=fdr", *quick, output_dir=tmp_path / "fdr"))
    assert record["status"] == "completed" and record["metrics"]["test/rmse"] > 0

    record = train(make_cfg("debug=limit", *quick, "data.batch_size=32", "logger=csv", output_dir=tmp_path / "limit"))
    last = read_checkpoint(tmp_path / "limit" / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 9), "3 epochs of 3 batches"
    assert (tmp_path / "limit" / "csv" / "metrics.csv").is_file()

    record = train(make_cfg("debug=profiler", *quick, "logger=none", output_dir=tmp_path / "prof"))
    profile = (tmp_path / "prof" / "fit-profile.txt").read_text()
    assert "run_training_epoch" in profile

    record = train(make_cfg("debug=overfit", *quick, "trainer.max_epochs=60", output_dir=tmp_path / "overfit"))
    assert record["metrics"]["train/rmse"] < 0.1 * record["metrics"]["test/rmse"] or record["metrics"]["train/r2"] > 0.99


def test_batch_logs_progress_lines_summary_and_no_noise(make_cfg, tmp_path, caplog, capsys):
    import logging

    from kan_lightning.logs import ProgressLog, progress_bar
    from kan_lightning.commands.train import train

    assert isinstance(progress_bar(every_n_epochs=2, interactive=False), ProgressLog)
    caplog.set_level(logging.INFO)
    record = train(make_cfg("debug=fast", "trainer.max_epochs=4", "callbacks.progress_bar.every_n_epochs=2", "tags=[a,b]"))
    messages = [r.getMessage() for r in caplog.records]
    progress = [m for m in messages if m.startswith("epoch ")]
    assert [m.split()[1] for m in progress] == ["2/4", "4/4"], progress
    assert "val/rmse=" in progress[-1]
    rmse, r2 = record["metrics"]["test/rmse"], record["metrics"]["test/r2"]
    assert f"completed: test RMSE {rmse:.4g}, test R^2 {r2:.4g}" in messages[-1] and messages[-1].endswith(f"-> {tmp_path}")
    noise = ("weights_only", "Tip:", "srun", "LeafSpec")
    assert not [m for m in messages if any(n in m for n in noise)]
    # the resolved config, printed (a single run) and kept
    tree = (tmp_path / "config_tree.log").read_text()
    assert "grid_size: 5" in tree and "- a" in tree
    assert "grid_size: 5" in capsys.readouterr().out
