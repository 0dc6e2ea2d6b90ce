"""KAN figures (edges of a layer, the network diagram) and the EdgePlots callback."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kan_lightning.analysis import plots
from kan_lightning.lit.edge_plots import EdgePlots
from kan_lightning.nn import KAN, MLP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def model_and_x():
    torch.manual_seed(0)
    return KAN([2, 3, 1], grid_size=5), torch.rand(200, 2) * 2 - 1


def test_plot_layer_edges_one_axes_per_edge(model_and_x, tmp_path):
    model, x = model_and_x
    layer = model.layers[0]
    with torch.no_grad():
        layer.mask[2, 1] = 0.0
    fig = plots.plot_layer_edges(layer, x, input_names=["a", "b"], title="layer 0")
    assert len(fig.axes) == layer.out_features * layer.in_features == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "y0 <- a" and titles[-1] == "y2 <- b"
    assert any(t.get_text() == "pruned" for t in fig.axes[-1].texts)
    path = plots.save_figure(fig, tmp_path / "sub" / "layer0.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_plot_layer_edges_overlays_fits(model_and_x):
    from kan_lightning.analysis.formulas import SymbolicEdge

    model, x = model_and_x
    fit = SymbolicEdge("sin", 1.0, 0.0, 1.0, 0.0, 0.9, 2)
    fig = plots.plot_layer_edges(model.layers[1], model.layers[0](x), fits={(0, 2): fit})
    assert len(fig.axes) == 3
    assert [line.get_label() for line in fig.axes[2].get_lines()][-1] == "sin"


def test_plot_network_axes_importance_and_array(model_and_x):
    model, x = model_and_x
    fig = plots.plot_network(model, x, title="toy")
    n_edges = 2 * 3 + 3 * 1
    assert len(fig.axes) == 1 + n_edges  # the diagram plus one inset per edge
    with torch.no_grad():
        model.layers[0].mask[0, 0] = 0.0
    assert len(plots.plot_network(model, x).axes) == n_edges  # pruned edges are not drawn
    assert len(plots.plot_network(model, x, max_insets=4).axes) == 1 + 3  # layer 0 as lines
    scores = plots.edge_importance(model, x)
    assert [s.shape for s in scores] == [(3, 2), (1, 3)]
    assert all(np.isclose(s.max(), 1.0) and s.min() >= 0 for s in scores)
    assert scores[0][0, 0] == 0.0
    image = plots.figure_to_array(fig)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == (int(fig.get_figheight() * fig.dpi), int(fig.get_figwidth() * fig.dpi))
    assert image.min() < 100 < 200 < image.max()  # something drawn on white


def test_plot_network_float64_and_names(tmp_path):
    model = KAN([3, 1], grid_size=3).double()
    fig = plots.plot_network(model, np.random.default_rng(0).uniform(-1, 1, (50, 3)), input_names=["p", "q", "r"], output_names=["f"])
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"p", "q", "r", "f"} <= texts
    assert plots.save_figure(fig, tmp_path / "net.png").stat().st_size > 1000


def fake_trainer(tmp_path, model, x):
    trainer = SimpleNamespace(
        is_global_zero=True,
        datamodule=SimpleNamespace(x_train=x),
        loggers=[],
        default_root_dir=str(tmp_path),
        current_epoch=4,
        global_step=5,
        sanity_checking=False,
    )
    return trainer, SimpleNamespace(model=model)


def test_edge_plots_saves_pngs_on_schedule(tmp_path, model_and_x):
    model, x = model_and_x
    callback = EdgePlots(every_n_epochs=5, n_points=50)
    trainer, module = fake_trainer(tmp_path, model, x)
    callback.on_train_epoch_end(trainer, module)
    assert [p.name for p in callback.saved] == ["network_epoch004.png"]
    assert callback.saved[0].parent == tmp_path / "figures"
    trainer.current_epoch = 5
    callback.on_train_epoch_end(trainer, module)  # not a multiple of 5 epochs
    callback.on_fit_end(trainer, module)  # same step as the last figure: nothing new
    assert len(callback.saved) == 1
    trainer.global_step = 6
    callback.on_fit_end(trainer, module)
    assert callback.saved[-1].name == "network_final.png" and callback.saved[-1].stat().st_size > 1000
    with pytest.raises(ValueError):
        EdgePlots(every_n_epochs=-1)


def test_edge_plots_skips_models_without_kan_layers(tmp_path):
    callback = EdgePlots(every_n_epochs=1)
    trainer, module = fake_trainer(tmp_path, MLP([2, 4, 1]), torch.rand(10, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_train_epoch_end(trainer, module)
    assert callback.saved == [] and any("EdgePlots" in str(w.message) for w in caught)


def test_edge_plots_config_composes(make_cfg):
    cfg = make_cfg("callbacks=edge_plots")
    assert cfg.callbacks.edge_plots._target_ == "kan_lightning.lit.edge_plots.EdgePlots"
    assert "model_checkpoint" in cfg.callbacks and "grid_update" in cfg.callbacks  # on top of default
    assert cfg.callbacks.edge_plots.dirpath == f"{cfg.paths.output_dir}/figures"


def test_edge_plots_logs_images_to_tensorboard(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kan_lightning.commands.train import train

    cfg = make_cfg(
        "debug=fast",
        "trainer.enable_progress_bar=false",
        "logger=tensorboard",
        "callbacks=edge_plots",
        "callbacks.edge_plots.every_n_epochs=1",
        "callbacks.edge_plots.n_points=100",
        "model.layers_hidden=[2,3,1]",
    )
    record = train(cfg)
    assert record["status"] == "completed"
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == ["network_epoch000.png", "network_epoch001.png"]
    assert all((tmp_path / "figures" / name).stat().st_size > 1000 for name in figures)
    images = []
    for events in (tmp_path / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        if "kan/network" in acc.Tags()["images"]:
            images += acc.Images("kan/network")
    assert len(images) == 2
    assert images[0].encoded_image_string[:8] == PNG_MAGIC and images[0].width > 100
