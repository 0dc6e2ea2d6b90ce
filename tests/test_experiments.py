"""The experiment presets (guide_suite, paper_grid_extension, paper_scaling), reduced to tiny
sample counts and a few steps, end to end with their tables and plots; the grid-extension stage
evaluation against a direct RMSE computation; the grouped sweep table on synthetic jobs."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import instantiate

from kan_lightning.analysis import grid_extension_report as ge
from kan_lightning.commands import grid_extension_report as ge_cli
from kan_lightning.analysis.scaling import kan_parameter_count, matching_mlp_widths, mlp_parameter_count
from kan_lightning.analysis.sweep_groups import (
    grouped_markdown,
    grouped_table,
    mean_std,
    pivot_markdown,
    write_grouped_summary,
)
from kan_lightning.analysis.sweeps import load_sweep
from kan_lightning.api import load_model
from kan_lightning.commands.sweep_summary import main as sweep_main
from kan_lightning.data import SyntheticFunctionDataModule
from kan_lightning.lit import GridExtension, KANRegressor
from kan_lightning.nn import KAN
from kan_lightning.config_checks import data_widths
from kan_lightning.pipeline import delivered_metrics
from kan_lightning.run_records import scalars
from kan_lightning.commands.evaluate import evaluate
from kan_lightning.commands.train import train
from kan_lightning.lit.checkpoint import model_from_checkpoint
from conftest import ddp_and_single_runs

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# GridExtension stage evaluation


class Snapshot(L.Callback):
    """Keeps a copy of the network at the start of every epoch in ``epochs`` (placed before
    GridExtension in the callback list, it sees the network of the stage that just ended)."""

    def __init__(self, epochs) -> None:
        self.epochs = set(epochs)
        self.models: dict[int, torch.nn.Module] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch in self.epochs and trainer.current_epoch not in self.models:
            self.models[trainer.current_epoch] = copy.deepcopy(pl_module.model)


def _direct_rmse(model: torch.nn.Module, data: SyntheticFunctionDataModule, split: str) -> float:
    """RMSE in original units: the network's standardized output and the datamodule's targets
    both mapped back with the datamodule's own target normalization."""
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    norm = data.normalization
    mean, std = norm["y_mean"].double(), norm["y_std"].double()
    with torch.no_grad():
        pred = model(x.double()).double() * std + mean
    raw = y.double() * std + mean
    return float((pred - raw).pow(2).mean().sqrt())


