"""The KAN workflow: grid-extension schedule, progressive sparsification, pruning, gradient
statistics and the three-stage experiment preset."""

from __future__ import annotations

import csv
import functools
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from kan_lightning.data import SyntheticFunctionDataModule
from kan_lightning.lit import (
    GradientStats,
    GridExtension,
    History,
    KANRegressor,
    Pruning,
    RegularizationSchedule,
    analyze_gradients,
)
from kan_lightning.lit.stats import activation_stats
from kan_lightning.nn import KAN
from kan_lightning.nn.pruning import edge_scores, mask_nodes, prune_nodes, select_nodes
from kan_lightning.commands.train import train
from conftest import ddp_and_single_runs


LBFGS = functools.partial(
    torch.optim.LBFGS, lr=1.0, max_iter=20, history_size=10, line_search_fn="strong_wolfe",
    tolerance_grad=1e-32, tolerance_change=1e-32,
)


def _trainer(max_epochs: int, callbacks, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def _toy(n_samples: int = 600, batch_size="full", seed: int = 0) -> SyntheticFunctionDataModule:
    return SyntheticFunctionDataModule(
        function="paper_exp_sin", n_samples=n_samples, split=(0.5, 0.25, 0.25), batch_size=batch_size, seed=seed
    )


class OptimizerCheck(L.Callback):
    """After each grid switch (it runs after GridExtension in the callback list), the optimizer
    must hold exactly the module's current Parameter objects and start with empty state."""

    def __init__(self, extension: GridExtension) -> None:
        self.extension = extension
        self.seen_switches = 0
        self.checks = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
        in_module = [id(p) for p in pl_module.parameters()]
        assert sorted(in_optimizer) == sorted(in_module)
        assert len(in_optimizer) == len(set(in_optimizer))
        if len(self.extension.history) > self.seen_switches:
            self.seen_switches = len(self.extension.history)
            spline = [layer.spline_weight for layer in pl_module.model.layers]
            assert all(p.shape[-1] == self.extension.grid_size + 3 for p in spline)
            assert all(id(p) in in_optimizer for p in spline)
            assert len(optimizer.state) == 0, "stale optimizer state (LBFGS history / Adam moments)"
            self.checks.append(self.extension.grid_size)


# ---------------------------------------------------------------------------------------------
# Grid extension


def test_grid_extension_lowers_test_rmse_stage_by_stage():
    """The KAN paper's toy exp(sin(pi x0) + x1^2) with a [2, 5, 1] KAN and full-batch LBFGS:
    grids 3 -> 5 -> 10, the test RMSE falls at every stage."""
    L.seed_everything(0, verbose=False)
    data = _toy()
    module = KANRegressor(KAN([2, 5, 1], grid_size=3), optimizer=LBFGS)
    epochs = 6
    extension = GridExtension(grids=[3, 5, 10], at_epochs=[epochs, 2 * epochs])
    check = OptimizerCheck(extension)
    rmse = {}

    class StageRMSE(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if (trainer.current_epoch + 1) % epochs == 0:
                with torch.no_grad():
                    err = (pl_module.model(data.x_test) - data.y_test).pow(2).mean().sqrt()
                rmse[pl_module.model.grid_size] = float(err)

    trainer = _trainer(3 * epochs, [extension, check, StageRMSE()])
    trainer.fit(module, datamodule=data)
    print("test RMSE per grid:", rmse)
    assert list(rmse) == [3, 5, 10]
    assert rmse[3] > rmse[5] > rmse[10]
    assert rmse[10] < 0.5 * rmse[3]
    assert check.checks == [5, 10]
    assert [(h["from"], h["to"], h["epoch"]) for h in extension.history] == [(3, 5, 6), (5, 10, 12)]
    assert all(math.isfinite(h["val/loss"]) for h in extension.history)
    assert trainer.callback_metrics["grid/size"] == 10
    assert module.model.config["grid_size"] == 10


def test_grid_extension_adam_steps_keep_lr_schedule():
    """Adam with a cosine schedule, switching by steps: fresh moments of the right shape, and
    the schedule continues where it was (same rates as a run without switches)."""
    L.seed_everything(0, verbose=False)
    data = _toy(n_samples=400, batch_size=50)  # 4 steps per epoch
    scheduler = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4, eta_min=0.0)
    module = KANRegressor(
        KAN([2, 3, 1], grid_size=3), optimizer=functools.partial(torch.optim.Adam, lr=0.01), scheduler=scheduler
    )
    extension = GridExtension(grids=[3, 6, 12], at_steps=[5, 9])
    check = OptimizerCheck(extension)
    history = History()
    trainer = _trainer(4, [extension, check, history])
    trainer.fit(module, datamodule=data)
    assert [(h["from"], h["to"], h["step"]) for h in extension.history] == [(3, 6, 5), (6, 12, 9)]
    assert check.checks == [6, 12]
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert history.history["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    optimizer = trainer.optimizers[0]
    state = optimizer.state[module.model.layers[0].spline_weight]
    assert state["exp_avg"].shape == (3, 2, 12 + 3)
    assert trainer.lr_scheduler_configs[0].scheduler.optimizer is optimizer


def test_grid_extension_by_patience_and_default_split():
    ext = GridExtension(grids=[3, 5, 10], patience=2)
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/loss": torch.tensor(1.0)})
    ext.on_validation_end(trainer, None)  # first value: an improvement
    assert not ext._due(trainer)
    ext.on_validation_end(trainer, None)
    assert not ext._due(trainer)
    ext.on_validation_end(trainer, None)  # two validations without improvement
    assert ext._due(trainer)

    default = GridExtension(grids=[3, 5, 10, 20])
    model = KANRegressor(KAN([2, 2, 1], grid_size=3))
    default.on_fit_start(SimpleNamespace(max_epochs=40), model)
    assert default.at_epochs == [10, 20, 30]


def test_grid_extension_patience_in_training():
    """A metric that never improves switches after `patience` validations, every stage."""
    L.seed_everything(0, verbose=False)

    class Flat(KANRegressor):
        def validation_step(self, batch, batch_idx):
            self.log("val/flat", 1.0)
            return super().validation_step(batch, batch_idx)

    extension = GridExtension(grids=[3, 5, 7], patience=2, monitor="val/flat")
    trainer = _trainer(7, [extension])
    trainer.fit(Flat(KAN([2, 2, 1], grid_size=3)), datamodule=_toy(n_samples=200, batch_size=100))
    # validations at the end of epochs 0, 1, 2: the 2nd stale one is after epoch 2 -> switch at 3
    assert [(h["to"], h["epoch"]) for h in extension.history] == [(5, 3), (7, 6)]


def test_grid_extension_resumes(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = _toy(n_samples=200, batch_size=50)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(2, [GridExtension([3, 5, 8], at_epochs=[1, 3]), checkpoints], enable_checkpointing=True).fit(
        KANRegressor(KAN([2, 2, 1], grid_size=3)), datamodule=data
    )
    extension, module = GridExtension([3, 5, 8], at_epochs=[1, 3]), KANRegressor(KAN([2, 2, 1], grid_size=3))
    trainer = _trainer(4, [extension])
    trainer.fit(module, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert [(h["to"], h["epoch"]) for h in extension.history] == [(5, 1), (8, 3)]
    assert module.model.grid_size == 8 and module.model.layers[0].spline_weight.shape[-1] == 11


def test_grid_extension_needs_first_grid():
    extension = GridExtension(grids=[3, 5])
    trainer = _trainer(1, [extension])
    with pytest.raises(ValueError, match="grid_size=5 but stage 0"):
        trainer.fit(KANRegressor(KAN([2, 2, 1], grid_size=5)), datamodule=_toy(n_samples=100))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(grids=[3, 5], at_epochs=[2], patience=3), "at most one"),
        (dict(grids=[3, 5, 10], at_epochs=[2]), "len\\(grids\\) - 1"),
        (dict(grids=[3, 5, 10], at_steps=[4, 2]), "strictly increasing"),
        (dict(grids=[]), "non-empty"),
    ],
)
def test_grid_extension_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GridExtension(**kwargs)


# ---------------------------------------------------------------------------------------------
# Regularization schedule


def test_regularization_schedule_values_by_hand():
    linear = RegularizationSchedule("l1", start=1e-3, end=1e-1, start_epoch=2, end_epoch=6, shape="linear")
    assert [linear.value(e) for e in range(9)] == pytest.approx(
        [1e-3, 1e-3, 1e-3, 0.02575, 0.0505, 0.07525, 0.1, 0.1, 0.1], rel=1e-12
    )
    cosine = RegularizationSchedule("entropy", start=1.0, end=0.0, start_epoch=0, end_epoch=4, shape="cosine")
    # 1 - (1 - cos(pi p)) / 2 at p = 0, 1/4, 1/2, 3/4, 1
    h = math.sqrt(2) / 4
    assert [cosine.value(e) for e in range(6)] == pytest.approx([1.0, 0.5 + h, 0.5, 0.5 - h, 0.0, 0.0], abs=1e-12)
    step = RegularizationSchedule("l1", start=0.01, end=0.0, start_epoch=3, end_epoch=3)
    assert [step.value(e) for e in range(5)] == [0.01, 0.01, 0.01, 0.0, 0.0]
    geometric = RegularizationSchedule("l1", start=1e-4, end=1e-2, start_epoch=0, end_epoch=2, shape="geometric")
    assert [geometric.value(e) for e in range(3)] == pytest.approx([1e-4, 1e-3, 1e-2], rel=1e-12)
    # the guide's ProgressiveSparsifier(initial_reg, final_reg, epochs): linear from epoch 0
    guide = RegularizationSchedule("l1", start=1e-3, end=1e-1, end_epoch=1000)
    assert guide.value(250) == pytest.approx(1e-3 + (1e-1 - 1e-3) * 0.25)
    with pytest.raises(ValueError, match="unknown regularization term"):
        RegularizationSchedule("l2")


def test_regularization_schedule_drives_the_model_and_is_logged(tmp_path):
    L.seed_everything(0, verbose=False)
    module = KANRegressor(KAN([2, 3, 1], grid_size=3))
    schedules = [
        RegularizationSchedule("l1", start=0.0, end=0.3, start_epoch=0, end_epoch=3, shape="linear"),
        RegularizationSchedule("entropy", start=0.2, end=0.0, shape="cosine"),  # end_epoch: the last epoch
    ]
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                seen.append((pl_module.model.regularization["l1"], pl_module.model.regularization["entropy"]))

    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="reg")
    trainer = _trainer(5, [*schedules, Record()], logger=logger, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=_toy(n_samples=100, batch_size=20))
    expected_l1 = [0.0, 0.1, 0.2, 0.3, 0.3]
    expected_entropy = [0.2 * (1 - 0.5 * (1 - math.cos(math.pi * e / 4))) for e in range(5)]
    assert [s[0] for s in seen] == pytest.approx(expected_l1, abs=1e-12)
    assert [s[1] for s in seen] == pytest.approx(expected_entropy, abs=1e-12)
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    logged = [float(r["reg_weight/l1"]) for r in rows if r.get("reg_weight/l1")]
    assert logged == pytest.approx(expected_l1, abs=1e-7)
    assert "reg/l1_epoch" in rows[0] or any(r.get("reg/l1_epoch") for r in rows)


