"""Grid-extension numerics: refits that stay well posed where data are sparse (kan_lightning.nn.refit)
and hidden-grid margins that do not shrink with the grid."""

import lightning as L
import numpy as np
import pytest
import torch
from scipy.interpolate import make_lsq_spline

from kan_lightning.data.datamodule import SyntheticFunctionDataModule
from kan_lightning.lit.callbacks import GridExtension
from kan_lightning.lit.module import KANRegressor
from kan_lightning.nn import KAN, KANLayer
from kan_lightning.nn.refit import difference_matrix, penalized_fit_coefficients
from kan_lightning.nn.splines import bspline_basis, fit_coefficients, uniform_grid


def _greville(grid: torch.Tensor, k: int) -> torch.Tensor:
    """Greville abscissae: a linear function a x + b has B-spline coefficients a g_m + b."""
    n_bases = grid.shape[-1] - k - 1
    return torch.stack([grid[..., m + 1 : m + k + 1].mean(-1) for m in range(n_bases)], -1)


def test_difference_matrix():
    assert torch.equal(difference_matrix(4, 2), torch.tensor([[1.0, -2, 1, 0], [0, 1, -2, 1]], dtype=torch.float64))


def test_penalized_fit_continues_a_line_across_a_data_gap():
    # data on [-1, -0.2] only, grid on [-1, 1]: bases past -0.2 have no data under them
    k, grid = 3, uniform_grid(1, 20, 3, (-1.0, 1.0), dtype=torch.float64)
    x = torch.linspace(-1, -0.2, 200, dtype=torch.float64).unsqueeze(1)
    y = (0.7 * x - 0.3).unsqueeze(1)  # (N, out=1, in=1)
    line = 0.7 * _greville(grid, k)[0] - 0.3  # closed-form coefficients of the line
    smooth = penalized_fit_coefficients(x, y, grid, k, smoothness=1e-6)[0, 0]
    assert torch.allclose(smooth, line, atol=1e-8)
    plain = fit_coefficients(x, y, grid, k)[0, 0]  # the ridge pulls the unsupported ones to 0
    assert (plain - line).abs().max() > 0.3


def test_penalized_fit_continues_the_last_cubic_piece_past_the_data():
    # default order k + 1: a cubic is one polynomial piece, so it is recovered on the data-free
    # part of the grid too; second differences (order 2) continue it as a line instead
    k, grid = 3, uniform_grid(1, 30, 3, (-1.0, 1.0), dtype=torch.float64)
    x = torch.linspace(-1, 0.0, 300, dtype=torch.float64).unsqueeze(1)
    cubic = lambda t: 1 + t - 2 * t**2 + 0.5 * t**3
    y = cubic(x).unsqueeze(1)
    past = torch.linspace(0.1, 0.9, 9, dtype=torch.float64).unsqueeze(1)
    for order, tol in ((None, 1e-6), (2, None)):
        coef = penalized_fit_coefficients(x, y, grid, k, smoothness=1e-6, order=order)
        values = torch.einsum("nim,im->n", bspline_basis(past, grid, k), coef[0])
        error = (values - cubic(past[:, 0])).abs().max()
        assert error < tol if tol else error > 0.05, (order, float(error))


def test_penalized_fit_with_a_small_weight_is_scipys_least_squares_spline():
    k, grid = 3, uniform_grid(1, 12, 3, (-1.0, 1.0), dtype=torch.float64)
    x = torch.sort(torch.rand(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1, 0).values
    x[0], x[-1] = -1.0, 1.0 - 1e-12
    y = torch.exp(torch.sin(3 * x))
    ours = penalized_fit_coefficients(x, y.unsqueeze(1), grid, k, smoothness=1e-12)[0, 0]
    reference = make_lsq_spline(x[:, 0].numpy(), y[:, 0].numpy(), grid[0].numpy(), k).c
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-6, atol=1e-8)