def _compose_with_hydra(*overrides: str):
    """The composed config with its ``hydra`` node (the sweep parameters of a preset)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("kan_lightning.conf", version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _toy_lbfgs_run():
    """The paper's toy on 300 points and a KAN [2, 3, 1] with full-batch LBFGS, seeded."""
    L.seed_everything(0, verbose=False)
    data = SyntheticFunctionDataModule(
        function="paper_exp_sin", n_samples=300, split=(0.5, 0.2, 0.3), batch_size="full", seed=3,
        normalize_targets=True,
    )
    return data, KANRegressor(KAN([2, 3, 1], grid_size=3), optimizer=lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe"))


def test_stage_evaluation_matches_direct_rmse(tmp_path):
    data, module = _toy_lbfgs_run()
    extension = GridExtension(grids=[3, 5, 8], at_epochs=[2, 4], evaluate_splits=["train", "val", "test"])
    snapshot = Snapshot([2, 4])
    csv_logger = L.pytorch.loggers.CSVLogger(tmp_path, name="csv", version="")
    trainer = L.Trainer(
        max_epochs=5, logger=csv_logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true", callbacks=[snapshot, extension],
    )
    trainer.fit(module, datamodule=data)

    report = extension.report()
    stages = report["stages"]
    assert [s["grid"] for s in stages] == [3, 5, 8]
    assert [(s["epoch"], s["step"]) for s in stages] == [(2, 2), (4, 4), (5, 5)]
    assert [s["num_parameters"] for s in stages] == [kan_parameter_count([2, 3, 1], g, 3) for g in (3, 5, 8)]
    assert [(h["from"], h["to"]) for h in report["history"]] == [(3, 5), (5, 8)]
    models = [snapshot.models[2], snapshot.models[4], module.model]
    for stage, model in zip(stages, models):
        for split in ("train", "val", "test"):
            assert stage[f"{split}/rmse"] == pytest.approx(_direct_rmse(model, data, split), rel=1e-5), (stage["grid"], split)
        assert stage["time_s"] >= 0
    assert stages[-1]["test/rmse"] < stages[0]["test/rmse"]
    json.dumps(report)  # goes into metrics.json

    # logged with the grid as the step
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    logged = {int(r["step"]): float(r["grid_stage/test_rmse"]) for r in rows if r.get("grid_stage/test_rmse")}
    assert logged == pytest.approx({s["grid"]: s["test/rmse"] for s in stages})

    # stages survive a checkpoint round trip
    restored = GridExtension(grids=[3, 5, 8], at_epochs=[2, 4], evaluate_splits=["test"])
    restored.load_state_dict(extension.state_dict())
    assert restored.report() == report


class SpoilLastStage(L.Callback):
    """Scrambles the spline coefficients at the end of the last epoch: a last stage that is
    worse on every split than the ones before it."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for layer in pl_module.model.layers:
                    layer.spline_weight.add_(torch.randn_like(layer.spline_weight))


def test_keep_best_delivers_the_best_validation_stage(tmp_path):
    data, module = _toy_lbfgs_run()
    saved = tmp_path / "checkpoints" / "delivered.ckpt"
    extension = GridExtension(grids=[3, 5, 8], at_epochs=[2, 4], evaluate_splits=["test"], keep_best=True, delivered_path=saved)
    snapshot = Snapshot([4])
    trainer = L.Trainer(
        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true",
        callbacks=[snapshot, SpoilLastStage(), extension],
    )
    trainer.fit(module, datamodule=data)

    report = extension.report()
    stages, delivered = report["stages"], report["delivered"]
    assert [s["grid"] for s in stages] == [3, 5, 8] and all("val/rmse" in s for s in stages)
    assert stages[-1]["val/rmse"] > 10 * stages[1]["val/rmse"]  # the spoiled last stage
    best = min(stages, key=lambda s: s["val/rmse"])
    assert delivered == best and delivered["grid"] != 8
    # the network in the module is the delivered stage's: its grid and, measured directly, its RMSE
    assert module.model.grid_size == delivered["grid"] == module.model.config["grid_size"]
    for split in ("val", "test"):
        assert _direct_rmse(module.model, data, split) == pytest.approx(delivered[f"{split}/rmse"], rel=1e-9)
    if delivered["grid"] == 5:  # the stage-5 network seen at the switch to 8, parameter for parameter
        for (name, a), b in zip(module.model.state_dict().items(), snapshot.models[4].state_dict().values()):
            assert torch.equal(a, b), name
    # the run record's train/val figures are the delivered network's, not the last logged stage's
    logged = scalars(trainer.callback_metrics)
    assert logged["grid/size"] == 8 and logged["train/rmse"] != pytest.approx(_direct_rmse(module.model, data, "train"), rel=1e-3)
    metrics = delivered_metrics(logged, {"grid_extension": extension})
    for split in ("train", "val"):
        assert metrics[f"{split}/rmse"] == pytest.approx(_direct_rmse(module.model, data, split), rel=1e-9)
        assert metrics[f"{split}/mse"] == pytest.approx(metrics[f"{split}/rmse"] ** 2, rel=1e-9)
        assert {f"{split}/loss", f"{split}/mae", f"{split}/r2"} <= set(metrics)
    assert metrics["grid/size"] == delivered["grid"]
    assert not {k for k in metrics if k.startswith("train/objective") or k.endswith(("_step", "_epoch"))}
    # trainer.test after fit tests the delivered network, and the optimizer holds its parameters
    (result,) = trainer.test(module, datamodule=data, verbose=False)
    assert result["test/rmse"] == pytest.approx(delivered["test/rmse"], rel=1e-6)
    assert result["test/rmse"] < stages[-1]["test/rmse"]
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert held == {id(p) for p in module.parameters()}
    # the delivered network on disk (last.ckpt would hold the spoiled last stage)
    assert report["delivered_checkpoint"] == str(saved)
    from_disk = model_from_checkpoint(saved).double()
    assert from_disk.grid_size == delivered["grid"]
    assert _direct_rmse(from_disk, data, "val") == pytest.approx(delivered["val/rmse"], rel=1e-9)
    # a checkpoint round trip keeps the choice
    restored = GridExtension(grids=[3, 5, 8], at_epochs=[2, 4], keep_best=True, delivered_path=saved)
    restored.load_state_dict(extension.state_dict())
    assert restored.report() == report


class SpoilAtEpoch(L.Callback):
    """Scrambles the spline coefficients at the end of epoch ``epoch``: the stage it ends is worse
    than the ones before it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for layer in pl_module.model.layers:
                    layer.spline_weight.add_(torch.randn_like(layer.spline_weight))


@pytest.mark.parametrize("stage_patience", [None, 1])
def test_stage_patience_ends_the_fit_after_a_worse_stage(stage_patience):
    """Stage 1 (grid 5) spoiled at its last epoch: with stage_patience=1 the fit ends there, grids
    8 and 12 are never fitted, and the delivered network is stage 0's; without it every grid runs."""
    data, module = _toy_lbfgs_run()
    extension = GridExtension(grids=[3, 5, 8, 12], at_epochs=[2, 4, 6], keep_best=True, stage_patience=stage_patience)
    trainer = L.Trainer(
        max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true",
        callbacks=[SpoilAtEpoch(3), extension],
    )
    trainer.fit(module, datamodule=data)

    stages = extension.report()["stages"]
    assert stages[1]["val/rmse"] > stages[0]["val/rmse"]  # the spoiled stage
    if stage_patience is None:
        assert [s["grid"] for s in stages] == [3, 5, 8, 12] and not extension.stopped
        return
    assert [s["grid"] for s in stages] == [3, 5] and extension.stopped
    assert [h["to"] for h in extension.history] == [5] and trainer.global_step <= 5
    assert extension.delivered == stages[0] and module.model.grid_size == 3
    assert _direct_rmse(module.model, data, "val") == pytest.approx(stages[0]["val/rmse"], rel=1e-9)
    restored = GridExtension(grids=[3, 5, 8, 12], at_epochs=[2, 4, 6], keep_best=True, stage_patience=1)
    restored.load_state_dict(extension.state_dict())
    assert restored.stopped  # a resumed fit ends at once


def test_stage_evaluation_arguments():
    with pytest.raises(ValueError, match="evaluate_splits"):
        GridExtension(grids=[3, 5], evaluate_splits=["train", "holdout"])
    with pytest.raises(ValueError, match="evaluate_splits"):
        GridExtension(grids=[3, 5], evaluate_splits=["test", "test"])
    assert GridExtension(grids=[3]).report() == {"stages": [], "history": []}
    with pytest.raises(ValueError, match="stage_patience=1 needs keep_best"):
        GridExtension(grids=[3, 5], stage_patience=1)
    with pytest.raises(ValueError, match="stage_patience"):
        GridExtension(grids=[3, 5], keep_best=True, stage_patience=0)


# ---------------------------------------------------------------------------------------------
# paper_grid_extension


def test_paper_grid_extension_preset(make_cfg):
    cfg = make_cfg("experiment=paper_grid_extension")
    ext = cfg.callbacks.grid_extension
    assert cfg.model.layers_hidden == ["auto", 5, "auto"] and cfg.model.spline_order == 3
    assert cfg.model.grid_size == ext.grids[0] == 3 and list(ext.grids) == [3, 5, 10, 20, 50, 100]
    assert cfg.trainer.precision == "64-true" and cfg.data.batch_size == "full"
    assert cfg.optimizer._target_ == "torch.optim.LBFGS"
    assert cfg.trainer.max_epochs % len(ext.grids) == 0  # equal LBFGS steps per grid
    assert list(ext.evaluate_splits) == ["train", "val", "test"] and ext.keep_best
    assert cfg.callbacks.grid_update.stop_step <= cfg.trainer.max_epochs // len(ext.grids)  # first stage only
    data = instantiate(cfg.data)
    data.setup()
    assert (data.x_train.shape[0], data.x_test.shape[0]) == (1000, 1000) and data.x_val.shape[0] > 0


def test_paper_grid_extension_lm_preset_differs_only_in_the_fit(make_cfg):
    base, lm = make_cfg("experiment=paper_grid_extension"), make_cfg("experiment=paper_grid_extension_lm")
    assert lm.data == base.data and lm.model == base.model and lm.optimizer == base.optimizer
    ext, base_ext = lm.callbacks.grid_extension, base.callbacks.grid_extension
    assert list(ext.grids) == list(base_ext.grids) and ext.keep_best
    fit_keys = ("polish_iterations", "polish_smoothness", "stage_patience")
    assert {k: v for k, v in ext.items() if k not in fit_keys} == {k: v for k, v in base_ext.items() if k not in fit_keys}
    assert base_ext.stage_patience is None and ext.stage_patience == 1
    assert ext.polish_iterations > 0 and ext.polish_smoothness > 0 and lm.callbacks.multi_start.restarts > 0
    steps = lm.trainer.max_epochs // len(ext.grids)
    assert lm.trainer.max_epochs == steps * len(ext.grids) < base.trainer.max_epochs
    assert lm.callbacks.grid_update.stop_step <= steps and steps % lm.trainer.check_val_every_n_epoch == 0


@pytest.mark.parametrize("experiment", ["paper_grid_extension", "feynman", "special_functions"])
def test_fit_lm_changes_only_the_fit_and_takes_ten_steps_per_grid(make_cfg, experiment):
    base = make_cfg(f"experiment={experiment}")
    to_200 = "callbacks.grid_extension.grids=[3,5,10,20,50,100,200]"
    lm, lm_200 = make_cfg(f"experiment={experiment}", "fit=lm"), make_cfg(f"experiment={experiment}", "fit=lm", to_200)
    assert lm.data == base.data and lm.model == base.model and lm.task_name == base.task_name
    assert (lm.trainer.max_epochs, lm_200.trainer.max_epochs) == (60, 70)
    assert lm.callbacks.grid_extension.polish_iterations > 0 and lm.callbacks.multi_start.restarts > 0
    assert make_cfg(f"experiment={experiment}", "fit=lm", "trainer.max_epochs=120").trainer.max_epochs == 120


@pytest.mark.parametrize("experiment", ["feynman", "special_functions"])
def test_fit_lm_fast_is_fit_lm_with_a_shorter_fit(make_cfg, experiment):
    to_200 = "callbacks.grid_extension.grids=[3,5,10,20,50,100,200]"
    lm, fast = make_cfg(f"experiment={experiment}", "fit=lm", to_200), make_cfg(f"experiment={experiment}", "fit=lm_fast", to_200)
    assert fast.data == lm.data and fast.model == lm.model and fast.task_name == lm.task_name
    assert fast.trainer.max_epochs == 35 and fast.callbacks.grid_update.stop_step == 5
    ext, lm_ext = fast.callbacks.grid_extension, lm.callbacks.grid_extension
    assert (ext.polish_iterations, ext.polish_patience) == (40, 10) and lm_ext.polish_patience is None
    assert ext.stage_patience == lm_ext.stage_patience == 1 and ext.polish_smoothness == lm_ext.polish_smoothness
    assert fast.callbacks.multi_start.restarts == 1


def test_paper_grid_extension_lm_is_the_toy_with_fit_lm(make_cfg):
    preset, composed = make_cfg("experiment=paper_grid_extension_lm"), make_cfg("experiment=paper_grid_extension", "fit=lm")
    assert preset.task_name == "paper_grid_extension_lm"
    preset.task_name = composed.task_name
    assert preset == composed


def test_run_record_has_the_polished_last_stage_without_keep_best(make_cfg):
    """The polish of the last stage runs after the last validation epoch: the run's train / val
    figures are measured again, so they are the network's that is tested."""
    cfg = make_cfg(
        "experiment=paper_grid_extension", *QUIET, "data.n_samples=250", "trainer.max_epochs=6",
        "callbacks.grid_extension.grids=[3,5]", "trainer.check_val_every_n_epoch=3",
        "callbacks.grid_extension.polish_iterations=3", "callbacks.grid_extension.keep_best=false",
    )
    record = train(cfg)
    last = record["callbacks"]["grid_extension"]["stages"][-1]
    for split in ("train", "val", "test"):
        assert record["metrics"][f"{split}/rmse"] == pytest.approx(last[f"{split}/rmse"], rel=1e-10), split


def test_paper_grid_extension_reduced_run_and_report(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=paper_grid_extension", *QUIET, "data.n_samples=250", "trainer.max_epochs=9",
        "callbacks.grid_extension.grids=[3,5,10]", "trainer.check_val_every_n_epoch=3",
        "callbacks.grid_update.stop_step=2", "callbacks.grid_update.every_n_steps=1",
        "callbacks.grid_extension.polish_iterations=3",
    )
    record = train(cfg)
    assert record["status"] == "completed"
    stages = record["callbacks"]["grid_extension"]["stages"]
    assert [(s["grid"], s["epoch"]) for s in stages] == [(3, 3), (5, 6), (10, 9)]
    assert all(math.isfinite(s["train/rmse"]) and math.isfinite(s["test/rmse"]) for s in stages)
    # the final test is of the delivered stage (lowest val RMSE) and agrees with its evaluation
    delivered = record["callbacks"]["grid_extension"]["delivered"]
    assert delivered["val/rmse"] == min(s["val/rmse"] for s in stages)
    # the run's figures are the delivered network's, polished after the last validation epoch,
    # and in float64 like the network (float32 metric states would agree to ~1e-7 only)
    for split in ("train", "val", "test"):
        assert record["metrics"][f"{split}/rmse"] == pytest.approx(delivered[f"{split}/rmse"], rel=1e-10), split
    # ... and kan-eval reads the same network back from the run's delivered checkpoint, and
    # exports it (raw inputs to raw outputs) as TorchScript
    saved = record["callbacks"]["grid_extension"]["delivered_checkpoint"]
    assert saved == str(tmp_path / "checkpoints" / "delivered.ckpt")
    eval_cfg = make_cfg(f"ckpt_path={saved}", "split=test", "export_torchscript=true", config_name="eval", output_dir=tmp_path / "eval")
    assert evaluate(eval_cfg)["test/rmse"] == pytest.approx(record["metrics"]["test/rmse"], rel=1e-10)
    x = torch.rand(5, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "eval" / "model.pt"))(x), load_model(saved)(x))

    out = tmp_path / "report"
    assert ge_cli.main([str(tmp_path), "--out", str(out), "--reference", "pykan=3:1.5e-3,5:7.3e-4,10:2.2e-4"]) == 0
    text = (out / "grid_extension.md").read_text()
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + 3  # header + 3 grids
    assert f"Delivered (lowest validation RMSE; selected on validation, never on test): grid {delivered['grid']}" in text
    assert "pykan test RMSE" in text and ("Fitted slope" in text or "No slope fitted" in text)
    assert (out / "grid_extension.png").stat().st_size > 1000