# ---------------------------------------------------------------------------------------------
# Pruning


def _kan_with_dead_nodes(dtype=torch.float64, silent_node_2: bool = False) -> tuple[KAN, torch.Tensor]:
    torch.manual_seed(0)
    model = KAN([2, 6, 4, 1], grid_size=5).to(dtype)
    x = (torch.rand(400, 2, dtype=dtype) * 2 - 1)
    model.update_grid(x)
    with torch.no_grad():
        for layer in model.layers:  # spline branches of a similar size as the base branches
            layer.spline_weight.normal_(0, 0.3)
        model.layers[0].base_weight[2].mul_(1e-7)  # node 2 of layer 1: (almost) nothing comes in
        model.layers[0].spline_scaler[2].mul_(1e-7)
        model.layers[1].base_weight[:, 4].mul_(1e-7)  # node 4 of layer 1: nothing goes out
        model.layers[1].spline_scaler[:, 4].mul_(1e-7)
        model.layers[2].base_weight[:, 1].mul_(1e-7)  # node 1 of layer 2: nothing goes out
        model.layers[2].spline_scaler[:, 1].mul_(1e-7)
        model.layers[1].mask[0, 3] = 0  # an edge already pruned
        if silent_node_2:
            # a node with no input still sends phi(0) != 0 onwards: silence that too
            model.layers[1].base_weight[:, 2].mul_(1e-7)
            model.layers[1].spline_scaler[:, 2].mul_(1e-7)
    return model, x


