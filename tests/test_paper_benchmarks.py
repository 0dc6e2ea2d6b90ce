"""The KAN paper's benchmark tables: targets, presets and the comparison report."""

import json
import math

import numpy as np
import pytest
import torch

from kan_lightning.analysis import paper_tables as pt
from kan_lightning.analysis.grid_extension_report import find_runs
from kan_lightning.commands import paper_tables as pt_cli
from kan_lightning.data import FUNCTIONS
from kan_lightning.data.paper_benchmarks import BENCHMARKS, FEYNMAN, SPECIAL
from kan_lightning.commands.train import train


def test_tables_are_complete():
    assert len(FEYNMAN) == 27 and len(SPECIAL) == 15
    assert len({b.name for b in FEYNMAN + SPECIAL}) == 42
    for b in FEYNMAN:
        assert len(b.paper) == 4 and all(0 < v < 1 for v in b.paper.values()), b.name
        assert len(b.domain) == len(b.variables)
    for b in SPECIAL:
        assert len(b.paper) == 3 and all(0 < v < 1 for v in b.paper.values()), b.name


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_is_finite_on_its_domain(name):
    target = FUNCTIONS[name]
    lo = torch.tensor([a for a, _ in target.domain], dtype=torch.float64)
    hi = torch.tensor([b for _, b in target.domain], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    inside = lo + (hi - lo) * torch.rand(5000, target.input_dim, generator=g, dtype=torch.float64)
    # the corners too (grid sampling reaches them)
    corners = torch.cartesian_prod(*[torch.stack([lo[i], hi[i]]) for i in range(target.input_dim)]).reshape(-1, target.input_dim)
    y = target(torch.cat([inside, corners]))
    assert y.shape == (5000 + corners.shape[0], 1) and torch.isfinite(y).all()
    assert y[:5000].std() > 1e-3  # not a constant


def test_benchmark_values_against_closed_forms():
    x = torch.tensor([[0.3, 2.0], [0.9, 5.5]], dtype=torch.float64)
    expected = [math.asin(a * math.sin(t)) for a, t in x.tolist()]
    assert FUNCTIONS["feynman_I.26.2"](x)[:, 0].tolist() == pytest.approx(expected, rel=1e-12)
    u = torch.tensor([[0.4, 0.0], [-0.7, 0.0]], dtype=torch.float64)  # sn(u | 0) = sin u
    assert FUNCTIONS["special_ellipj"](u)[:, 0].tolist() == pytest.approx(np.sin([0.4, -0.7]).tolist(), rel=1e-12)
    v = torch.tensor([[2.0, 0.3], [2.0, -0.6]], dtype=torch.float64)  # P_2(y) = (3y^2 - 1) / 2
    assert FUNCTIONS["special_lpmv_m_0"](v)[:, 0].tolist() == pytest.approx([(3 * y * y - 1) / 2 for y in (0.3, -0.6)], rel=1e-12)
    # Re Y_1^1(azimuth, polar) = -1/2 sqrt(3 / (2 pi)) sin(polar) cos(azimuth)
    a = torch.tensor([[0.5, 1.0], [2.0, 2.5]], dtype=torch.float64)
    ref = [-0.5 * math.sqrt(3 / (2 * math.pi)) * math.sin(p) * math.cos(az) for az, p in a.tolist()]
    assert FUNCTIONS["special_sph_harm_m_1_n_1"](a)[:, 0].tolist() == pytest.approx(ref, rel=1e-12)


def test_counting_on_hand_values():
    # I.6.2 paper: unpruned 4.60e-5, pruned 2.86e-5, MLP 1.45e-4; I.16.6: 1.53e-3, 1.19e-3, 6.20e-4
    ours = {
        "I.6.2": {"kan": 4.60e-5, "kan_pruned": 3e-5, "mlp": 1e-4},  # tie counts as at or below
        "I.16.6": {"kan": 2e-3, "mlp": 5e-4},
    }
    counts = pt.count_at_or_below(ours, "feynman")
    assert counts == {"kan": (1, 2), "kan_pruned": (0, 1), "mlp": (2, 2), "kan_vs_mlp": (1, 2)}
    text = pt.markdown(ours, "feynman")
    assert "at or below the paper's unpruned KAN: **1 of 2**" in text
    assert "| I.6.2 |" in text and "4.60e-05 ✓" in text
    # special functions: ours KAN against the best-KAN column (ellipj: 1.33e-4)
    assert pt.count_at_or_below({"ellipj": {"kan": 1e-4}}, "special")["kan"] == (1, 1)


def _record(tmp_path, name, function, val, test, target="kan_lightning.nn.KAN", callbacks=("grid_extension",), pruned_to=None):
    run = tmp_path / name
    run.mkdir()
    record = {
        "status": "completed",
        "metrics": {"test/rmse": test, "val/rmse": 1.0},
        "seed": 2,
        "config": {"data": {"function": function}, "model": {"_target_": target, "layers_hidden": [2, 5, 1]}, "callbacks": {c: {} for c in callbacks}},
        "callbacks": {"grid_extension": {"stages": [], "delivered": {"grid": 20, "val/rmse": val, "test/rmse": test}}},
    }
    if pruned_to:  # what the Pruning callback reports
        record["callbacks"]["pruning"] = {"widths": {"before": [2, 5, 1], "after": pruned_to}}
        record["config"]["model"]["regularization"] = {"l1": 1e-3, "entropy": 2e-3}
    if target.endswith("MLP"):
        record["metrics"]["val/rmse"] = val
        del record["callbacks"]
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def test_collect_picks_by_validation_not_test(tmp_path, capsys):
    _record(tmp_path, "a", "feynman_I.6.2", val=2e-5, test=9e-5)
    _record(tmp_path, "b", "feynman_I.6.2", val=3e-5, test=1e-5)  # better on test, worse on val
    _record(tmp_path, "c", "feynman_I.6.2", val=1e-5, test=5e-6, callbacks=("grid_extension", "pruning"), pruned_to=[2, 2, 1])
    _record(tmp_path, "d", "feynman_I.6.2", val=1e-4, test=2e-4, target="kan_lightning.nn.MLP")
    _record(tmp_path, "e", "guide_example", val=1e-9, test=1e-9)  # not a benchmark: ignored
    chosen = {}
    ours = pt.collect(find_runs([tmp_path]), "feynman", chosen)
    assert ours == {"I.6.2": {"kan": 9e-5, "kan_pruned": 5e-6, "mlp": 2e-4}}
    # run a: the KAN's lowest validation; the pruned run names the shape it was pruned to
    assert chosen == {"I.6.2": {"kan": "[2, 5, 1] seed 2, G = 20", "kan_pruned": "[2, 5, 1] pruned to [2, 2, 1] seed 2, G = 20, l1 0.001", "mlp": "[2, 5, 1] seed 2"}}
    assert pt_cli.main(["feynman", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "feynman.md").read_text()
    assert "chosen by test RMSE instead, as the paper chooses: ours kan 1 of 1, ours kan pruned 1 of 1, ours mlp 0 of 1" in text
    assert "**0 of 1**" in text and "The KAN run chosen (lowest validation RMSE of those given): I.6.2 [2, 5, 1] seed 2, G = 20." in text
    assert "The pruned KAN run chosen (lowest validation RMSE of those given): I.6.2 [2, 5, 1] pruned to [2, 2, 1] seed 2, G = 20, l1 0.001." in text
    assert pt_cli.main(["feynman", str(tmp_path / "missing")]) == 2
    assert "error: no such run" in capsys.readouterr().err


def test_presets_sweep_every_benchmark(make_cfg):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    for preset, table in (("feynman", FEYNMAN), ("special_functions", SPECIAL)):
        GlobalHydra.instance().clear()
        with initialize_config_module("kan_lightning.conf", version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={preset}"], return_hydra_config=True)
        GlobalHydra.instance().clear()
        swept = cfg.hydra.sweeper.params["data.function"].split(",")
        assert swept == [b.function_name for b in table]
        assert cfg.callbacks.grid_extension.keep_best and cfg.optimizer._target_ == "torch.optim.LBFGS"
        assert list(cfg.model.layers_hidden) == ["auto", 5, "auto"]


def test_feynman_preset_reduced_run(make_cfg, tmp_path):
    """A three-input equation through the preset: the first width follows the data; then the
    grid diagnostics of its last checkpoint."""
    cfg = make_cfg(
        "experiment=feynman", "data.function=feynman_I.6.2b", "trainer.enable_progress_bar=false", "logger=none",
        "data.n_samples=150", "trainer.max_epochs=4", "callbacks.grid_extension.grids=[3,6]",
        "trainer.check_val_every_n_epoch=2", "callbacks.last_checkpoint.every_n_epochs=2",
    )
    record = train(cfg)
    assert record["status"] == "completed" and record["config"]["model"]["layers_hidden"] == [3, 5, 1]
    delivered = record["callbacks"]["grid_extension"]["delivered"]
    assert record["metrics"]["test/rmse"] == pytest.approx(delivered["test/rmse"], rel=1e-6)
    from kan_lightning.analysis import grid_diagnostics as gd
    from kan_lightning.commands import grid_diagnostics as gd_cli

    model, data = gd_cli.load_run(tmp_path)
    assert model.grid_size == 6 and model.layers_hidden == [3, 5, 1]
    far = torch.full((1, 3), 50.0, dtype=torch.float64)
    assert gd.off_grid(model, far).tolist() == [True] and not gd.off_grid(model, data.x_train.double()[:, :]).any()
    conditions = gd.refit_conditions(model, data.x_train.double())
    assert [len(c) for c in conditions] == [3, 5] and all(c >= 1 for row in conditions for c in row)
    text = gd.report(model, data, "run", refit=12, margins=[0.5])
    assert text.startswith("run: G = 6") and "G = 6" in text and "refit to G = 12: margin 0.5:" in text and "interval:" in text
    assert gd_cli.main([str(tmp_path / "missing")]) == 2


def test_feynman_pruned_recipe_with_fit_lm(make_cfg, tmp_path):
    """The preset header's pruned KAN, short: sparsify on G = 3 without the polish, prune at the
    switch and drop the penalty, then polish the smaller network; the table names its shape."""
    cfg = make_cfg(
        "experiment=feynman", "fit=lm", "data.function=feynman_I.12.11", "trainer.enable_progress_bar=false", "logger=none",
        "data.n_samples=150", "model.regularization.l1=1e-3", "model.regularization.entropy=2e-3",
        "callbacks=[default,grid_extension,multi_start,pruning]", "callbacks.pruning.at_epoch=4",
        "callbacks.pruning.drop_penalties=true", "trainer.max_epochs=6", "callbacks.grid_extension.grids=[3,5]",
        "callbacks.grid_extension.at_epochs=[4]", "trainer.check_val_every_n_epoch=2", "callbacks.last_checkpoint.every_n_epochs=2",
        "callbacks.grid_extension.polish_iterations=5", "callbacks.multi_start.restarts=1", "callbacks.multi_start.steps=1",
    )
    record = train(cfg)
    assert record["status"] == "completed"
    widths = record["callbacks"]["pruning"]["widths"]
    assert widths["before"] == [2, 5, 1] and len(widths["after"]) == 3 and widths["after"][1] <= 5
    label = pt.run_result(record)[2]
    assert label.startswith(f"[2, 5, 1] pruned to {widths['after']} seed 1")
    from kan_lightning.commands.grid_diagnostics import load_run

    model, _ = load_run(tmp_path, "delivered.ckpt")  # the pruned network, not the config's widths
    assert model.layers_hidden == widths["after"]


def test_best_validation_stage_for_runs_without_keep_best():
    from kan_lightning.analysis.grid_extension_report import best_validation_stage

    stages = [{"grid": 5, "val/rmse": 3e-4}, {"grid": 20, "val/rmse": 1e-4, "test/rmse": 2e-4}, {"grid": 50, "val/rmse": 2e-4}]
    assert best_validation_stage(stages)["grid"] == 20
    assert best_validation_stage([{"grid": 5, "test/rmse": 1e-3}]) is None
