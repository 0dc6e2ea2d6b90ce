"""MultiStart under a real Lightning trainer: off changes nothing, a stationary start is escaped,
runs repeat bit for bit, bad options are named."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from kan_lightning.config_errors import ConfigError, instantiate_node
from kan_lightning.data.datamodule import SyntheticFunctionDataModule
from kan_lightning.lit import KANRegressor
from kan_lightning.lit.callbacks import MultiStart
from kan_lightning.lit.module import objective
from kan_lightning.nn import KAN
from kan_lightning.stacked.plan import why_not_stackable


def _data():
    return SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=300, split=(0.5, 0.2, 0.3), batch_size="full", seed=3)


def _fit(callbacks, zero_start=False, epochs=6, start=None):
    """A KAN [2, 1, 1] fitted by full-batch LBFGS; ``zero_start``: every parameter 0, a stationary
    point (the hidden value is 0 everywhere and the output edge has zero slope there); ``start``:
    these parameters."""
    L.seed_everything(1, verbose=False)
    data = _data()
    model = KAN([2, 1, 1], grid_size=3)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if zero_start:
                p.zero_()
            elif start is not None:
                p.copy_(start[i])
    module = KANRegressor(model, optimizer=lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe", history_size=20))
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true", callbacks=callbacks,
    )
    trainer.fit(module, datamodule=data)
    with torch.no_grad():
        loss = float(objective(module.model, data.x_train.double(), data.y_train.double())[0])
    return [p.detach().clone() for p in module.model.parameters()], loss


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


def test_zero_start_is_stationary():
    model = KAN([2, 1, 1], grid_size=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = _data()
    data.setup("fit")
    objective(model, data.x_train.double(), data.y_train.double())[0].backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_off_changes_nothing():
    plain, plain_loss = _fit([])
    off, off_loss = _fit([MultiStart(restarts=0)])
    assert _same(plain, off) and plain_loss == off_loss


def test_a_winning_own_start_changes_nothing():
    trained, _ = _fit([])  # a start far better than any fresh draw after 3 steps
    plain, plain_loss = _fit([], start=trained)
    multi = MultiStart(restarts=2, steps=3)
    params, loss = _fit([multi], start=trained)
    assert multi.report()["chosen"] == 0
    assert _same(plain, params) and plain_loss == loss


def test_stationary_start_is_escaped_and_repeats():
    stuck_params, stuck = _fit([], zero_start=True)
    assert all(float(p.abs().max()) == 0.0 for p in stuck_params)  # LBFGS cannot leave it
    first = MultiStart(restarts=2, steps=3)
    params, loss = _fit([first], zero_start=True)
    record = first.report()
    assert record["chosen"] != 0 and record["seeds"][0] is None and len(record["objective"]) == 3
    assert record["objective"][0] == pytest.approx(stuck)  # the own start stays where it is
    assert loss < 1e-2 * stuck
    again = MultiStart(restarts=2, steps=3)
    params_again, loss_again = _fit([again], zero_start=True)
    assert _same(params, params_again) and loss == loss_again and again.report() == record
    resumed = MultiStart(restarts=2, steps=3)
    resumed.load_state_dict(first.state_dict())  # (from a checkpoint: the choice is not made again)
    assert resumed.report() == record


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="restarts must be an integer >= 0, got -1"):
        MultiStart(restarts=-1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        MultiStart(restarts=2, steps=0)
    node = OmegaConf.create({"_target_": "kan_lightning.lit.callbacks.MultiStart", "restarts": -2})
    with pytest.raises(ConfigError, match=r"callbacks.multi_start.restarts=-2"):
        instantiate_node(node, "callbacks.multi_start")


def test_stacked_launcher_runs_restarts_alone():
    cfg = {
        "model": {"_target_": "kan_lightning.nn.KAN"},
        "optimizer": {"_target_": "torch.optim.LBFGS"},
        "trainer": {"max_epochs": 3, "check_val_every_n_epoch": 10},
        "data": {"_target_": "kan_lightning.data.SyntheticFunctionDataModule"},
    }
    node = {"_target_": "kan_lightning.lit.callbacks.MultiStart", "steps": 20}
    assert why_not_stackable({**cfg, "callbacks": {"multi_start": {**node, "restarts": 0}}}) is None
    reason = why_not_stackable({**cfg, "callbacks": {"multi_start": {**node, "restarts": 4}}})
    assert "callbacks.multi_start.restarts=4" in reason