def test_node_scores_follow_the_papers_definition():
    model, x = _kan_with_dead_nodes()
    scores = edge_scores(model, x)
    h = x
    for layer, score in zip(model.layers, scores):
        phi = layer.edge_activations(h)
        torch.testing.assert_close(score, phi.abs().mean(0))
        h = phi.sum(-1)
    assert scores[1][0, 3] == 0  # masked edge
    keep = select_nodes(model, x, threshold=1e-2)
    assert [k.tolist() for k in keep] == [[0, 1], [0, 1, 3, 5], [0, 2, 3], [0]]
    # a node is kept only if its max incoming AND max outgoing score exceed the threshold
    for l in (1, 2):
        incoming, outgoing = scores[l - 1].amax(1), scores[l].amax(0)
        expected = ((incoming > 1e-2) & (outgoing > 1e-2)).nonzero().flatten()
        assert keep[l].tolist() == expected.tolist()


def test_pruned_kan_equals_masked_original():
    model, x = _kan_with_dead_nodes(silent_node_2=True)
    keep = select_nodes(model, x, threshold=1e-2)
    pruned = model.prune(x, threshold=1e-2)
    assert pruned.layers_hidden == [2, 4, 3, 1] == pruned.config["layers_hidden"]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    masked = mask_nodes(model, keep)
    x_new = torch.rand(300, 2, dtype=torch.float64) * 2.4 - 1.2  # also outside the training range
    with torch.no_grad():
        torch.testing.assert_close(pruned(x_new), masked(x_new), rtol=1e-12, atol=1e-13)
        # the dropped parts were near zero, so the original function survives
        torch.testing.assert_close(pruned(x_new), model(x_new), rtol=0, atol=1e-5)
    # kept grids, coefficients, masks are copied; the pruned model is independent
    torch.testing.assert_close(pruned.layers[1].grid, model.layers[1].grid[keep[1]])
    torch.testing.assert_close(pruned.layers[1].spline_weight, model.layers[1].spline_weight[keep[2]][:, keep[1]])
    assert pruned.layers[1].mask[0, 2] == 0  # old edge (0, 3) is now (0, 2)
    assert pruned.layers[1].spline_weight.data_ptr() != model.layers[1].spline_weight.data_ptr()
    assert pruned.grid_size == model.grid_size and pruned.layers[0].uniform_grid == model.layers[0].uniform_grid


