"""The hybrid KAN + attention model, alone and through train(cfg) and a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kan_lightning.config_errors import ConfigError
from kan_lightning.lit.checkpoint import model_from_checkpoint
from kan_lightning.nn import HybridKAN
from kan_lightning.commands.train import train


def test_shapes_gradients_and_grid_update():
    torch.manual_seed(0)
    model = HybridKAN([3, 8, 2], tokens=3, embed_dim=4, num_heads=2, grid_size=4)
    x = torch.rand(17, 3) * 2 - 1
    y = model(x)
    assert y.shape == (17, 2)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.encoder.layers_hidden == [3, 8, 12]
    before = model(x).detach()
    model.update_grid(x)
    assert torch.allclose(model(x), before, atol=5e-2)


def test_regularization_goes_through_the_encoder():
    model = HybridKAN([2, 4, 1], regularization={"l1": 1e-2})
    x = torch.rand(10, 2)
    out, scales = model.forward_with_edge_scales(x)
    assert torch.allclose(out, model(x), atol=1e-6)
    penalty, terms = model.regularization_loss(scales)
    assert set(terms) == {"l1"} and penalty > 0


@pytest.mark.parametrize("bad", [dict(embed_dim=6, num_heads=4), dict(tokens=0)])
def test_bad_shapes_are_named(bad):
    with pytest.raises(ValueError, match="|".join(bad)):
        HybridKAN([2, 4, 1], **bad)


def test_trains_from_config_and_reloads(make_cfg, tmp_path):
    record = train(make_cfg("debug=fast", "trainer.enable_progress_bar=false", "model=hybrid", "test_ckpt=last"))
    assert record["status"] == "completed"
    model = model_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(model, HybridKAN) and model(torch.zeros(3, 2)).shape == (3, 1)


@pytest.mark.parametrize(
    "widths,words",
    [("[3,16,1]", ["model.layers_hidden=[3, 16, 1]", "input dimension 2"]),
     ("[auto,16,2]", ["model.layers_hidden=[2, 16, 2]", "output dimension 1"])],
)
def test_widths_that_do_not_fit_the_data_stop_before_any_work(make_cfg, tmp_path, widths, words):
    cfg = make_cfg("debug=fast", "trainer.enable_progress_bar=false", "model=hybrid", f"model.layers_hidden={widths}")
    with pytest.raises(ConfigError) as info:
        train(cfg)
    for word in words:
        assert word in str(info.value)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"ConfigError: {info.value}"
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


@pytest.mark.slow
def test_kan_train_exits_2_on_hybrid_widths_that_do_not_fit(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kan_lightning.commands.train", "debug=fast", "logger=none", "model=hybrid",
         "model.layers_hidden=[3,16,1]", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: model.layers_hidden=[3, 16, 1] does not fit the data" in result.stderr
    assert "Traceback" not in result.stderr