def test_paper_grid_extension_any_formula(make_cfg, tmp_path):
    """A user formula with its own domain and dimension, through the same preset."""
    cfg = make_cfg(
        "experiment=paper_grid_extension", *QUIET, "data=formula", "data.formula='x0*x1+sin(x2)'",
        "data.input_dim=3", "data.domain=[-2,2]", "model.layers_hidden=[3,2,1]", "data.n_samples=150",
        "trainer.max_epochs=4", "callbacks.grid_extension.grids=[3,6]", "trainer.check_val_every_n_epoch=2",
    )
    record = train(cfg)
    stages = record["callbacks"]["grid_extension"]["stages"]
    assert [s["grid"] for s in stages] == [3, 6] and all(math.isfinite(s["test/rmse"]) for s in stages)


# ---------------------------------------------------------------------------------------------
# paper_scaling


def test_paper_scaling_reduced_runs_and_figure(make_cfg, tmp_path):
    params = _compose_with_hydra("experiment=paper_scaling").hydra.sweeper.params
    assert "model.layers_hidden" in params  # the KAN shapes are a multirun
    common = [*QUIET, "data.n_samples=250", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2",
              "callbacks.grid_extension.grids=[3,6]", "callbacks.grid_update.stop_step=1"]
    kan = train(make_cfg("experiment=paper_scaling", *common, "model.layers_hidden=[2,1,1]", output_dir=tmp_path / "kan"))
    mlp_dirs = []
    for widths in ("[2,4,1]", "[2,8,8,1]"):
        out = tmp_path / f"mlp{len(mlp_dirs)}"
        mlp = train(make_cfg("experiment=paper_scaling", *common, "model=mlp", f"model.layers_hidden={widths}",
                             "~callbacks.grid_extension", output_dir=out))
        assert mlp["status"] == "completed" and "callbacks" not in mlp
        mlp_dirs.append(out)
    assert [s["num_parameters"] for s in kan["callbacks"]["grid_extension"]["stages"]] == [
        kan_parameter_count([2, 1, 1], g, 3) for g in (3, 6)
    ]

    series = ge.scaling_series(ge.find_runs([tmp_path]))
    assert [(s.kind, s.label, len(s.points)) for s in series] == [("KAN", "KAN [2, 1, 1]", 2), ("MLP", "MLP depth 1", 1), ("MLP", "MLP depth 2", 1)]
    assert series[2].points[0]["num_parameters"] == mlp_parameter_count([2, 8, 8, 1])
    out = tmp_path / "fig"
    assert ge_cli.main(["--scaling", str(tmp_path), "--out", str(out)]) == 0
    text = (out / "paper_scaling.md").read_text()
    assert "### KAN [2, 1, 1]" in text and "### MLPs" in text and "[2, 8, 8, 1]" in text
    assert (out / "paper_scaling.png").stat().st_size > 1000


