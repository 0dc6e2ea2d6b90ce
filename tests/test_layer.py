"""KANLayer against an independent per-edge computation, gradients, validation, tracing."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import layer64
from kan_lightning.nn import KAN, KANLayer


scipy_interpolate = pytest.importorskip("scipy.interpolate")
BSpline = scipy_interpolate.BSpline


def _randomize(layer: KANLayer, seed: int = 0) -> KANLayer:
    """O(1) random parameters so that every branch of the layer matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.base_weight, layer.spline_weight, layer.spline_scaler):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def _away_from_knots(x: torch.Tensor, grid: torch.Tensor, gap: float = 1e-3) -> torch.Tensor:
    """Move inputs that lie within ``gap`` of a knot of their row off it (for finite differences)."""
    x = x.clone()
    for i in range(x.shape[1]):
        for _ in range(5):
            d = (x[:, i : i + 1] - grid[i]).abs().min(dim=1).values
            close = d < gap
            if not close.any():
                break
            x[close, i] += 3 * gap
    return x


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_forward_matches_per_edge_scipy(k: int) -> None:
    torch.manual_seed(0)
    layer = _randomize(layer64(3, 4, grid_size=5, spline_order=k, grid_range=(-1.5, 2.0)))
    x = torch.rand(200, 3, dtype=torch.float64) * 3.5 - 1.5  # inside the grid range
    out = layer(x).detach().numpy()

    xn = x.numpy()
    grid = layer.grid.numpy()
    wb = layer.base_weight.detach().numpy()
    ws = layer.spline_weight.detach().numpy()
    sc = layer.spline_scaler.detach().numpy()
    expected = np.zeros((x.shape[0], 4))
    for j in range(4):
        for i in range(3):
            spline = BSpline(grid[i], ws[j, i], k, extrapolate=False)(xn[:, i])
            expected[:, j] += wb[j, i] * _silu(xn[:, i]) + sc[j, i] * spline
    assert np.isfinite(expected).all()
    err = np.abs(out - expected).max()
    print(f"[layer vs scipy] k={k}: max abs error {err:.2e}")
    assert err <= 1e-12


def _pair(k: int = 3, grid_size: int = 5) -> tuple[KANLayer, KANLayer]:
    torch.manual_seed(1)
    fast = _randomize(layer64(3, 2, grid_size=grid_size, spline_order=k, basis="fast"), seed=1)
    ref = layer64(3, 2, grid_size=grid_size, spline_order=k, basis="reference")
    ref.load_state_dict(fast.state_dict())
    return fast, ref


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_reference_and_fast_agree(k: int) -> None:
    fast, ref = _pair(k)
    assert fast.uniform_grid
    x = torch.rand(500, 3, dtype=torch.float64) * 4 - 2  # inside and outside the grid range
    assert (fast(x) - ref(x)).abs().max().item() <= 1e-12

    # After update_grid the grid is non-uniform and the fast layer uses the general kernel.
    data = torch.rand(300, 3, dtype=torch.float64) ** 2 * 2 - 0.5
    fast.update_grid(data)
    assert not fast.uniform_grid
    ref = layer64(3, 2, grid_size=5, spline_order=k, basis="reference")
    ref.load_state_dict(fast.state_dict())
    assert torch.equal(ref.grid, fast.grid)
    for y in (x, data):
        assert (fast(y) - ref(y)).abs().max().item() <= 1e-12


def test_double_after_float32_construction_is_exact() -> None:
    """Regression: .double() of a float32-built layer kept float32-rounded knots with
    uniform_grid=True, so the closed-form kernel and the knots disagreed by ~3e-7."""
    torch.manual_seed(8)
    fast = _randomize(KANLayer(3, 2, grid_size=5, basis="fast")).double()
    ref = KANLayer(3, 2, grid_size=5, basis="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(1000, 3, dtype=torch.float64) * 2 - 1
    err = (fast(x) - ref(x)).abs().max().item()
    print(f"[.double() fast vs reference] max abs difference {err:.2e}")
    # A save/load round trip re-detects the spacing and must not change the function either.
    reloaded = KANLayer(3, 2, grid_size=5).double()
    reloaded.load_state_dict(fast.state_dict())
    err_reload = (fast(x) - reloaded(x)).abs().max().item()
    assert err <= 1e-12 and err_reload <= 1e-12


def test_edge_activations_sum_to_forward() -> None:
    fast, _ = _pair()
    x = torch.rand(64, 3, dtype=torch.float64) * 2 - 1
    phi = fast.edge_activations(x)
    assert phi.shape == (64, 2, 3)
    assert (phi.sum(-1) - fast(x)).abs().max().item() <= 1e-12
    # A masked edge contributes nothing.
    fast.mask[1, 2] = 0
    phi = fast.edge_activations(x)
    assert (phi[:, 1, 2] == 0).all()
    assert (phi.sum(-1) - fast(x)).abs().max().item() <= 1e-12


def _gradcheck_layer(layer: KANLayer, x: torch.Tensor) -> None:
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters())

    def fn(inp, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (inp,))

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("basis", ["fast", "reference"])
@pytest.mark.parametrize("adapted", [False, True], ids=["uniform", "updated"])
@pytest.mark.parametrize("k", [1, 3])
def test_gradcheck(k: int, adapted: bool, basis: str) -> None:
    torch.manual_seed(2)
    layer = _randomize(layer64(3, 2, grid_size=4, spline_order=k, basis=basis), seed=3)
    if adapted:
        layer.update_grid(torch.rand(200, 3, dtype=torch.float64) ** 2 * 1.6 - 0.9)
        assert not layer.uniform_grid
    x = torch.rand(12, 3, dtype=torch.float64) * 1.8 - 0.9
    x = _away_from_knots(x, layer.grid)
    _gradcheck_layer(layer, x)


