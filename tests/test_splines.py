"""B-spline bases against scipy.interpolate.BSpline (an independent implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kan_lightning.nn.splines import (
    bspline_basis,
    bspline_basis_reference,
    bspline_local,
    extend_knots,
    fit_coefficients,
    uniform_grid,
)


scipy_interpolate = pytest.importorskip("scipy.interpolate")
BSpline = scipy_interpolate.BSpline

ORDERS = list(range(6))
IN = 3
G = 6


def make_grid(kind: str, k: int, grid_size: int = G, in_features: int = IN, seed: int = 0) -> torch.Tensor:
    """A float64 grid ``(in, G + 2k + 1)``: uniform, or random strictly increasing knots."""
    if kind == "uniform":
        return uniform_grid(in_features, grid_size, k, (-1.0, 1.0), dtype=torch.float64)
    gen = np.random.default_rng(seed + 17 * k)
    n = grid_size + 2 * k + 1
    rows = []
    for i in range(in_features):
        gaps = gen.uniform(0.2, 1.5, size=n - 1)
        start = gen.uniform(-3.0, -1.0)
        rows.append(np.concatenate([[start], start + np.cumsum(gaps)]))
    return torch.tensor(np.stack(rows), dtype=torch.float64)


def make_inputs(grid: torch.Tensor, n_random: int = 400, seed: int = 1) -> torch.Tensor:
    """``(N, in)`` inputs: random points reaching past both ends of the full knot vector, plus
    every knot of each row exactly."""
    gen = np.random.default_rng(seed)
    g = grid.numpy()
    cols = []
    for i in range(g.shape[0]):
        lo, hi = g[i, 0], g[i, -1]
        span = hi - lo
        pts = gen.uniform(lo - 0.3 * span, hi + 0.3 * span, size=n_random)
        pts = np.concatenate([pts, g[i], [lo - 1.0, hi + 1.0]])
        cols.append(pts)
    return torch.tensor(np.stack(cols, axis=1), dtype=torch.float64)


def scipy_bases(x: np.ndarray, grid: np.ndarray, k: int) -> np.ndarray:
    """``(N, in, G + k)`` bases from scipy basis elements, in the half-open convention."""
    n_in, n_knots = grid.shape
    n_bases = n_knots - k - 1
    out = np.zeros((x.shape[0], n_in, n_bases))
    for i in range(n_in):
        t = grid[i]
        for m in range(n_bases):
            elem = BSpline.basis_element(t[m : m + k + 2], extrapolate=False)
            v = np.nan_to_num(elem(x[:, i]), nan=0.0)
            v[x[:, i] == t[m + k + 1]] = 0.0  # scipy closes the support on the right
            out[:, i, m] = v
    return out


# Filled in by the tests below and printed at the end of the module.
MAX_ERRORS: dict[tuple[str, str, int], float] = {}


def _record(name: str, kind: str, k: int, err: float) -> None:
    MAX_ERRORS[(name, kind, k)] = err
    print(f"[scipy max abs error] {name:<16} grid={kind:<10} k={k}: {err:.3e}")


@pytest.mark.parametrize("kind", ["uniform", "nonuniform"])
@pytest.mark.parametrize("k", ORDERS)
def test_bases_match_scipy(kind: str, k: int) -> None:
    grid = make_grid(kind, k)
    x = make_inputs(grid)
    expected = scipy_bases(x.numpy(), grid.numpy(), k)

    ref = bspline_basis_reference(x, grid, k).numpy()
    assert ref.shape == expected.shape
    err = np.abs(ref - expected).max()
    _record("reference", kind, k, err)
    assert err <= 1e-12

    fast = bspline_basis(x, grid, k, uniform=False).numpy()
    err = np.abs(fast - expected).max()
    _record("fast general", kind, k, err)
    assert err <= 1e-12

    if kind == "uniform":
        fast_u = bspline_basis(x, grid, k, uniform=True).numpy()
        err = np.abs(fast_u - expected).max()
        _record("fast uniform", kind, k, err)
        assert err <= 1e-12


@pytest.mark.parametrize("kind", ["uniform", "nonuniform"])
@pytest.mark.parametrize("k", ORDERS)
def test_full_spline_matches_scipy(kind: str, k: int) -> None:
    grid = make_grid(kind, k, seed=5)
    n_bases = grid.shape[-1] - k - 1
    gen = np.random.default_rng(k)
    coef = gen.normal(size=(IN, n_bases))
    x = make_inputs(grid, n_random=500, seed=2)
    variants = {"reference": bspline_basis_reference(x, grid, k), "fast": bspline_basis(x, grid, k)}
    if kind == "uniform":
        variants["fast uniform"] = bspline_basis(x, grid, k, uniform=True)
    for name, basis in variants.items():
        ours = np.einsum("nim,im->ni", basis.numpy(), coef)
        for i in range(IN):
            t = grid[i].numpy()
            xi = x[:, i].numpy()
            base_interval = (xi >= t[k]) & (xi < t[n_bases])
            assert base_interval.sum() > 50
            expected = BSpline(t, coef[i], k, extrapolate=False)(xi[base_interval])
            err = np.abs(ours[base_interval, i] - expected).max()
            assert err <= 1e-11, (name, i, err)


@pytest.mark.parametrize("kind", ["uniform", "nonuniform"])
@pytest.mark.parametrize("k", ORDERS)
def test_partition_of_unity(kind: str, k: int) -> None:
    grid = make_grid(kind, k, seed=9)
    x = make_inputs(grid, n_random=1000, seed=3)
    n_knots = grid.shape[-1]
    lo = grid[:, k]
    hi = grid[:, n_knots - 1 - k]
    inside = (x >= lo) & (x < hi)
    assert inside.sum() > 100
    variants = [bspline_basis_reference(x, grid, k), bspline_basis(x, grid, k)]
    if kind == "uniform":
        variants.append(bspline_basis(x, grid, k, uniform=True))
    for basis in variants:
        total = basis.sum(-1)
        assert (total[inside] - 1).abs().max().item() <= 1e-12
        assert (basis >= -1e-15).all()


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("k", ORDERS)
def test_local_outside_is_zero_with_clamped_indices(k: int, uniform: bool) -> None:
    grid = make_grid("uniform", k)
    n_bases = grid.shape[-1] - k - 1
    lo, hi = grid[0, 0].item(), grid[0, -1].item()
    x = torch.tensor([lo - 10.0, lo - 1e-9, hi, hi + 1e-9, hi + 10.0, float(lo - 1e6)], dtype=torch.float64)
    x = x.unsqueeze(1).expand(-1, IN).contiguous()
    values, start = bspline_local(x, grid, k, uniform=uniform)
    assert values.shape == (x.shape[0], IN, k + 1)
    assert start.shape == x.shape and start.dtype == torch.int64
    assert (values == 0).all()
    index = start.unsqueeze(-1) + torch.arange(k + 1)
    # Indices can be used for gather/scatter after clamping; the start stays within range.
    assert (start >= -k).all() and (start <= n_bases - 1).all()
    assert (index.clamp(0, n_bases - 1) >= 0).all()

    # Inside: values are non-negative, and the stated indices place them correctly.
    xin = make_inputs(grid, n_random=300)
    values, start = bspline_local(xin, grid, k, uniform=uniform)
    assert (values >= 0).all()
    assert (start >= -k).all() and (start + k <= grid.shape[-1] - 2).all()
    dense = bspline_basis_reference(xin, grid, k)
    index = (start.unsqueeze(-1) + torch.arange(k + 1)).clamp(0, n_bases - 1)
    rebuilt = torch.zeros_like(dense).scatter_add(-1, index, values)
    assert (rebuilt - dense).abs().max().item() <= 1e-12


@pytest.mark.parametrize("k", ORDERS)
def test_repeated_knots_are_finite(k: int) -> None:
    row = torch.tensor([-2.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    row = row[: G + 2 * k + 1] if row.numel() >= G + 2 * k + 1 else torch.cat(
        [row, row[-1] + torch.arange(1, G + 2 * k + 2 - row.numel(), dtype=row.dtype)]
    )
    grid = row.to(torch.float64).expand(2, -1).contiguous()
    x = torch.cat([make_inputs(grid, n_random=300), grid.T], dim=0)
    ref = bspline_basis_reference(x, grid, k)
    fast = bspline_basis(x, grid, k, uniform=False)
    assert torch.isfinite(ref).all()
    assert torch.isfinite(fast).all()
    assert (fast - ref).abs().max().item() <= 1e-12
    if k > 0:  # order-0 bases are piecewise constant and carry no gradient
        xg = x.clone().requires_grad_(True)
        (bspline_basis(xg, grid, k) * torch.rand(fast.shape, dtype=fast.dtype)).sum().backward()
        assert torch.isfinite(xg.grad).all()


def test_float32_close_to_float64() -> None:
    k, grid_size = 3, 50
    grid64 = uniform_grid(4, grid_size, k, (-1.0, 1.0), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x64 = torch.rand(2000, 4, generator=gen, dtype=torch.float64) * 2.6 - 1.3
    ref = bspline_basis_reference(x64, grid64, k)
    grid32 = grid64.float()
    x32 = x64.float()
    for uniform in (False, True):
        b32 = bspline_basis(x32, grid32, k, uniform=uniform)
        assert b32.dtype == torch.float32
        err = (b32.double() - bspline_basis_reference(x32.double(), grid64, k)).abs().max().item()
        err_vs_64 = (b32.double() - ref).abs().max().item()
        print(f"[float32] uniform={uniform}: max error {err:.2e} (same inputs), {err_vs_64:.2e} (vs float64 inputs)")
        assert err <= 1e-5
        assert err_vs_64 <= 1e-5
    ref32 = bspline_basis_reference(x32, grid32, k)
    assert (ref32.double() - bspline_basis_reference(x32.double(), grid64, k)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["uniform", "nonuniform"])
@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_fit_coefficients_recovers_spline(kind: str, k: int) -> None:
    grid = make_grid(kind, k, grid_size=5, in_features=2, seed=3)
    n_bases = grid.shape[-1] - k - 1
    gen = torch.Generator().manual_seed(k)
    coef = torch.randn(3, 2, n_bases, generator=gen, dtype=torch.float64)  # (out, in, nb)
    # Samples over the full knot span so every basis (also the outer ones) is well determined.
    n = 40 * n_bases
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    x = grid[:, 0] + u * (grid[:, -1] - grid[:, 0])
    y = torch.einsum("nim,oim->noi", bspline_basis_reference(x, grid, k), coef)
    fitted = fit_coefficients(x, y, grid, k)
    assert fitted.shape == coef.shape
    err = (fitted - coef).abs().max().item()
    print(f"[fit_coefficients] grid={kind} k={k}: max coefficient error {err:.2e}")
    assert err <= 1e-7  # the default ridge (1e-8) shrinks coefficients a little
    # Without the ridge it is exact to rounding.
    fitted = fit_coefficients(x, y, grid, k, ridge=0.0)
    assert (fitted - coef).abs().max().item() <= 1e-8


def test_fit_coefficients_keeps_dtype() -> None:
    grid = uniform_grid(2, 4, 3, dtype=torch.float32)
    x = torch.rand(100, 2) * 2 - 1
    y = torch.randn(100, 1, 2)
    assert fit_coefficients(x, y, grid, 3).dtype == torch.float32


def test_uniform_grid_and_extend_knots() -> None:
    grid = uniform_grid(3, 5, 3, (-1.0, 1.0), dtype=torch.float64)
    assert grid.shape == (3, 5 + 2 * 3 + 1)
    np.testing.assert_allclose(grid[0].numpy(), np.linspace(-1 - 3 * 0.4, 1 + 3 * 0.4, 12), atol=1e-15)
    interior = grid[:, 3:-3]
    np.testing.assert_allclose(extend_knots(interior, 3).numpy(), grid.numpy(), atol=1e-14)
    assert extend_knots(interior, 0) is interior
