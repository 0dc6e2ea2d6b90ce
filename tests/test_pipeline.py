"""One pipeline for both ways in: KANTrainer composes kan-train's config, trains through the same
builder, and writes the checkpoint format kan-train writes (and load_model reads both)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF_DIR
from kan_lightning import KAN, KANTrainer, create_dataset
from kan_lightning.api import NormalizedModel, load_model
from kan_lightning.data.normalization import denormalize_x, denormalize_y, fit_normalization, normalize_x, normalize_y
from kan_lightning.lit.checkpoint import model_from_checkpoint, read_checkpoint
from kan_lightning.nn import HybridKAN
from kan_lightning.commands.train import train


def _xy(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = create_dataset(lambda x: torch.sin(2 * x[:, 0]) + x[:, 1] ** 2, n, 2, x_range=(-2, 2), seed=seed)
    return x, 3 * y + 5


def test_normalization_maps_the_range_and_round_trips():
    x = torch.tensor([[0.0, 10.0], [4.0, 30.0], [2.0, 20.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [3.0], [5.0]], dtype=torch.float64)
    norm = fit_normalization(x, y, normalize_inputs=True, normalize_targets=True)
    torch.testing.assert_close(normalize_x(x, norm), torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    # population std of (1, 3, 5) is sqrt(8 / 3)
    torch.testing.assert_close(normalize_y(y, norm), (y - 3) / math.sqrt(8 / 3))
    torch.testing.assert_close(denormalize_x(normalize_x(x, norm), norm), x)
    torch.testing.assert_close(denormalize_y(normalize_y(y, norm), norm), y)


def test_optimizer_and_schedule_come_from_the_conf_files():
    """The API's optimizer settings are those of conf/optimizer/<name>.yaml, read here directly."""
    sgd = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optimizer" / "sgd.yaml"))
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=3), optimizer_name="SGD", lr=0.05)
    optimizer = trainer.module.optimizer_factory(trainer.model.parameters())
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["momentum"] == sgd["momentum"] and optimizer.defaults["lr"] == 0.05
    x, y = _xy()
    trainer.train(x[:90], y[:90], x[90:], y[90:], epochs=2, batch_size=30, verbose=False, lr_schedule="cosine")
    cosine = OmegaConf.load(CONF_DIR / "scheduler" / "cosine.yaml")
    scheduler = trainer.trainer.lr_scheduler_configs[0].scheduler
    assert type(scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert scheduler.T_max == 2 and scheduler.eta_min == cosine.factory.eta_min


def test_composing_leaves_a_running_hydra_alone():
    """Inside an initialized Hydra (a user's own Hydra app), composing leaves it usable."""
    from kan_lightning.compose import compose_config

    GlobalHydra.instance().clear()
    with initialize_config_module("kan_lightning.conf", version_base="1.3"):
        assert compose_config(["optimizer=adamw", "seed=1234567"]).seed == 1234567  # not composed before
        KANTrainer(KAN([2, 1]), optimizer_name="AdamW")
        assert GlobalHydra.instance().is_initialized()
        assert compose("train", overrides=["optimizer=sgd"]).optimizer._target_ == "torch.optim.SGD"


def test_metrics_against_numpy():
    torch.manual_seed(0)
    x, y = _xy()
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=3), lr=0.02)
    trainer.train(x, y, epochs=2, batch_size=40, verbose=False, normalize_targets=True)
    pred, target = trainer.predict(x).double().numpy(), y.double().numpy()
    mse = float(np.mean((pred - target) ** 2))
    expected = {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(pred - target))),
                "r2": 1 - mse / float(np.var(target))}
    assert trainer.metrics(x, y) == pytest.approx(expected, rel=1e-9)