def test_init_statistics() -> None:
    torch.manual_seed(3)
    in_f, out_f, g = 7, 5, 8
    for scale_base, scale_noise, scale_spline in [(1.0, 0.1, 1.0), (0.5, 0.3, 2.5)]:
        layer = KANLayer(in_f, out_f, grid_size=g, spline_order=3, scale_noise=scale_noise,
                         scale_base=scale_base, scale_spline=scale_spline)
        bound = scale_base * math.sqrt(6 / (in_f + out_f))
        w = layer.base_weight.detach()
        assert w.abs().max().item() <= bound + 1e-7
        assert w.abs().max().item() >= 0.5 * bound  # really uses the range, not ~0
        c = layer.spline_weight.detach()
        assert c.shape == (out_f, in_f, g + 3)
        assert c.abs().max().item() <= scale_noise / (2 * g) + 1e-7
        assert c.abs().max().item() > 0
        assert torch.all(layer.spline_scaler == scale_spline)
        assert torch.all(layer.mask == 1)
        assert layer.grid.shape == (in_f, g + 2 * 3 + 1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(grid_size=0), "0"),
        (dict(grid_size=-3), "-3"),
        (dict(grid_size=2.5), "2.5"),
        (dict(spline_order=-1), "-1"),
        (dict(grid_range=(1, -1)), "(1, -1)"),
        (dict(grid_range=(0, 0)), "(0, 0)"),
        (dict(grid_range=(0, float("inf"))), "inf"),
        (dict(in_features=0), "0"),
        (dict(out_features=-2), "-2"),
        (dict(base_activation="swishy"), "swishy"),
        (dict(grid_eps=1.5), "1.5"),
        (dict(basis="dense"), "dense"),
    ],
)
def test_constructor_errors_name_the_value(kwargs: dict, needle: str) -> None:
    args = dict(in_features=2, out_features=3)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        KANLayer(**args)
    msg = str(info.value)
    assert needle in msg, msg
    name = next(iter(kwargs))
    if name != "base_activation":
        assert name in msg, msg


def test_wrong_input_width_message() -> None:
    layer = KANLayer(3, 2)
    with pytest.raises(ValueError, match=re.escape("(10, 4)")) as info:
        layer(torch.zeros(10, 4))
    assert "3" in str(info.value)
    with pytest.raises(ValueError, match="3"):
        layer.edge_activations(torch.zeros(5, 2))
    with pytest.raises(ValueError):
        KAN([3, 2])(torch.zeros(10, 4))


