"""The hybrid KAN + attention model, alone and through train(cfg) and a checkpoint."""

from __future__ import annotations

import pytest
import torch

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