def test_scaling_series_and_tables_on_synthetic_runs(tmp_path):
    def run(name, model, stages=None, test=None, status="completed", params=100):
        d = tmp_path / "sweep" / name
        d.mkdir(parents=True)
        record = {"status": status, "num_parameters": params, "metrics": {"test/rmse": test, "train/rmse": test},
                  "config": {"model": model}}
        if stages:
            record["callbacks"] = {"grid_extension": {"stages": stages, "history": []}}
        (d / "metrics.json").write_text(json.dumps(record))

    grids = [3, 5, 10, 20, 50]
    stages = [{"grid": g, "num_parameters": kan_parameter_count([2, 1, 1], g, 3), "train/rmse": 2.0 * g**-4,
               "test/rmse": 3.0 * g**-4 if g < 50 else 3.0 * 20**-4} for g in grids]
    run("0", {"_target_": "kan_lightning.nn.KAN", "layers_hidden": [2, 1, 1]}, stages=stages)
    run("1", {"_target_": "kan_lightning.nn.MLP", "layers_hidden": [2, 8, 1]}, test=1e-2, params=33)
    run("2", {"_target_": "kan_lightning.nn.MLP", "layers_hidden": [2, 4, 1]}, test=2e-2, params=17)
    run("3", {"_target_": "kan_lightning.nn.MLP", "layers_hidden": [2, 16, 1]}, test=None, status="failed")
    series = ge.scaling_series(ge.find_runs([tmp_path / "sweep"]))
    assert [s.label for s in series] == ["KAN [2, 1, 1]", "MLP depth 1"]
    assert [p["widths"] for p in series[1].points] == [[2, 4, 1], [2, 8, 1]]  # sorted by parameters

    table, slope = ge.stage_table(stages, reference=("pykan", {3: 1e-2}))
    assert slope == pytest.approx(-4.0, abs=1e-9)  # the G=50 floor is left out of the fit
    assert "G = 3..20" in table and "| 3 | 24 |" in table and "pykan test RMSE" in table
    assert ge.parse_reference("pykan 0.2.8=3:1.5e-3, 5:7.3e-4") == ("pykan 0.2.8", {3: 1.5e-3, 5: 7.3e-4})
    text = ge.scaling_markdown(series)
    assert "**-4.00**" in text and "| MLP depth 1 | [2, 4, 1] | 17 |" in text
    path = ge.plot_scaling(series, tmp_path / "s.png")
    assert path.stat().st_size > 1000
    path = ge.plot_stages({"KAN": stages}, tmp_path / "g.png", "num_parameters")
    assert path.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# guide_suite