def test_leading_batch_dims() -> None:
    layer = _randomize(layer64(3, 4))
    x = torch.rand(2, 5, 3, dtype=torch.float64) * 2 - 1
    y = layer(x)
    assert y.shape == (2, 5, 4)
    assert torch.allclose(y, layer(x.reshape(10, 3)).reshape(2, 5, 4), atol=0, rtol=0)
    assert layer(x[0, 0]).shape == (4,)
    kan = KAN([3, 4, 2]).double()
    assert kan(x).shape == (2, 5, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    layer = KANLayer(3, 2).to(dtype)
    assert layer.grid.dtype == dtype
    x = torch.rand(16, 3, dtype=dtype) * 2 - 1
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.sum().backward()
    assert layer.spline_weight.grad.dtype == dtype
    # float32 agrees with float64 on the same parameters.
    wide = layer64(3, 2)
    wide.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    assert (wide(x.double()) - y.double()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("adapted", [False, True], ids=["uniform", "updated"])
def test_torch_compile_matches_eager(adapted: bool) -> None:
    torch.manual_seed(5)
    layer = _randomize(KANLayer(3, 2, grid_size=5))
    if adapted:
        layer.update_grid(torch.rand(256, 3) * 1.5 - 0.5)
    x = torch.rand(64, 3) * 2 - 1
    expected = layer(x)
    compiled = torch.compile(layer, backend="aot_eager")
    got = compiled(x)
    assert (got - expected).abs().max().item() <= 1e-6
    got.sum().backward()
    assert layer.spline_weight.grad is not None


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_generalizes_to_new_batch_size() -> None:
    torch.manual_seed(6)
    kan = KAN([3, 4, 2], grid_size=5).double()
    for layer in kan.layers:
        _randomize(layer, seed=7)
    kan.layers[0].update_grid(torch.rand(200, 3, dtype=torch.float64) * 1.5 - 0.5)  # non-uniform path
    example = torch.rand(16, 3, dtype=torch.float64) * 2 - 1
    traced = torch.jit.trace(kan, example, check_trace=False)
    for n in (1, 37, 200):
        x = torch.rand(n, 3, dtype=torch.float64) * 3 - 1.5
        assert (traced(x) - kan(x)).abs().max().item() <= 1e-12


def test_custom_activation_module_and_class() -> None:
    x = torch.rand(8, 2) * 2 - 1
    for act in (nn.Tanh, nn.Tanh(), "tanh", "TANH"):
        layer = KANLayer(2, 1, base_activation=act)
        assert isinstance(layer.base_activation, nn.Tanh)
        with torch.no_grad():
            layer.spline_scaler.zero_()
        assert torch.allclose(layer(x), torch.tanh(x) @ layer.base_weight.T)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("basis", ["fast", "reference"])
def test_linear_extrapolation_matches_scipy_tangents(k: int, basis: str) -> None:
    """extrapolate="linear": past the grid range each spline continues along its tangent at the
    nearest end (scipy's BSpline and its derivative at the end, the right end approached from
    inside); the base branch sees the raw input; inside the range it is the default layer."""
    torch.manual_seed(0)
    layer = _randomize(layer64(2, 3, grid_size=4, spline_order=k, grid_range=(-1.0, 2.0), basis=basis, extrapolate="linear"))
    x = torch.rand(300, 2, dtype=torch.float64) * 7 - 3  # mostly outside [-1, 2]
    x[:2] = torch.tensor([[-1.0, 2.0], [2.0, -1.0]], dtype=torch.float64)  # the ends themselves
    out = layer(x).detach().numpy()

    xn, grid = x.numpy(), layer.grid.numpy()
    wb, ws, sc = (p.detach().numpy() for p in (layer.base_weight, layer.spline_weight, layer.spline_scaler))
    at = np.clip(xn, -1.0, np.nextafter(2.0, -np.inf))
    expected = np.zeros((x.shape[0], 3))
    for j in range(3):
        for i in range(2):
            spline = BSpline(grid[i], ws[j, i], k, extrapolate=False)
            tangent = spline.derivative()(at[:, i]) if k > 0 else 0.0
            expected[:, j] += wb[j, i] * _silu(xn[:, i]) + sc[j, i] * (spline(at[:, i]) + (xn[:, i] - at[:, i]) * tangent)
    assert np.isfinite(expected).all()
    assert np.abs(out - expected).max() <= 1e-11
    edges = layer.edge_activations(x).sum(-1).detach().numpy()
    assert np.abs(edges - expected).max() <= 1e-11

    default = layer64(2, 3, grid_size=4, spline_order=k, grid_range=(-1.0, 2.0), basis=basis)
    default.load_state_dict(layer.state_dict())
    rows = ((x > -1) & (x < 2)).all(1)
    assert (default(x[rows]) - layer(x[rows])).abs().max().item() <= 1e-12
    assert (default(x[~rows]) - layer(x[~rows])).abs().max().item() > 1e-3, "the modes differ outside"


def test_linear_extrapolation_gradients() -> None:
    """float64 gradcheck inside and outside the grid; outside, dL/dx is the base branch's plus
    the spline's end slope."""
    layer = _randomize(layer64(2, 2, grid_size=5, spline_order=3, extrapolate="linear"))
    x = torch.tensor([[-0.7, 0.3], [0.55, -0.2], [1.5, -2.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    eps = 1e-6
    shifted = x.detach().clone()
    shifted[2, 0] += eps
    slope = (layer(shifted) - layer(x.detach())).sum() / eps
    layer(x).sum().backward()
    assert x.grad[2, 0].item() == pytest.approx(slope.item(), rel=1e-6)


def test_extrapolate_is_validated_and_kept_by_kan() -> None:
    with pytest.raises(ValueError, match="extrapolate must be one of"):
        KANLayer(2, 2, extrapolate="clamp")
    kan = KAN([2, 3, 1], extrapolate="linear")
    assert kan.config["extrapolate"] == "linear" and all(l.extrapolate == "linear" for l in kan.layers)