def test_api_file_is_a_kan_train_checkpoint(tmp_path):
    torch.manual_seed(0)
    x, y = _xy()
    trainer = KANTrainer(KAN([2, 4, 1], grid_size=4), optimizer_name="AdamW", lr=0.01, weight_decay=0.001)
    trainer.train(x[:90], y[:90], x[90:], y[90:], epochs=2, batch_size=30, verbose=False, normalize_targets=True)
    path = trainer.save(tmp_path / "model.ckpt")
    checkpoint = read_checkpoint(path)  # what kan-eval, kan-symbolic and resuming read
    run_config = checkpoint["kan_lightning"]["run_config"]
    adamw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "optimizer" / "adamw.yaml"))
    assert run_config["optimizer"] == {**adamw, "lr": 0.01, "weight_decay": 0.001}
    assert run_config["model"] is None and run_config["data"] is None  # objects, not config
    network = model_from_checkpoint(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(network(x), trainer.model(x), rtol=0, atol=0)
    # the weights are stored once, shared by both views of the file
    assert path.stat().st_size < 1.5 * sum(t.numel() * t.element_size() for t in checkpoint["state_dict"].values()) + 200_000


def test_load_model_reads_a_kan_train_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("debug=fast", "trainer.enable_progress_bar=false", "data.normalize_inputs=true",
                   "data.normalize_targets=true", "data.function=polynomial", "test=false")
    record = train(cfg)
    model = load_model(record["best"]["path"])
    assert isinstance(model, NormalizedModel)
    from kan_lightning.lit.checkpoint import datamodule_from_checkpoint

    checkpoint = read_checkpoint(record["best"]["path"])
    data = datamodule_from_checkpoint(checkpoint)
    network = model_from_checkpoint(checkpoint).eval()
    raw_x = denormalize_x(data.x_test, data.normalization)
    with torch.no_grad():  # raw inputs in, raw outputs out, by the data module's own maps
        torch.testing.assert_close(model(raw_x), data.denormalize_y(network(data.x_test)), rtol=1e-5, atol=1e-6)


def test_hybrid_kan_saved_and_loaded(tmp_path):
    """The API reads the same model registry as the checkpoints (HybridKAN included)."""
    torch.manual_seed(0)
    model = HybridKAN([2, 8, 1], tokens=2, embed_dim=4, num_heads=1, grid_size=3)
    trainer = KANTrainer(model, lr=0.01)
    x, y = _xy(60)
    trainer.train(x, y, epochs=1, batch_size=30, verbose=False)
    loaded = load_model(trainer.save(tmp_path / "hybrid.ckpt"))
    assert type(loaded) is HybridKAN
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trainer.predict(x), rtol=0, atol=0)


def test_best_weights_restored_into_the_network_or_rebuilt(tmp_path):
    """The best checkpoint goes into the current network when it fits (the object is kept), and
    is rebuilt as saved when a pruning callback has replaced the network since."""
    from kan_lightning.lit import KANRegressor
    from kan_lightning.lit.checkpoint import model_file_record, restore_network

    torch.manual_seed(0)
    best = KAN([2, 6, 1], grid_size=3)
    path = tmp_path / "best.ckpt"
    torch.save(model_file_record(KANRegressor(best)), path)
    x = torch.rand(50, 2) * 2 - 1
    same_shape = KANRegressor(KAN([2, 6, 1], grid_size=3))
    network = same_shape.model
    restore_network(same_shape, path)
    assert same_shape.model is network
    pruned = KANRegressor(best.prune(x, threshold=10.0))  # every hidden node below the threshold
    assert pruned.model.layers_hidden != [2, 6, 1]
    restore_network(pruned, path)
    assert pruned.model.layers_hidden == [2, 6, 1]
    with torch.no_grad():
        for module in (same_shape, pruned):
            torch.testing.assert_close(module.model(x), best(x), rtol=0, atol=0)


def test_a_file_of_the_first_format_still_loads(tmp_path):
    """Files saved before the model file became a checkpoint (version 1: plain keys only, the
    class named alone) still load."""
    torch.manual_seed(0)
    kan = KAN([2, 3, 1], grid_size=4)
    record = {"format": "kan_lightning.api.model", "version": 1, "model_class": "KAN", "model_config": dict(kan.config),
              "model_state_dict": kan.state_dict(), "normalization": None, "training_history": {"train_loss": [1.0]},
              "trainer_config": {"optimizer_name": "Adam", "lr": None, "weight_decay": 0.0, "optimizer_kwargs": {}}}
    torch.save(record, tmp_path / "v1.pth")
    x = torch.rand(20, 2) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "v1.pth")(x), kan(x), rtol=0, atol=0)
    assert KANTrainer.load(tmp_path / "v1.pth").history == {"train_loss": [1.0]}


def test_grid_update_arguments_reach_the_callback():
    from kan_lightning.lit import GridUpdate

    x, y = _xy(60)
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=3))
    trainer.train(x, y, epochs=1, batch_size=30, verbose=False, grid_update={"every_n_steps": 1, "stop_step": 3})
    (update,) = [c for c in trainer.trainer.callbacks if isinstance(c, GridUpdate)]
    assert (update.every_n_steps, update.stop_step) == (1, 3)
    trainer.train(x, y, epochs=1, batch_size=30, verbose=False, grid_update=False)
    assert not [c for c in trainer.trainer.callbacks if isinstance(c, GridUpdate)]
