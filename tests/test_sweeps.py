"""Sweep summaries: reading job directories, tables, plots and the command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kan_lightning.analysis.sweep_plots import plot_sweep, use_log_scale
from kan_lightning.analysis.sweeps import (
    load_sweep,
    parse_overrides,
    summary_markdown,
    swept_parameters,
    write_summary,
)
from kan_lightning.commands.sweep_summary import main


def _job(sweep: Path, name: str, overrides: list[str], status: str | None = None, metrics: dict | None = None, **files: str) -> Path:
    """A job directory the way Hydra + train.py leave it; ``status=None`` writes no metrics.json."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        record = {"status": status, "metrics": metrics or {}, "num_parameters": 100 + len(name), "wall_time_s": 1.5, "overrides": overrides}
        (job / "metrics.json").write_text(json.dumps(record))
    for filename, text in files.items():
        (job / filename.replace("_", ".")).write_text(text)
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Six jobs over grid_size x lr (jobs 0-3, 10 and a failed 4; 10 checks numeric ordering)."""
    root = tmp_path / "sweep"
    common = ["debug=fast", "seed=1"]  # the same in every job: kept in rows, not swept
    results = {("3", "0.001"): 0.3, ("5", "0.001"): 0.2, ("3", "0.1"): 0.25, ("5", "0.1"): 0.12}
    for i, ((g, lr), rmse) in enumerate(results.items()):
        _job(root, str(i), [*common, f"model.grid_size={g}", f"optimizer.lr={lr}"], "completed",
             {"test/rmse": rmse, "val/rmse": rmse * 1.1, "train/rmse": rmse / 2, "test/r2": 0.123456789})
    _job(root, "4", [*common, "model.grid_size=10", "optimizer.lr=0.001"],
         error_txt="Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n")
    _job(root, "10", [*common, "model.grid_size=10", "optimizer.lr=0.1"], "diverged",
         {"test/rmse": float("nan"), "val/rmse": float("inf")})
    (root / "multirun.yaml").write_text("hydra: {}\n")  # a file, not a job
    (root / ".submitit").mkdir()  # a directory without Hydra files, not a job
    return root


def test_load_sweep_rows(sweep):
    rows = load_sweep(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "10"]
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed", "diverged"]
    first = rows[0]
    assert first["overrides"] == {"debug": "fast", "seed": 1, "model.grid_size": 3, "optimizer.lr": 0.001}
    assert first["metrics"]["test/rmse"] == 0.3 and first["metrics"]["num_parameters"] == 101
    assert first["error"] is None
    assert rows[4]["error"] == "RuntimeError: CUDA out of memory" and rows[4]["metrics"] == {}


def test_job_without_metrics_or_error_is_missing_and_log_traceback_is_an_error(tmp_path):
    _job(tmp_path, "0", ["a=1"])  # still running or killed: nothing to tell
    _job(tmp_path, "1", ["a=2"], train_log="[INFO] start\nTraceback (most recent call last):\n  File x\nValueError: bad width\n\n")
    rows = load_sweep(tmp_path)
    assert [(r["status"], r["error"]) for r in rows] == [("missing", None), ("failed", "ValueError: bad width")]


def test_parse_overrides():
    parsed = parse_overrides(["a.b=5", "lr=1e-3", "+new=true", "~gone", "name=sin", "w=[2,5,1]", "x=null"])
    assert parsed == {"a.b": 5, "lr": 0.001, "new": True, "gone": None, "name": "sin", "w": "[2,5,1]", "x": None}


def test_swept_parameters(sweep):
    rows = load_sweep(sweep)
    assert swept_parameters(rows) == ["model.grid_size", "optimizer.lr"]
    assert swept_parameters(rows[:2]) == ["model.grid_size"]
    # a key only some jobs set counts as swept
    rows[0]["overrides"]["extra"] = 1
    assert "extra" in swept_parameters(rows)


def test_write_summary_csv_and_markdown(sweep):
    rows = load_sweep(sweep)
    csv_path, md_path = write_summary(sweep, rows)
    assert (csv_path, md_path) == (sweep / "summary.csv", sweep / "summary.md")

    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["job", "status", "model.grid_size", "optimizer.lr", "test/r2", "test/rmse",
                              "val/rmse", "num_parameters", "wall_time_s", "error"]
    assert [r["job"] for r in table] == ["0", "1", "2", "3", "4", "10"]  # job order
    assert table[0]["test/r2"] == "0.123456789"  # full precision
    assert table[4]["status"] == "failed" and table[4]["error"] == "RuntimeError: CUDA out of memory"
    assert table[5]["status"] == "diverged" and table[5]["test/rmse"] == "nan"

    md = md_path.read_text()
    assert md == summary_markdown(sweep, rows)
    body = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| job")]
    jobs = [line.split("|")[1].strip() for line in body]
    assert jobs == ["3", "1", "2", "0", "4", "10"]  # by test/rmse, failed and diverged last
    assert "0.1235" in body[0] and "0.123456789" not in md  # 4 significant digits
    assert "**FAILED**" in body[4] and "RuntimeError: CUDA out of memory" in body[4]
    assert "**DIVERGED**" in body[5]
    assert "6 jobs (4 completed, 1 failed, 1 diverged)" in md


def test_summary_with_chosen_metrics_and_sort_metric(sweep):
    rows = load_sweep(sweep)
    md = summary_markdown(sweep, rows, metrics=["val/rmse"], sort_by="train/rmse")
    header = md.splitlines()[4]
    assert header == "| job | status | model.grid_size | optimizer.lr | train/rmse | val/rmse | error |"


@pytest.mark.parametrize(
    "values, expected",
    [
        ([3, 5, 10], False),  # within a factor of 20
        ([1e-4, 1e-3, 1e-2], True),  # two decades
        ([1, 21], True),
        ([1, 20], False),
        ([0, 1, 100], False),  # zero: no log
        ([-1, 100], False),
        ([0.1, float("nan"), 100], False),
        ([], False),
    ],
)
def test_use_log_scale(values, expected):
    assert use_log_scale(values) is expected


def test_plot_sweep_writes_one_png_per_parameter(sweep):
    rows = load_sweep(sweep)
    paths = plot_sweep(sweep, rows)
    assert sorted(p.name for p in paths) == ["summary_model.grid_size.png", "summary_optimizer.lr.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_sweep_categorical_parameter(tmp_path):
    for i, (name, rmse) in enumerate([("sin", 0.1), ("exp", 0.3), ("bessel", 0.5)]):
        _job(tmp_path, str(i), [f"data.function={name}"], "completed", {"test/rmse": rmse})
    (path,) = plot_sweep(tmp_path, load_sweep(tmp_path))
    assert path.name == "summary_data.function.png" and path.stat().st_size > 0


def test_cli(sweep, capsys):
    assert main([str(sweep), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "| job | status |" in out and "**FAILED**" in out
    assert (sweep / "summary.csv").is_file() and not list(sweep.glob("*.png"))

    assert main([str(sweep), "--metric", "val/rmse"]) == 0
    assert len(list(sweep.glob("summary_*.png"))) == 2


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) != 0
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty" / "junk").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) != 0
    assert "no jobs" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "summary.md").exists()


@pytest.mark.slow
def test_real_multirun_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "kan_lightning.commands.train", "-m", "debug=fast", "model.grid_size=3,5", f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    for number, job in enumerate(("grid_size=3", "grid_size=5")):  # named by the swept values
        record = json.loads((sweep_dir / job / "metrics.json").read_text())
        assert record["status"] == "completed" and record["job"] == number

    cli = [sys.executable, "-m", "kan_lightning.commands.sweep_summary", str(sweep_dir)]
    result = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    md = (sweep_dir / "summary.md").read_text()
    assert result.stdout.startswith(md)
    rows = [line.split("|") for line in md.splitlines() if line.startswith("| ") and not line.startswith("| job")]
    header = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| job")).split("|")]
    grid_col = header.index("model.grid_size")
    assert sorted(int(r[grid_col]) for r in rows) == [3, 5]
    assert all("completed" in r[2] for r in rows)
    assert (sweep_dir / "summary_model.grid_size.png").is_file()