def test_guide_suite_preset_and_matched_mlp(make_cfg):
    params = _compose_with_hydra("experiment=guide_suite").hydra.sweeper.params
    assert params["data.function"].split(",") == ["polynomial", "trigonometric", "exponential", "discontinuous", "high_frequency"]
    assert params["model"] == "kan,mlp_guide" and len(str(params["seed"]).split(",")) >= 3
    kan_cfg = make_cfg("experiment=guide_suite")
    mlp_cfg = make_cfg("experiment=guide_suite", "model=mlp_guide")
    # the widths pipeline.build_model gives them on this 2-input, 1-output data (auto -> 2 and 1)
    kan = instantiate(kan_cfg.model, layers_hidden=data_widths(kan_cfg.model.layers_hidden, 2, 1), _convert_="all")
    mlp = instantiate(mlp_cfg.model, layers_hidden=data_widths(mlp_cfg.model.layers_hidden, 2, 1), _convert_="all")
    n_kan, n_mlp = (sum(p.numel() for p in m.parameters()) for m in (kan, mlp))
    assert n_kan == kan_parameter_count([2, 20, 20, 1], 5, 3) == 4600
    assert list(mlp_cfg.model.layers_hidden) == matching_mlp_widths(n_kan, 2, 1, depth=2)
    assert abs(n_mlp - n_kan) / n_kan < 0.05
    # same data, optimizer and budget for both models
    for key in ("data", "optimizer", "scheduler"):
        assert kan_cfg[key] == mlp_cfg[key], key
    assert kan_cfg.trainer.max_epochs == mlp_cfg.trainer.max_epochs
    data = instantiate(kan_cfg.data)
    data.setup()
    assert data.x_test.shape[0] == 1000 and data.x_train.shape[0] + data.x_val.shape[0] == 4000