def test_pruning_with_real_cut_matches_masked_model_float32():
    torch.manual_seed(1)
    model = KAN([3, 8, 1], grid_size=4)
    x = torch.rand(256, 3) * 2 - 1
    keep = select_nodes(model, x, threshold=0.08)  # a threshold that cuts live nodes
    assert 1 <= len(keep[1]) < 8
    pruned = prune_nodes(model, keep)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), mask_nodes(model, keep)(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(pruned(x), model(x), atol=1e-4)


def test_prune_keeps_one_node_and_prune_edges_masks():
    torch.manual_seed(0)
    model = KAN([2, 4, 1], grid_size=3)
    x = torch.rand(100, 2) * 2 - 1
    assert model.prune(x, threshold=1e9).layers_hidden == [2, 1, 1]
    scores = edge_scores(model, x)
    threshold = float(scores[0].median())
    n_weak = int((scores[0] <= threshold).sum() + (scores[1] <= threshold).sum())
    assert model.prune_edges(threshold, x) == n_weak
    assert int((model.layers[0].mask == 0).sum() + (model.layers[1].mask == 0).sum()) == n_weak
    assert model.prune_edges(threshold, x) == 0  # already masked
    data_free = KAN([2, 4, 1], grid_size=3)
    with torch.no_grad():
        data_free.layers[0].base_weight[1, 0] = 0
        data_free.layers[0].spline_scaler[1, 0] = 0
    assert data_free.prune_edges(1e-12) == 1 and data_free.layers[0].mask[1, 0] == 0


def test_pruning_callback_replaces_model_and_optimizer(tmp_path):
    L.seed_everything(0, verbose=False)
    model = KAN([2, 6, 1], grid_size=3)
    with torch.no_grad():  # two hidden nodes that do nothing
        model.layers[1].base_weight[:, [1, 4]] = 0
        model.layers[1].spline_scaler[:, [1, 4]] = 0
    # small SGD steps: the silent nodes stay (nearly) silent until the pruning epoch
    module = KANRegressor(model, optimizer=functools.partial(torch.optim.SGD, lr=1e-5))
    pruning = Pruning(at_epoch=1, threshold=1e-4)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="prune")
    params_after = []

    class Check(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            assert ids == {id(p) for p in pl_module.parameters()}
            params_after.append(pl_module.model.layers_hidden)

    trainer = _trainer(3, [pruning, Check()], logger=logger, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=_toy(n_samples=200, batch_size=20))
    assert pruning.widths == {"before": [2, 6, 1], "after": [2, 4, 1]} == pruning.report()["widths"]
    assert module.model is not model and module.model.layers_hidden == [2, 4, 1]
    assert params_after[0] == [2, 6, 1] and params_after[-1] == [2, 4, 1]
    assert trainer.callback_metrics["prune/width_1"] == 4
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    assert [float(r["prune/width_1"]) for r in rows if r.get("prune/width_1")] == [4.0]


def test_pruned_run_resumes_and_tests_older_checkpoints(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fresh():
        torch.manual_seed(0)
        model = KAN([2, 6, 1], grid_size=3)
        with torch.no_grad():
            model.layers[1].base_weight[:, [1, 4]] = 0
            model.layers[1].spline_scaler[:, [1, 4]] = 0
        return KANRegressor(model, optimizer=functools.partial(torch.optim.SGD, lr=1e-5))

    data = _toy(n_samples=200, batch_size=20)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="e{epoch}", auto_insert_metric_name=False, save_top_k=-1, save_last=True)
    trainer = _trainer(3, [Pruning(at_epoch=1, threshold=1e-4), checkpoints], enable_checkpointing=True,
                       limit_train_batches=2, limit_val_batches=1)
    trainer.fit(fresh(), datamodule=data)
    # resume a run pruned in epoch 1 into a module built with the original widths
    module, pruning = fresh(), Pruning(at_epoch=1, threshold=1e-4)
    trainer = _trainer(4, [pruning], limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert module.model.layers_hidden == [2, 4, 1] and pruning.done
    assert pruning.widths == {"before": [2, 6, 1], "after": [2, 4, 1]}  # restored, not pruned again
    # a checkpoint from before the pruning (epoch 0) tests with its own, wider network
    trainer.test(module, datamodule=data, ckpt_path=tmp_path / "e0.ckpt", verbose=False)
    assert module.model.layers_hidden == [2, 6, 1]


# ---------------------------------------------------------------------------------------------
# Gradient and activation statistics


def test_analyze_gradients_matches_the_guide():
    torch.manual_seed(0)
    model = KAN([2, 3, 1], grid_size=3)
    x = torch.rand(50, 2)
    model(x).pow(2).mean().backward()
    stats = analyze_gradients(model)
    for name, param in model.named_parameters():
        assert stats[name]["norm"] == pytest.approx(param.grad.norm().item(), rel=1e-5)
        assert stats[name]["max"] == pytest.approx(param.grad.abs().max().item(), rel=1e-6)
        assert stats[name]["mean"] == pytest.approx(param.grad.mean().item(), rel=1e-5, abs=1e-9)
    by_type = analyze_gradients(model, group_by="type")
    assert set(by_type) == {"base_weight", "spline_weight", "spline_scaler"}
    grads = [model.layers[i].spline_weight.grad for i in range(2)]
    assert by_type["spline_weight"]["norm"] == pytest.approx(torch.cat([g.flatten() for g in grads]).norm().item(), rel=1e-5)
    assert set(analyze_gradients(model, group_by="layer")) == {"layers.0", "layers.1"}
    acts = activation_stats(model, x * 4 - 2)
    assert set(acts) == {"layers.0", "layers.1"} and 0 < acts["layers.0"]["out_of_grid"] < 1


def test_gradient_stats_callback_logs(tmp_path):
    L.seed_everything(0, verbose=False)
    module = KANRegressor(KAN([2, 3, 1], grid_size=3))
    stats = GradientStats(every_n_steps=2, group_by="type", activations=True)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="grad")
    trainer = _trainer(1, [stats], logger=logger, limit_train_batches=5, limit_val_batches=1)
    trainer.fit(module, datamodule=_toy(n_samples=200, batch_size=20))
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    logged = [r for r in rows if r.get("grad/spline_weight/norm")]
    assert [int(r["step"]) for r in logged] == [0, 2, 4]
    assert all(float(r["grad/total_norm"]) > 0 for r in logged)
    assert {"grad/base_weight/max", "grad/spline_scaler/mean", "act/layers.0/out_of_grid"} <= set(rows[0])
    assert stats.latest["grad/total_norm"] > 0


# ---------------------------------------------------------------------------------------------
# The three-stage experiment preset


def test_three_stage_experiment_runs(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=three_stage", "debug=fast", "trainer.enable_progress_bar=false",
        "three_stage.finetune_epoch=1", "three_stage.refine_epoch=2", "trainer.max_epochs=3",
    )
    assert cfg.model.grid_size == cfg.callbacks.grid_extension.grids[0] == 5
    assert cfg.optimizer._target_ == "torch.optim.LBFGS" and cfg.data.batch_size == "full"
    assert {"regularization_schedule", "entropy_schedule", "pruning", "grid_extension", "grid_update"} <= set(cfg.callbacks)
    record = train(cfg)
    metrics = record["metrics"]
    assert record["status"] == "completed" and math.isfinite(metrics["test/rmse"])
    assert metrics["grid/size"] == 10
    assert metrics["reg_weight/l1"] == 0 and metrics["reg_weight/entropy"] == 0
    assert metrics["prune/width_0"] == 2 and 1 <= metrics["prune/width_1"] <= 5
    assert record["config"]["callbacks"]["regularization_schedule"]["start"] == pytest.approx(1e-2)


# ---------------------------------------------------------------------------------------------
# DDP: grid extension and pruning replace parameters; the rebuilt DDP wrapper must all-reduce them


@pytest.mark.slow
def test_grid_extension_and_pruning_under_ddp_match_single_process(tmp_path):
    common = [
        "logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "data.n_samples=400", "data.batch_size=full", "trainer.max_epochs=8", "scheduler=cosine",
        "callbacks=[default,grid_extension,pruning]", "callbacks.grid_extension.grids=[5,10]",
        "callbacks.grid_extension.at_epochs=[3]", "callbacks.pruning.at_epoch=2", "callbacks.pruning.threshold=0.05",
    ]
    metrics = {name: run["metrics"] for name, run in ddp_and_single_runs(tmp_path, common).items()}
    assert metrics["ddp"]["grid/size"] == metrics["single"]["grid/size"] == 10
    assert metrics["ddp"]["prune/width_1"] == metrics["single"]["prune/width_1"] < 20
    for key in ("val/rmse", "test/rmse", "train/rmse"):
        assert metrics["ddp"][key] == pytest.approx(metrics["single"][key], rel=2e-4), key


def test_lbfgs_logs_the_loss_at_each_steps_starting_point():
    """LBFGS evaluates the closure many times per step; the logged train loss and RMSE are those
    of the first evaluation (the parameters the step starts from), computed here by hand."""
    L.seed_everything(0, verbose=False)
    data = _toy(n_samples=200)
    module = KANRegressor(KAN([2, 3, 1], grid_size=3), optimizer=LBFGS)
    expected, logged = [], []

    class ByHand(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with torch.no_grad():
                err = pl_module.model(batch[0]) - batch[1]
            expected.append((float(err.pow(2).mean()), float(err.pow(2).mean().sqrt())))

        def on_train_epoch_end(self, trainer, pl_module):
            metrics = trainer.callback_metrics
            logged.append((float(metrics["train/loss"]), float(metrics["train/rmse"])))

    evaluations = []
    module.model.register_forward_hook(lambda *args: evaluations.append(1))
    _trainer(3, [ByHand()], limit_val_batches=0).fit(module, datamodule=data)
    assert len(evaluations) > 3 * 5, "LBFGS evaluated the closure several times per step"
    flat = lambda pairs: [value for pair in pairs for value in pair]  # approx takes flat sequences
    assert flat(logged) == pytest.approx(flat(expected), rel=1e-6)


@pytest.mark.parametrize("precision, data_dtype", [("32-true", "float64"), ("64-true", "float64"), ("64-true", "float32")])
def test_network_trains_and_predicts_on_data_of_another_dtype(precision, data_dtype):
    """Every batch reaches the network in its own dtype; a float64 network on float64 data fits
    the function's float64 values (not their float32 roundings)."""
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=200, batch_size=50, dtype=data_dtype)
    module = KANRegressor(KAN([2, 3, 1], grid_size=3))
    trainer = _trainer(2, [], precision=precision)
    trainer.fit(module, datamodule=data)
    dtype = next(module.model.parameters()).dtype
    assert dtype == (torch.float64 if precision == "64-true" else torch.float32)
    (pred,) = trainer.predict(module, dataloaders=data.predict_dataloader())[:1]
    assert pred.dtype == dtype and torch.isfinite(pred).all()
    seen = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    trainer.validate(module, datamodule=data, verbose=False)
    assert set(seen) == {dtype}
