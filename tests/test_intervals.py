"""Interval bounds of KAN activations (kan_lightning.nn.intervals) against dense sampling, and
grids sized by them (hidden_range="interval")."""

import pytest
import torch

from kan_lightning.nn import KAN
from kan_lightning.nn.intervals import activation_bounds, layer_bounds, network_bounds


def _dense_box(lo, hi, n, seed=0):
    """Random points of the box plus its corners and a fine line along every edge."""
    g = torch.Generator().manual_seed(seed)
    d = lo.numel()
    inside = lo + (hi - lo) * torch.rand(n, d, generator=g, dtype=torch.float64)
    corners = torch.cartesian_prod(*[torch.stack([lo[i], hi[i]]) for i in range(d)]).reshape(-1, d)
    lines = []
    for i in range(d):
        line = lo + (hi - lo) * torch.rand(2000, d, generator=g, dtype=torch.float64)
        line[:, i] = torch.linspace(float(lo[i]), float(hi[i]), 2000, dtype=torch.float64)
        lines.append(line)
    return torch.cat([inside, corners, *lines])


def _shaken(model, seed):
    """Large random coefficients and base weights, so the splines are far from flat."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_weight.copy_(torch.randn(layer.spline_weight.shape, generator=g, dtype=torch.float64))
            layer.base_weight.copy_(torch.randn(layer.base_weight.shape, generator=g, dtype=torch.float64))
    return model


@pytest.mark.parametrize("extrapolate", ["bases", "linear"])
@pytest.mark.parametrize("activation", ["silu", "gelu", "tanh"])
def test_every_sampled_activation_lies_inside_the_bounds(extrapolate, activation):
    torch.manual_seed(0)
    model = _shaken(KAN([2, 5, 3, 1], grid_size=6, base_activation=activation, extrapolate=extrapolate).double(), 1)
    # grids fitted to a sample of a smaller box, so the wider box below reaches past them
    model.update_grid(torch.rand(300, 2, dtype=torch.float64) * 1.2 - 0.6)
    lo, hi = torch.tensor([-1.0, -0.5], dtype=torch.float64), torch.tensor([1.0, 1.5], dtype=torch.float64)
    bounds = network_bounds(model, lo, hi)
    x = _dense_box(lo, hi, 20000)
    values = [x] + [phi.sum(-1) for _, phi in model.activations(x)]
    for l, (v, (b_lo, b_hi)) in enumerate(zip(values, bounds)):
        tol = 1e-9 * (1 + b_hi.abs().max())
        assert (v >= b_lo - tol).all() and (v <= b_hi + tol).all(), l
    assert torch.allclose(values[-1], model(x))


def test_bounds_in_closed_form():
    """Constant coefficients c inside the grid: the spline is exactly c (partition of unity);
    past the outer knots it is 0; silu's minimum -0.2785 at x = -1.2785 counts when inside."""
    layer = KAN([2, 1], grid_size=4).double().layers[0]
    with torch.no_grad():
        layer.spline_weight.fill_(0.3)
        layer.spline_scaler.fill_(1.0)
        layer.base_weight.zero_()
    lo, hi = layer_bounds(layer, torch.tensor([-0.5, -0.9]), torch.tensor([0.5, 0.2]))
    assert (lo.item(), hi.item()) == pytest.approx((0.6, 0.6))
    lo, hi = layer_bounds(layer, torch.tensor([5.0, 5.0]), torch.tensor([6.0, 6.0]))
    assert (lo.item(), hi.item()) == (0.0, 0.0)
    lo, hi = layer_bounds(layer, torch.tensor([0.0, 0.0]), torch.tensor([1.2, 1.2]))  # past the end
    assert (lo.item(), hi.item()) == pytest.approx((0.0, 0.6))
    s_lo, s_hi = activation_bounds(torch.nn.SiLU(), torch.tensor([-3.0, 0.0]), torch.tensor([1.0, 2.0]))
    silu = torch.nn.functional.silu
    assert s_lo.tolist() == pytest.approx([-0.278464542761074, 0.0])
    assert s_hi.tolist() == pytest.approx([silu(torch.tensor(1.0)).item(), silu(torch.tensor(2.0)).item()])
    with pytest.raises(ValueError, match="known extrema"):
        activation_bounds(torch.nn.Softplus(), torch.zeros(1), torch.ones(1))


