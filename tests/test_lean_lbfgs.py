"""The lean LBFGS (kan_lightning.lit.lean_lbfgs) takes exactly torch.optim.LBFGS's steps: the same
parameters, losses and optimizer state bit for bit, alone and under a Lightning Trainer."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import equal_nested
from kan_lightning.data import SyntheticFunctionDataModule
from kan_lightning.lit import KANRegressor
from kan_lightning.lit import module as lit_module
from kan_lightning.lit.lean_lbfgs import LBFGS as LeanLBFGS
from kan_lightning.lit.lean_lbfgs import lean_optimizer
from kan_lightning.nn import KAN

SETTINGS = dict(lr=1.0, max_iter=8, history_size=6, line_search_fn="strong_wolfe", tolerance_grad=1e-32, tolerance_change=1e-32)


def _steps(optimizer_class, dtype, steps=6, **settings):
    """``steps`` steps of ``optimizer_class`` on a KAN [2, 3, 1] (adapted grid) from a fixed start:
    the parameters, the losses and the optimizer."""
    torch.manual_seed(0)
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2)
    model = KAN([2, 3, 1], grid_size=5).double()
    model.update_grid(x, grid_eps=0.5, margin=0.5)
    model, x, y = model.to(dtype), x.to(dtype), y.to(dtype)
    optimizer = optimizer_class(model.parameters(), **{**SETTINGS, **settings})

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(steps)]
    return [p.detach().clone() for p in model.parameters()], losses, optimizer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("line_search", ["strong_wolfe", None])
def test_lean_lbfgs_steps_are_torchs_bit_for_bit(dtype, line_search):
    # 6 steps of up to 8 iterations with 6 pairs kept: the history fills and drops pairs
    params, losses, optimizer = _steps(LeanLBFGS, dtype, line_search_fn=line_search)
    ref_params, ref_losses, ref_optimizer = _steps(torch.optim.LBFGS, dtype, line_search_fn=line_search)
    assert losses == ref_losses and losses[-1] < 0.1 * losses[0]
    assert all(torch.equal(p, q) for p, q in zip(params, ref_params))
    state, ref_state = optimizer.state_dict()["state"][0], ref_optimizer.state_dict()["state"][0]
    assert len(ref_state["old_dirs"]) == 6 and ref_state["n_iter"] > 6
    assert equal_nested(state, ref_state)  # al (0-dim tensors), ro, H_diag, d, t, counters


def test_direction_without_pairs_is_the_scaled_gradient():
    # (torch's step with no pair stored yet, e.g. when the first ones fail its ys > 1e-10 test)
    g, al = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), [None] * 3
    assert torch.equal(LeanLBFGS._two_loop(None, g, [], [], [], torch.tensor(0.3, dtype=torch.float64), al), g.neg() * 0.3)
    assert al == [None] * 3


def test_lean_optimizer_replaces_only_a_fresh_plain_lbfgs():
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    lean = lean_optimizer(torch.optim.LBFGS(params, lr=0.5, history_size=7, line_search_fn="strong_wolfe"))
    assert type(lean) is LeanLBFGS and lean.defaults["history_size"] == 7 and lean.defaults["lr"] == 0.5
    assert lean.param_groups[0]["params"][0] is params[0]
    adam = torch.optim.Adam(params)
    assert lean_optimizer(adam) is adam


def _fit(tmp_path):
    L.seed_everything(3, verbose=False)
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=80, split=(0.5, 0.25, 0.25), batch_size="full")
    lbfgs = functools.partial(torch.optim.LBFGS, lr=1.0, max_iter=5, history_size=4, line_search_fn="strong_wolfe")
    module = KANRegressor(KAN([2, 3, 1], grid_size=5), optimizer=lbfgs)
    trainer = L.Trainer(
        max_epochs=4, precision="64-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return module, trainer.optimizers[0]


def test_trainer_with_lean_lbfgs_matches_torchs(tmp_path, monkeypatch):
    module, optimizer = _fit(tmp_path / "lean")
    monkeypatch.setattr(lit_module, "lean_optimizer", lambda optimizer: optimizer)
    ref_module, ref_optimizer = _fit(tmp_path / "ref")
    assert type(optimizer) is LeanLBFGS and type(ref_optimizer) is torch.optim.LBFGS
    assert type(optimizer).__name__ == "LBFGS"  # (logged as lr-LBFGS, as before)
    for p, q in zip(module.parameters(), ref_module.parameters()):
        assert torch.equal(p, q)
    assert equal_nested(optimizer.state_dict(), ref_optimizer.state_dict())
