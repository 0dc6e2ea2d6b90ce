"""Report figures: formats and resolution, labels in words, mean ± std over seeds, no lines
between categories, axis limits set by the data."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import yaml
from matplotlib.collections import PolyCollection

from kan_lightning.analysis import grid_extension_report as ge
from kan_lightning.analysis.labels import label
from kan_lightning.analysis.sweep_plots import sweep_figures
from kan_lightning.analysis.sweeps import load_sweep
from kan_lightning.commands.sweep_summary import main as sweep_main

# test RMSE per (grid size, seed)
RESULTS = {(3, 1): 0.30, (3, 2): 0.34, (3, 3): 0.26, (10, 1): 0.02, (10, 2): 0.03, (10, 3): 0.025, (100, 1): 0.004, (100, 2): 0.006, (100, 3): 0.005}


def _job(sweep, name, overrides, metrics):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": metrics, "overrides": overrides}))


@pytest.fixture
def seeded(tmp_path):
    for i, ((grid, seed), rmse) in enumerate(RESULTS.items()):
        _job(tmp_path, str(i), [f"model.grid_size={grid}", f"seed={seed}"], {"test/rmse": rmse})
    return tmp_path


def test_labels_in_words():
    assert label("test/rmse") == "test RMSE" and label("model.grid_size") == "grid size G"
    assert label("test/rmse_mean") == "test RMSE (mean)" and label("some.key") == "some.key"


def test_seeds_become_mean_and_std_band(seeded):
    (fig,) = sweep_figures(load_sweep(seeded)).values()  # seed is averaged over, not a figure
    ax = fig.axes[0]
    (line,) = ax.lines
    for grid, mean in zip(line.get_xdata(), line.get_ydata()):
        assert mean == pytest.approx(statistics.mean(RESULTS[(grid, s)] for s in (1, 2, 3)))
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    top = band.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(0.30 + statistics.stdev([0.30, 0.34, 0.26]))
    assert ax.get_xlabel() == "grid size G" and ax.get_ylabel().startswith("test RMSE (mean ± std over seed")
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"  # 0.004 .. 0.34 and 3 .. 100 span decades
    lo, hi = ax.get_ylim()
    assert 0.001 < lo < 0.004 and 0.36 < hi < 1.0, "the limits follow the data"


def test_categorical_values_are_not_joined(tmp_path):
    for i, (name, rmse) in enumerate([("sin", 0.1), ("exp", 0.3), ("bessel", 0.5)]):
        _job(tmp_path, str(i), [f"data.function={name}"], {"test/rmse": rmse})
    (fig,) = sweep_figures(load_sweep(tmp_path)).values()
    ax = fig.axes[0]
    assert all(line.get_linestyle() == "None" for line in ax.lines)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sin", "exp", "bessel"]
    assert ax.get_xlabel() == "target function"


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_sweep_summary_format_and_dpi(seeded, fmt, magic):
    assert sweep_main([str(seeded), "--format", fmt, "--dpi", "200"]) == 0
    data = (seeded / f"summary_model.grid_size.{fmt}").read_bytes()
    assert data.startswith(magic)
    if fmt == "png":  # 6 x 4 inches at 200 dpi
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1200, 800)


def test_theory_line_does_not_squash_the_data(tmp_path):
    stages = [{"grid": g, "test/rmse": r, "train/rmse": r / 2} for g, r in [(3, 1e-2), (5, 6e-3), (10, 3e-3), (20, 2e-3)]]
    path = ge.plot_stages({"run": stages}, tmp_path / "stages.svg")
    assert path.read_bytes().startswith(b"<?xml")
    fig = ge._figure()
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.plot([3, 20], [1e-2, 1e-2 * (20 / 3) ** -4], "k:")  # the slope -4 line alone reaches 5e-6
    from kan_lightning.analysis.figures import limit_to_data

    limit_to_data(ax, [s["test/rmse"] for s in stages] + [s["train/rmse"] for s in stages], log=True)
    lo, hi = ax.get_ylim()
    assert 5e-4 < lo < 1e-3 and 1e-2 < hi < 2e-2
    assert np.log10(hi / lo) < 1.6, "the data fill the axis"