def test_penalized_fit_is_a_least_squares_solution_of_the_stacked_system():
    # normal equations of ||B c - y||^2 + lam ||D c||^2 in float64, lam as documented
    k, grid = 2, uniform_grid(2, 6, 2, (-1.0, 1.0), dtype=torch.float64)
    x = torch.rand(80, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1.2 - 1
    y = torch.randn(80, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    coef = penalized_fit_coefficients(x, y, grid, k, smoothness=0.05, order=2)
    basis = bspline_basis(x, grid, k)
    d = difference_matrix(basis.shape[-1], 2)
    for i in range(2):
        b = basis[:, i]
        lam = 0.05 * (b * b).sum() / b.shape[-1]
        expected = torch.linalg.solve(b.T @ b + lam * d.T @ d, b.T @ y[:, :, i])  # (nb, out)
        assert torch.allclose(coef[:, i].T, expected, atol=1e-9)


def test_refits_return_the_same_bits_on_every_call():
    """Runs at one seed are reproducible: LAPACK's default CPU least-squares driver (gelsy) gave
    different last bits on ~3 in 10 identical calls, which L-BFGS amplified (test RMSE 1.1e-4 vs
    8.8e-5 for two identical runs)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 5, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.randn(1000, 1, 5, generator=gen, dtype=torch.float64)
    grid = uniform_grid(5, 100, 3, (-1.0, 1.0), dtype=torch.float64)
    for fit in (lambda: fit_coefficients(x, y, grid, 3), lambda: penalized_fit_coefficients(x, y, grid, 3, 1e-6)):
        first = fit()
        assert all(torch.equal(fit(), first) for _ in range(30))


def test_refit_smoothness_reaches_the_layers_refit():
    torch.manual_seed(0)
    layer = KANLayer(1, 1, grid_size=5).double()
    x = torch.linspace(-1, -0.2, 100, dtype=torch.float64).unsqueeze(1)
    plain, smooth = KANLayer(1, 1, grid_size=5).double(), KANLayer(1, 1, grid_size=5).double()
    plain.load_state_dict(layer.state_dict()), smooth.load_state_dict(layer.state_dict())
    plain.update_grid(x, grid_size=30, margin=20.0)  # a grid reaching far past the data
    smooth.update_grid(x, grid_size=30, margin=20.0, smoothness=1e-6)
    far = torch.tensor([[0.2]], dtype=torch.float64)
    assert not torch.allclose(plain.spline_values(far), smooth.spline_values(far))
    # the penalized refit itself, against the closed-form normal equations above
    target = layer.spline_values(x)
    expected = penalized_fit_coefficients(x, target, smooth.grid, smooth.spline_order, 1e-6)
    assert torch.allclose(smooth.spline_weight, expected, atol=1e-12)
    with pytest.raises(ValueError, match="smoothness"):
        layer.update_grid(x, smoothness=-1.0)


def test_grid_extension_updates_grids_during_each_stage():
    L.seed_everything(0, verbose=False)
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=300, split=(0.5, 0.2, 0.3), batch_size="full", seed=3)
    module = KANRegressor(KAN([2, 3, 1], grid_size=3), optimizer=lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe"))
    extension = GridExtension(grids=[3, 5], at_epochs=[4], stage_grid_updates=2, stage_grid_update_every=2)
    seen = []
    original = extension.update_grids
    extension.update_grids = lambda trainer, pl_module, batch=None: (seen.append(trainer.global_step), original(trainer, pl_module, batch))
    trainer = L.Trainer(
        max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true", callbacks=[extension],
    )
    trainer.fit(module, datamodule=data)
    assert seen == [0, 2, 4, 6]  # the first 2 * 2 steps of each stage
    with pytest.raises(ValueError, match="stage_grid_update_every"):
        GridExtension(grids=[3, 5], stage_grid_update_every=0)
    with pytest.raises(ValueError, match="refit_smoothness"):
        GridExtension(grids=[3, 5], refit_smoothness=float("nan"))


@pytest.mark.parametrize("fraction", [0.0, 0.05])
def test_grid_margin_range_widens_hidden_grids_by_a_fraction_of_their_range(fraction):
    L.seed_everything(0, verbose=False)
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=300, split=(0.5, 0.2, 0.3), batch_size="full", seed=3)
    # lr 0: the network does not move after the last switch, so its hidden activations are the ones
    # the switch saw
    module = KANRegressor(KAN([2, 3, 1], grid_size=3), optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    extension = GridExtension(grids=[3, 10, 40], at_epochs=[1, 2], grid_margin=0.5, grid_margin_range=fraction, keep_input_range=True)
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true", callbacks=[extension],
    )
    trainer.fit(module, datamodule=data)
    model = module.model
    with torch.no_grad():
        hidden = model.layers[0](data.x_train.to(torch.float64))
    lo, hi = hidden.min(0).values, hidden.max(0).values
    pad = (0.5 / 40 + fraction) * (hi - lo)  # half an interval of G = 40, plus the fraction of the range
    interior = model.layers[1].grid_interior()
    assert torch.allclose(interior[:, 0], lo - pad, rtol=0, atol=1e-12)
    assert torch.allclose(interior[:, -1], hi + pad, rtol=0, atol=1e-12)
    assert torch.allclose(model.layers[0].grid_interior()[:, [0, -1]], torch.tensor([[-1.0, 1.0]] * 2, dtype=torch.float64))


def test_presets_widen_the_toys_hidden_grids_and_keep_the_benchmarks_as_measured(make_cfg):
    from hydra.utils import instantiate

    toy = make_cfg("experiment=paper_grid_extension").callbacks.grid_extension
    assert (toy.grid_margin, toy.grid_margin_range, toy.refit_smoothness) == (0.5, 0.04, 1e-6)
    extension = instantiate(toy)
    assert (extension.grid_margin_range, extension.refit_smoothness) == (0.04, 1e-6)
    for preset in ("feynman", "special_functions"):
        ext = make_cfg(f"experiment={preset}").callbacks.grid_extension
        assert (ext.grid_margin, ext.grid_margin_range, ext.refit_smoothness) == (0.5, 0.0, 0.0), preset