def test_guide_suite_single_job_reduced(make_cfg, tmp_path):
    record = train(make_cfg("experiment=guide_suite", *QUIET, "model=mlp_guide", "data.function=discontinuous",
                            "data.n_samples=300", "trainer.max_epochs=2"))
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["test/mse"])
    assert record["num_parameters"] == mlp_parameter_count([2, 65, 65, 1])


@pytest.mark.slow
def test_guide_suite_multirun_and_grouped_summary(tmp_path):
    """A real multirun of the preset (its sweep, reduced from the command line: two functions,
    two seeds, both models), then the grouped summary over seeds."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kan_lightning.commands.train", "-m", "experiment=guide_suite", "data.function=polynomial,discontinuous",
         "seed=1,2", "data.n_samples=200", "trainer.max_epochs=2", "logger=none", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = load_sweep(sweep_dir)
    assert len(rows) == 8 and all(r["status"] == "completed" for r in rows)
    assert {r["overrides"]["model"] for r in rows} == {"kan", "mlp_guide"}  # from the preset's sweep params
    assert sweep_main([str(sweep_dir), "--no-plot", "--group-by", "data.function,model", "--aggregate", "seed"]) == 0
    with (sweep_dir / "summary_grouped.csv").open() as f:
        groups = list(csv.DictReader(f))
    assert len(groups) == 4 and all(g["completed"] == "2" and g["seed"] == "1,2" for g in groups)
    assert {int(float(g["num_parameters_mean"])) for g in groups} == {4600, 4551}
    text = (sweep_dir / "summary_grouped.md").read_text()
    assert "test/mse (mean ± std)" in text and "| polynomial | kan | 2 | 2 | 1,2 |" in text


# ---------------------------------------------------------------------------------------------
# Grouped sweep tables (synthetic jobs)


def _job(sweep: Path, name: str, overrides: list[str], status: str | None = "completed", metrics: dict | None = None, params: int = 100) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        record = {"status": status, "metrics": metrics or {}, "num_parameters": params, "wall_time_s": 2.0, "overrides": overrides}
        (job / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def grouped_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    values = {("polynomial", "kan"): [1.0, 2.0, 3.0], ("polynomial", "mlp_guide"): [4.0, 6.0, 8.0],
              ("discontinuous", "kan"): [0.5, 0.5, None], ("discontinuous", "mlp_guide"): [0.25, None, None]}
    i = 0
    for (function, model), mses in values.items():
        for seed, mse in enumerate(mses, start=1):
            overrides = ["experiment=guide_suite", f"data.function={function}", f"model={model}", f"seed={seed}"]
            status = "completed" if mse is not None else ("failed" if seed == 3 else None)
            _job(root, str(i), overrides, status, {"test/mse": mse} if mse is not None else {}, 4600 if model == "kan" else 4551)
            i += 1
    return root


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


def test_grouped_table_means_and_counts(grouped_sweep):
    rows = load_sweep(grouped_sweep)
    records = grouped_table(rows, ["data.function", "model"], ["seed"], ["test/mse", "num_parameters"])
    by_key = {(r["data.function"], r["model"]): r for r in records}
    assert list(by_key) == [("polynomial", "kan"), ("polynomial", "mlp_guide"), ("discontinuous", "kan"), ("discontinuous", "mlp_guide")]
    r = by_key[("polynomial", "mlp_guide")]
    assert (r["jobs"], r["completed"], r["seed"]) == (3, 3, "1,2,3")
    assert r["test/mse_mean"] == pytest.approx(6.0) and r["test/mse_std"] == pytest.approx(2.0) and r["test/mse_n"] == 3
    r = by_key[("discontinuous", "kan")]  # a failed job is counted but not averaged
    assert (r["jobs"], r["completed"], r["test/mse_n"]) == (3, 2, 2)
    assert r["test/mse_mean"] == pytest.approx(0.5) and r["test/mse_std"] == 0.0
    r = by_key[("discontinuous", "mlp_guide")]
    assert r["completed"] == 1 and r["test/mse_mean"] == 0.25 and math.isnan(r["test/mse_std"])
    assert by_key[("polynomial", "kan")]["num_parameters_mean"] == 4600

    text = grouped_markdown(records, ["test/mse", "num_parameters"])
    assert "| polynomial | mlp_guide | 3 | 3 | 1,2,3 | 6 ± 2 | 4551 |" in text
    assert "| discontinuous | mlp_guide | 3 | 1 | 1,2,3 | 0.25 | 4551 |" in text
    pivot = pivot_markdown(records, "data.function", "model", "test/mse")
    assert pivot.splitlines()[0] == "| data.function | kan | mlp_guide |"
    assert "| polynomial | 2 ± 1 | 6 ± 2 |" in pivot


def test_grouping_keeps_swept_keys_that_are_not_aggregated(tmp_path):
    root = tmp_path / "s"
    for i, (lr, seed, mse) in enumerate([(0.1, 1, 1.0), (0.1, 2, 3.0), (0.01, 1, 5.0), (0.01, 2, 7.0)]):
        _job(root, str(i), ["model=kan", f"optimizer.lr={lr}", f"seed={seed}"], metrics={"test/mse": mse})
    rows = load_sweep(root)
    with_lr = grouped_table(rows, ["model"], ["seed"], ["test/mse"])
    assert [(r["optimizer.lr"], r["test/mse_mean"]) for r in with_lr] == [(0.1, 2.0), (0.01, 6.0)]
    everything = grouped_table(rows, ["model"], None, ["test/mse"])  # no --aggregate: all averaged
    assert len(everything) == 1 and everything[0]["test/mse_mean"] == 4.0
    csv_path, md_path = write_grouped_summary(root, rows, ["model"], ["seed"], ["test/mse"])
    assert "optimizer.lr added" in md_path.read_text()
    with csv_path.open() as f:
        assert [float(r["test/mse_mean"]) for r in csv.DictReader(f)] == [2.0, 6.0]


def test_grouped_summary_cli(grouped_sweep, capsys):
    assert sweep_main([str(grouped_sweep), "--no-plot", "--group-by", "data.function,model", "--aggregate", "seed", "--metrics", "test/mse"]) == 0
    out = capsys.readouterr().out
    assert "grouped" in out and "6 ± 2" in out
    assert (grouped_sweep / "summary_grouped.md").is_file() and (grouped_sweep / "summary_grouped.csv").is_file()
    with pytest.raises(SystemExit):
        sweep_main([str(grouped_sweep), "--aggregate", "seed"])  # --aggregate needs --group-by


@pytest.mark.slow
def test_stage_evaluation_under_ddp_matches_single_process(tmp_path):
    """Rank 0 evaluates on its full copy of the data and broadcasts: the stages of a 2-process
    DDP run equal those of a single process (full-batch Adam: the same steps; LBFGS line searches
    would see each rank's own half of the loss)."""
    common = [
        "experiment=paper_grid_extension", *QUIET, "logger=none", "data.n_samples=250", "trainer.max_epochs=6",
        "optimizer=adam", "~optimizer.history_size",
        "callbacks.grid_extension.grids=[3,5]", "trainer.check_val_every_n_epoch=3", "trainer.precision=64-true",
    ]
    runs = ddp_and_single_runs(tmp_path, common)
    stages = {name: run["callbacks"]["grid_extension"]["stages"] for name, run in runs.items()}
    assert [s["grid"] for s in stages["ddp"]] == [s["grid"] for s in stages["single"]] == [3, 5]
    for ddp, single in zip(stages["ddp"], stages["single"]):
        assert (ddp["epoch"], ddp["step"], ddp["num_parameters"]) == (single["epoch"], single["step"], single["num_parameters"])
        for key in ("train/rmse", "test/rmse"):
            assert ddp[key] == pytest.approx(single[key], rel=1e-3), key
