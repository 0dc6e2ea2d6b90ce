"""Grid update (adapt knots to data) and grid extension (refine G), keeping the functions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from conftest import kan64, layer64
from kan_lightning.nn import KAN, KANLayer


def dense_square(n: int = 101, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


def rel_change(new: torch.Tensor, old: torch.Tensor) -> float:
    return ((new - old).abs().max() / old.abs().max()).item()


# -- update_grid ---------------------------------------------------------------------------


def test_update_grid_keeps_function_and_covers_data() -> None:
    torch.manual_seed(0)
    layer = layer64(2, 3, grid_size=5, spline_order=3)
    x = torch.rand(1000, 2, dtype=torch.float64) * 2 - 0.5  # [-0.5, 1.5]: partly outside [-1, 1]
    before = layer(x).detach()
    layer.update_grid(x)
    after = layer(x).detach()
    change = rel_change(after, before)
    print(f"[update_grid] max change relative to max |output|: {change:.2e}")
    assert change < 1e-2
    assert not layer.uniform_grid
    assert layer.grid.shape == (2, 5 + 2 * 3 + 1)
    assert layer.spline_weight.shape == (3, 2, 5 + 3)

    interior = layer.grid_interior()
    assert interior.shape == (2, 6)
    assert torch.equal(interior[:, 0], x.min(0).values)
    assert (interior[:, -1] > x.max(0).values).all()
    assert (interior[:, -1] - x.max(0).values).abs().max().item() <= 1e-12
    assert (layer.grid.diff(dim=-1) > 0).all()
    # Every data point is inside the grid range, so the partition of unity holds there.
    assert torch.allclose(layer.bases(x).sum(-1), torch.ones_like(x), atol=1e-12, rtol=0)


def test_update_grid_eps_one_is_uniform_eps_zero_is_quantiles() -> None:
    torch.manual_seed(1)
    g = 5
    n = 1001  # the quantile positions (n - 1) * i / G are whole numbers
    x = torch.rand(n, 2, dtype=torch.float64) ** 3 * 2 - 0.7  # skewed data

    layer = layer64(2, 1, grid_size=g, spline_order=3)
    layer.update_grid(x, grid_eps=1.0)
    interior = layer.grid_interior()
    steps = interior.diff(dim=-1)
    expected_step = (x.max(0).values - x.min(0).values) / g
    assert (steps - expected_step.unsqueeze(1)).abs().max().item() <= 1e-12
    assert layer.uniform_grid
    # The whole knot vector continues with the same spacing.
    assert (layer.grid.diff(dim=-1) - expected_step.unsqueeze(1)).abs().max().item() <= 1e-12

    layer = layer64(2, 1, grid_size=g, spline_order=3)
    layer.update_grid(x, grid_eps=0.0)
    interior = layer.grid_interior().numpy()
    q = np.quantile(x.numpy(), np.linspace(0, 1, g + 1), axis=0).T  # (in, G + 1)
    np.testing.assert_allclose(interior, q, rtol=0, atol=1e-12)
    assert not layer.uniform_grid

    # The layer's own grid_eps is the default; the argument overrides it.
    layer = layer64(2, 1, grid_size=g, spline_order=3, grid_eps=1.0)
    layer.update_grid(x)
    assert layer.uniform_grid
    with pytest.raises(ValueError, match="1.5"):
        layer.update_grid(x, grid_eps=1.5)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_update_grid_any_order(k: int) -> None:
    torch.manual_seed(2)
    layer = layer64(2, 2, grid_size=6, spline_order=k)
    x = torch.rand(500, 2, dtype=torch.float64) * 1.6 - 0.9
    before = layer(x).detach()
    layer.update_grid(x)
    assert torch.isfinite(layer.grid).all() and torch.isfinite(layer.spline_weight).all()
    change = rel_change(layer(x).detach(), before)
    print(f"[update_grid] k={k}: relative change {change:.2e}")
    # Piecewise constants (k = 0) on shifted knots cannot be matched closely.
    assert change < (5e-2 if k == 0 else 1e-2)


@pytest.mark.parametrize("k", [0, 3])
def test_update_grid_range_contains_every_data_point(k: int) -> None:
    """Regression: with 0 < grid_eps < 1 the mixed end knots eps*lo + (1-eps)*lo used to round
    inwards, so that for k = 0 (no outer knots) the extreme data points had all-zero bases."""
    torch.manual_seed(10)
    x = torch.rand(200, 64, dtype=torch.float64) * 2 - 1
    layer = layer64(64, 1, grid_size=5, spline_order=k, grid_eps=0.02)
    layer.update_grid(x)
    outside = ((layer.bases(x).sum(-1) - 1).abs() > 1e-12).sum().item()
    interior = layer.grid_interior()
    low = (interior[:, 0] > x.min(0).values).sum().item()
    high = (interior[:, -1] <= x.max(0).values).sum().item()
    print(f"[update_grid] k={k}: {outside} data points without partition of unity, "
          f"{low} columns with t_k > min(x), {high} with t_(G+k) <= max(x)")
    assert outside == 0 and low == 0 and high == 0


def test_update_grid_constant_input_is_finite() -> None:
    layer = layer64(2, 1, grid_size=4)
    x = torch.stack([torch.full((50,), 0.3, dtype=torch.float64), torch.rand(50, dtype=torch.float64)], 1)
    layer.update_grid(x)
    assert torch.isfinite(layer.grid).all()
    assert (layer.grid.diff(dim=-1) > 0).all()
    assert torch.isfinite(layer(x)).all()


def test_kan_update_grid_covers_hidden_activations() -> None:
    torch.manual_seed(3)
    kan = kan64([2, 5, 1], grid_size=5)
    x = torch.rand(1000, 2, dtype=torch.float64) * 2 - 0.5
    before = kan(x).detach()
    hidden_before = kan.layers[0](x).detach()
    kan.update_grid(x)
    change = rel_change(kan(x).detach(), before)
    print(f"[KAN.update_grid] max change relative to max |output|: {change:.2e}")
    assert change < 1e-2
    hidden = kan.layers[0](x).detach()
    interior = kan.layers[1].grid_interior()
    # The second layer's grid spans its inputs as they were after the first layer's update.
    assert (interior[:, 0] <= hidden.min(0).values + 1e-12).all()
    assert (interior[:, -1] >= hidden.max(0).values - 1e-12).all()
    assert (hidden - hidden_before).abs().max().item() < 1e-2


def test_state_dict_round_trip_after_update_and_extend() -> None:
    torch.manual_seed(4)
    kan = kan64([2, 3, 1], grid_size=5)
    x = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    kan.update_grid(x)
    kan.extend_grid(8)
    fresh = kan64([2, 3, 1], grid_size=5)
    fresh.load_state_dict(kan.state_dict())
    assert fresh.layers[0].grid_size == 8
    assert fresh.layers[0].spline_weight.shape == (3, 2, 8 + 3)
    assert not fresh.layers[0].uniform_grid
    assert (fresh(x) - kan(x)).abs().max().item() <= 1e-12

    # A uniform grid stays on the uniform kernel after a round trip.
    uni = kan64([2, 3, 1], grid_size=5)
    uni.extend_grid(10)
    fresh = kan64([2, 3, 1], grid_size=5)
    fresh.load_state_dict(uni.state_dict())
    assert all(layer.uniform_grid for layer in fresh.layers)
    assert (fresh(x) - uni(x)).abs().max().item() <= 1e-12


# -- extend_grid ---------------------------------------------------------------------------


def _check_extended(kan: KAN, g: int, k: int = 3) -> None:
    assert kan.grid_size == g
    assert kan.config["grid_size"] == g
    for layer in kan.layers:
        assert layer.grid_size == g
        assert layer.spline_weight.shape == (layer.out_features, layer.in_features, g + k)
        assert layer.grid.shape == (layer.in_features, g + 2 * k + 1)


def test_kan_extend_grid_nested_preserves_output() -> None:
    torch.manual_seed(5)
    kan = kan64([2, 5, 1], grid_size=5)
    x = dense_square()
    hidden = kan.layers[0](x)
    assert hidden.abs().max().item() < 1.0  # precondition: hidden values inside layer 2's grid range
    before = kan(x).detach()
    for g in (10, 20):
        kan.extend_grid(g)
        _check_extended(kan, g)
        assert all(layer.uniform_grid for layer in kan.layers)
        err = rel_change(kan(x).detach(), before)
        print(f"[extend_grid] uniform 5 -> {g}: relative max change {err:.2e}")
        assert err < 1e-6


def test_kan_extend_grid_after_update_preserves_output() -> None:
    """O(1) random splines, grids first adapted to the data (non-uniform), then refined."""
    torch.manual_seed(6)
    kan = kan64([2, 5, 1], grid_size=5)
    with torch.no_grad():
        for layer in kan.layers:
            layer.spline_weight.normal_(0.0, 0.5)
    x = dense_square()
    kan.update_grid(x)
    before = kan(x).detach()
    for g in (10, 20):
        kan.extend_grid(g)
        _check_extended(kan, g)
        err = rel_change(kan(x).detach(), before)
        print(f"[extend_grid] adapted 5 -> {g}: relative max change {err:.2e}")
        assert err < 1e-6


def test_kan_extend_grid_non_nested() -> None:
    torch.manual_seed(7)
    kan = kan64([2, 5, 1], grid_size=5)
    x = dense_square()
    before = kan(x).detach()
    old_params = list(kan.parameters())  # kept alive, so ids cannot be reused
    kan.extend_grid(7)
    _check_extended(kan, 7)
    err = rel_change(kan(x).detach(), before)
    print(f"[extend_grid] 5 -> 7: relative max change {err:.2e}")
    assert err < 1e-2
    # New spline_weight Parameters are registered (optimizers must be rebuilt).
    new_spline = {id(layer.spline_weight) for layer in kan.layers}
    assert not new_spline & {id(p) for p in old_params}
    assert new_spline <= {id(p) for p in kan.parameters()}


@pytest.mark.parametrize("k", range(6))
def test_layer_extend_by_two_preserves_default_init(k: int) -> None:
    torch.manual_seed(8)
    layer = layer64(2, 3, grid_size=5, spline_order=k)
    x = dense_square(81)
    before = layer(x).detach()
    layer.extend_grid(10)
    assert layer.grid_size == 10 and layer.spline_weight.shape == (3, 2, 10 + k)
    err = rel_change(layer(x).detach(), before)
    print(f"[extend_grid] layer k={k} 5 -> 10 (default init): relative max change {err:.2e}")
    assert err < 1e-6


@pytest.mark.parametrize("k", range(6))
def test_layer_extend_by_two_preserves_random_splines(k: int) -> None:
    """O(1) random coefficients: the spline branch itself must survive the refinement.

    Regression: a fixed 1e-8 ridge in the refit used to shrink order-5 coefficients by ~2e-6."""
    torch.manual_seed(9)
    layer = layer64(2, 3, grid_size=5, spline_order=k)
    with torch.no_grad():
        layer.spline_weight.normal_()
    x = dense_square(81)
    before = layer.spline_values(x).detach()
    layer.extend_grid(10)
    err = rel_change(layer.spline_values(x).detach(), before)
    print(f"[extend_grid] layer k={k} 5 -> 10 (random splines): relative max change {err:.2e}")
    assert err < 1e-6


def test_kan_extend_grid_with_hidden_outside_grid_range() -> None:
    """Without data, extension keeps each layer's range, so hidden activations outside the next
    layer's grid are not preserved; with data (pykan's refine) the grids follow the inputs."""
    torch.manual_seed(1)
    kan = kan64([2, 5, 1], grid_size=5)
    with torch.no_grad():
        for layer in kan.layers:
            layer.spline_weight.normal_()
    x = dense_square()
    assert kan.layers[0](x).abs().max().item() > 1.5
    before = kan(x).detach()
    range_only = copy.deepcopy(kan)
    range_only.extend_grid(40)
    kan.extend_grid(40, x=x)
    err = rel_change(kan(x).detach(), before)
    err_range_only = rel_change(range_only(x).detach(), before)
    print(f"[extend_grid] hidden outside range 5 -> 40: fitted on data {err:.2e}, range only {err_range_only:.2e}")
    assert err < 1e-2 < 0.3 < err_range_only
    assert [layer.grid_size for layer in kan.layers] == [40, 40] and kan.config["grid_size"] == 40


def test_extend_grid_rejects_bad_size() -> None:
    layer = KANLayer(2, 1)
    with pytest.raises(ValueError, match="0"):
        layer.extend_grid(0)
    with pytest.raises(ValueError, match="-4"):
        KAN([2, 1]).extend_grid(-4)


# -- training end to end -------------------------------------------------------------------


def test_lbfgs_fits_exp_sin_with_grid_updates() -> None:
    torch.manual_seed(0)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2).unsqueeze(1)

    x_train = torch.rand(1000, 2) * 2 - 1
    y_train = f(x_train)
    x_test = torch.rand(1000, 2) * 2 - 1
    y_test = f(x_test)
    kan = KAN([2, 5, 1], grid_size=5, spline_order=3)

    def make_opt():
        return torch.optim.LBFGS(kan.parameters(), lr=1, max_iter=20, line_search_fn="strong_wolfe", history_size=10)

    opt = make_opt()
    for step in range(40):
        if step % 10 == 0 and step < 30:
            kan.update_grid(x_train)
            opt = make_opt()

        def closure():
            opt.zero_grad()
            loss = (kan(x_train) - y_train).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        rmse = (kan(x_test) - y_test).pow(2).mean().sqrt().item()
    print(f"[LBFGS] test RMSE {rmse:.2e}")
    assert rmse < 1e-2


def test_keep_input_range_keeps_the_first_grid_on_its_domain() -> None:
    """extend_grid(x, keep_input_range=True): the first layer's grid still spans [-1, 1] (the
    inputs' domain) though the sample covers less; hidden grids follow their activations; the
    network's function on the sample is kept as well as without the option."""
    torch.manual_seed(0)
    kan = KAN([2, 3, 1], grid_size=5).double()
    x = torch.rand(400, 2, dtype=torch.float64) * 1.4 - 0.5  # [-0.5, 0.9]
    before = kan(x)
    kept, shrunk = copy.deepcopy(kan), copy.deepcopy(kan)
    kept.extend_grid(10, x=x, keep_input_range=True)
    shrunk.extend_grid(10, x=x)
    ends = lambda layer: (layer.grid_interior()[:, 0], layer.grid_interior()[:, -1])
    lo, hi = ends(kept.layers[0])
    assert torch.equal(lo, torch.full((2,), -1.0, dtype=torch.float64))
    assert torch.allclose(hi, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-15)  # just above 1: half-open bases
    lo, hi = ends(shrunk.layers[0])
    assert torch.allclose(lo, x.min(0).values) and torch.allclose(hi, x.max(0).values)
    hidden = kan.layers[0](x)
    for model in (kept, shrunk):
        lo, hi = ends(model.layers[1])
        assert torch.allclose(lo, hidden.min(0).values, atol=1e-3) and torch.allclose(hi, hidden.max(0).values, atol=1e-3)
    for model in (kept, shrunk):
        rel = ((model(x) - before).norm() / before.norm()).item()
        assert rel < 1e-2, rel


def test_grid_margin_widens_the_fitted_range_by_whole_intervals() -> None:
    """update_grid(margin=m): the grid spans the data's range widened by m intervals per side;
    the functions on the data are kept as without a margin."""
    torch.manual_seed(0)
    layer = KANLayer(2, 3, grid_size=5).double()
    x = torch.rand(300, 2, dtype=torch.float64) * 1.4 - 0.5
    before = layer(x)
    layer.update_grid(x, grid_size=8, margin=0.5)
    lo, hi = x.min(0).values, x.max(0).values
    pad = 0.5 * (hi - lo) / 8
    interior = layer.grid_interior()
    assert torch.allclose(interior[:, 0], lo - pad, rtol=0, atol=1e-14)
    assert torch.allclose(interior[:, -1], hi + pad, rtol=0, atol=1e-14)
    assert ((layer(x) - before).norm() / before.norm()).item() < 1e-2
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        layer.update_grid(x, margin=-1.0)