def test_interval_grids_hold_every_input_of_the_box():
    """After update_grid(hidden_range="interval") no input from the first grid's range leaves a
    hidden grid; with the margin heuristic some do (the case the bounds are for)."""
    torch.manual_seed(3)
    x_train = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    x_dense = _dense_box(-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 20000, seed=4)
    outside = {}
    for mode in ("margin", "interval"):
        model = _shaken(KAN([2, 4, 3, 1], grid_size=5).double(), 2)
        model.update_grid(x_train, grid_size=10, keep_input_range=True, hidden_range=mode)
        count = 0
        for layer, (inputs, _) in zip(model.layers, model.activations(x_dense)):
            interior = layer.grid_interior()
            count += int(((inputs < interior[:, 0]) | (inputs > interior[:, -1])).sum())
        outside[mode] = count
    assert outside["interval"] == 0 and outside["margin"] > 0
    with pytest.raises(ValueError, match="hidden_range"):
        model.update_grid(x_train, hidden_range="quantile")


def test_deep_interval_grids_stop_at_a_few_spans_of_the_data():
    """Depth 6: the bounds of the last hidden layers run to thousands of data spans; the grids
    stop INTERVAL_MAX_SPANS spans past the data (a grid 10^16 wide once made a refit NaN)."""
    from kan_lightning.nn.network import INTERVAL_MAX_SPANS

    torch.manual_seed(5)
    x = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    model = _shaken(KAN([2, 5, 5, 5, 5, 5, 1], grid_size=5).double(), 6)
    model.update_grid(x, grid_size=10, keep_input_range=True, hidden_range="interval")
    interior = model.layers[0].grid_interior()
    bounds = network_bounds(model, interior[:, 0], interior[:, -1])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    loosest = 0.0
    with torch.no_grad():
        activations = model.activations(x)
    for i, (inputs, _) in enumerate(activations):
        if i == 0:
            continue
        lo, hi = inputs.amin(0), inputs.amax(0)
        span = hi - lo
        grid = model.layers[i].grid_interior()
        # (the refit of the layers before moves the activations by rounding only)
        assert (grid[:, 0] >= lo - INTERVAL_MAX_SPANS * span - 1e-6 * span).all()
        assert (grid[:, -1] <= hi + INTERVAL_MAX_SPANS * span + 1e-6 * span).all()
        loosest = max(loosest, float(((bounds[i][1] - hi) / span).max()))
    assert loosest > 100  # the case needs the cap


def test_grid_extension_with_interval_ranges(tmp_path):
    """Through a real Trainer: after each switch every hidden grid holds the whole input box."""
    import lightning as L

    from kan_lightning.data import SyntheticFunctionDataModule
    from kan_lightning.lit import GridExtension, KANRegressor

    with pytest.raises(ValueError, match="hidden_range"):
        GridExtension(grids=[3, 5], hidden_range="quantile")
    L.seed_everything(0, verbose=False)
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=200, split=(0.6, 0.2, 0.2), batch_size="full", seed=1)
    module = KANRegressor(KAN([2, 3, 1], grid_size=3), optimizer=lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe"))
    extension = GridExtension(grids=[3, 6, 12], at_epochs=[2, 4], keep_input_range=True, hidden_range="interval")
    trainer = L.Trainer(
        max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true", callbacks=[extension],
    )
    trainer.fit(module, datamodule=data)
    model = module.model
    assert model.grid_size == 12
    box = _dense_box(-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 5000)
    (_, _), (hidden, _) = model.activations(box)
    interior = model.layers[1].grid_interior().detach()
    # the grid was sized at the switch; training since may move the activations a little
    width = interior[:, -1] - interior[:, 0]
    assert (hidden >= interior[:, 0] - 0.05 * width).all() and (hidden <= interior[:, -1] + 0.05 * width).all()
