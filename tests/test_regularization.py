"""Regularization terms against explicit-loop numpy computations on a hand-set tiny KAN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import default_dtype
from kan_lightning.nn import KAN
from kan_lightning.nn import regularization as reg


scipy_interpolate = pytest.importorskip("scipy.interpolate")
BSpline = scipy_interpolate.BSpline

K = 2
G = 3


def tiny_kan() -> KAN:
    """KAN [2, 2, 1], G = 3, k = 2, every parameter set by hand; edge (1, 0) of layer 0 masked."""
    with default_dtype(torch.float64):
        kan = KAN([2, 2, 1], grid_size=G, spline_order=K)
    n_b = G + K
    with torch.no_grad():
        l0, l1 = kan.layers
        l0.base_weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.25]]))
        l0.spline_scaler.copy_(torch.tensor([[1.0, -0.5], [1.5, 2.0]]))
        l0.spline_weight.copy_(
            torch.tensor(
                [
                    [[0.1, -0.2, 0.3, 0.0, 0.5], [1.0, 0.5, -0.25, 0.75, -1.0]],
                    [[0.2, 0.2, -0.4, 0.6, 0.1], [-0.3, 0.0, 0.9, -0.1, 0.4]],
                ]
            )
        )
        l0.mask[1, 0] = 0.0
        l1.base_weight.copy_(torch.tensor([[0.75, -0.6]]))
        l1.spline_scaler.copy_(torch.tensor([[0.8, 1.2]]))
        l1.spline_weight.copy_(torch.tensor([[[0.3, -0.7, 0.2, 0.1, -0.5], [0.0, 0.4, 0.4, -0.2, 0.6]]]))
    assert l0.spline_weight.shape[-1] == n_b
    return kan


def np_basis_sum(x: np.ndarray, knots: np.ndarray, coef: np.ndarray, k: int) -> np.ndarray:
    """sum_m coef[m] B_m(x) on the full knot vector, half-open, from scipy basis elements."""
    out = np.zeros_like(x)
    for m in range(len(coef)):
        elem = BSpline.basis_element(knots[m : m + k + 2], extrapolate=False)
        v = np.nan_to_num(elem(x), nan=0.0)
        v[x == knots[m + k + 1]] = 0.0
        out += coef[m] * v
    return out


def np_edges(kan: KAN, x: np.ndarray) -> list[np.ndarray]:
    """Per layer, phi[n, j, i] computed edge by edge with explicit loops."""
    phis = []
    h = x
    for layer in kan.layers:
        wb = layer.base_weight.detach().numpy()
        ws = layer.spline_weight.detach().numpy()
        sc = layer.spline_scaler.detach().numpy()
        mask = layer.mask.numpy()
        grid = layer.grid.numpy()
        n, n_in = h.shape
        n_out = wb.shape[0]
        phi = np.zeros((n, n_out, n_in))
        for j in range(n_out):
            for i in range(n_in):
                silu = h[:, i] / (1.0 + np.exp(-h[:, i]))
                spline = np_basis_sum(h[:, i], grid[i], ws[j, i], layer.spline_order)
                phi[:, j, i] = mask[j, i] * (wb[j, i] * silu + sc[j, i] * spline)
        phis.append(phi)
        h = phi.sum(-1)
    return phis


def np_entropy(values: np.ndarray) -> float:
    total = sum(values.ravel())
    ent = 0.0
    for v in values.ravel():
        p = v / total
        if p > 0:
            ent -= p * math.log(p)
    return ent


def np_scaled_coef(layer) -> np.ndarray:
    ws = layer.spline_weight.detach().numpy()
    sc = layer.spline_scaler.detach().numpy()
    mask = layer.mask.numpy()
    c = np.zeros_like(ws)
    for j in range(ws.shape[0]):
        for i in range(ws.shape[1]):
            c[j, i] = ws[j, i] * sc[j, i] * mask[j, i]
    return c


@pytest.fixture
def setup():
    kan = tiny_kan()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, generator=gen, dtype=torch.float64) * 2 - 1
    phis = np_edges(kan, x.numpy())
    return kan, x, phis


def test_forward_with_edge_scales_matches_forward_and_loops(setup) -> None:
    kan, x, phis = setup
    out, scales = kan.forward_with_edge_scales(x)
    assert (out - kan(x)).abs().max().item() <= 1e-12
    assert np.abs(out.detach().numpy() - phis[-1].sum(-1)).max() <= 1e-12
    assert len(scales) == 2
    for s, phi in zip(scales, phis):
        expected = np.zeros(phi.shape[1:])
        for j in range(phi.shape[1]):
            for i in range(phi.shape[2]):
                expected[j, i] = np.mean(np.abs(phi[:, j, i]))
        assert s.shape == expected.shape
        assert np.abs(s.detach().numpy() - expected).max() <= 1e-12
    assert scales[0][1, 0].item() == 0.0  # the masked edge
    # Leading batch dims work too.
    out3, _ = kan.forward_with_edge_scales(x.reshape(4, 10, 2))
    assert out3.shape == (4, 10, 1)
    assert (out3.reshape(40, 1) - out).abs().max().item() <= 1e-12
    # activations() agrees.
    acts = kan.activations(x)
    for (inp, phi), ref in zip(acts, phis):
        assert np.abs(phi.detach().numpy() - ref).max() <= 1e-12


def test_activation_terms(setup) -> None:
    kan, x, phis = setup
    _, scales = kan.forward_with_edge_scales(x)
    mags = [np.mean(np.abs(phi), axis=0) for phi in phis]
    expected_l1 = 0.0
    for m in mags:
        for v in m.ravel():
            expected_l1 += v
    expected_entropy = sum(np_entropy(m) for m in mags)
    assert abs(reg.activation_l1(scales).item() - expected_l1) <= 1e-12
    assert abs(reg.activation_entropy(scales).item() - expected_entropy) <= 1e-9


def test_coefficient_terms(setup) -> None:
    kan, _, _ = setup
    l1 = 0.0
    ent = 0.0
    smooth = 0.0
    for layer in kan.layers:
        c = np_scaled_coef(layer)
        mags = np.zeros(c.shape[:2])
        for j in range(c.shape[0]):
            for i in range(c.shape[1]):
                mags[j, i] = sum(abs(v) for v in c[j, i]) / c.shape[2]
                for m in range(c.shape[2] - 2):
                    smooth += (c[j, i, m + 2] - 2 * c[j, i, m + 1] + c[j, i, m]) ** 2
        l1 += mags.sum()
        ent += np_entropy(mags)
    assert abs(reg.coefficient_l1(kan.layers).item() - l1) <= 1e-12
    assert abs(reg.coefficient_entropy(kan.layers).item() - ent) <= 1e-9
    assert abs(reg.smoothness(kan.layers).item() - smooth) <= 1e-12
    print(f"[regularization] coef_l1={l1:.6f} coef_entropy={ent:.6f} smoothness={smooth:.6f}")


def test_entropy_of_uniform_and_one_hot() -> None:
    s = torch.ones(3, 4, dtype=torch.float64)
    assert abs(reg.activation_entropy([s]).item() - math.log(12)) <= 1e-9
    one_hot = torch.zeros(3, 4, dtype=torch.float64)
    one_hot[1, 2] = 5.0
    assert abs(reg.activation_entropy([one_hot]).item()) <= 1e-9
    assert abs(reg.activation_entropy([s, one_hot]).item() - math.log(12)) <= 1e-9


def test_smoothness_zero_for_linear_coefficients() -> None:
    kan = tiny_kan()
    with torch.no_grad():
        for layer in kan.layers:
            layer.spline_weight.copy_(torch.linspace(-1, 1, layer.spline_weight.shape[-1]).expand_as(layer.spline_weight))
    assert reg.smoothness(kan.layers).item() <= 1e-24
    # Fewer than three coefficients per edge: no second differences, a zero term.
    with default_dtype(torch.float64):
        small = KAN([2, 1], grid_size=1, spline_order=0)
    assert small.layers[0].spline_weight.shape[-1] == 1
    assert reg.smoothness(small.layers).item() == 0.0


def test_regularization_loss_weighting(setup) -> None:
    kan, x, _ = setup
    _, scales = kan.forward_with_edge_scales(x)
    weights = dict(l1=0.5, entropy=2.0, coef_l1=0.25, coef_entropy=3.0, smoothness=0.125)
    total, terms = kan.regularization_loss(scales, **weights)
    assert set(terms) == set(weights)
    expected = {
        "l1": reg.activation_l1(scales),
        "entropy": reg.activation_entropy(scales),
        "coef_l1": reg.coefficient_l1(kan.layers),
        "coef_entropy": reg.coefficient_entropy(kan.layers),
        "smoothness": reg.smoothness(kan.layers),
    }
    for name in weights:
        assert abs(terms[name].item() - expected[name].item()) <= 1e-12
    manual = sum(weights[n] * expected[n].item() for n in weights)
    assert abs(total.item() - manual) <= 1e-12
    assert total.dim() == 0

    # Zero weights skip their terms (and need no edge scales).
    total, terms = kan.regularization_loss(None, coef_l1=2.0)
    assert set(terms) == {"coef_l1"}
    assert abs(total.item() - 2.0 * expected["coef_l1"].item()) <= 1e-12
    total, terms = kan.regularization_loss(None)
    assert terms == {} and total.item() == 0.0


@pytest.mark.parametrize("name", ["l1", "entropy", "coef_l1", "coef_entropy", "smoothness"])
def test_negative_weight_raises_naming_it(setup, name: str) -> None:
    kan, x, _ = setup
    _, scales = kan.forward_with_edge_scales(x)
    with pytest.raises(ValueError, match=name) as info:
        kan.regularization_loss(scales, **{name: -0.5})
    assert "-0.5" in str(info.value)


@pytest.mark.parametrize("name", ["l1", "entropy"])
def test_activation_terms_need_edge_scales(name: str) -> None:
    kan = tiny_kan()
    with pytest.raises(ValueError, match="edge_scales"):
        kan.regularization_loss(None, **{name: 1.0})


def test_gradients_flow() -> None:
    kan = tiny_kan()
    kan.layers[0].mask.fill_(1.0)  # no exactly-zero edge: see the next test
    x = torch.rand(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    _, scales = kan.forward_with_edge_scales(x)
    total, _ = kan.regularization_loss(scales, l1=1.0, entropy=1.0, coef_l1=1.0, coef_entropy=1.0, smoothness=1.0)
    total.backward()
    for layer in kan.layers:
        g = layer.spline_weight.grad
        assert g is not None and torch.isfinite(g).all()
        assert g.abs().sum().item() > 0
        assert layer.spline_scaler.grad.abs().sum().item() > 0
    # Each term alone also reaches spline_weight.
    for name in ("l1", "entropy", "coef_l1", "coef_entropy", "smoothness"):
        kan.zero_grad()
        _, scales = kan.forward_with_edge_scales(x)
        kan.regularization_loss(scales, **{name: 1.0})[0].backward()
        for layer in kan.layers:
            assert torch.isfinite(layer.spline_weight.grad).all(), name
        assert kan.layers[1].spline_weight.grad.abs().sum().item() > 0, name


@pytest.mark.parametrize("name", ["entropy", "coef_entropy"])
def test_entropy_gradients_finite_with_a_masked_edge(setup, name: str) -> None:
    """Regression: xlogy(p, p) has a NaN backward at p == 0, so one exactly-zero edge magnitude
    (a pruned/masked edge) used to make every gradient NaN."""
    kan, x, _ = setup
    assert kan.layers[0].mask[1, 0] == 0
    _, scales = kan.forward_with_edge_scales(x)
    total, _ = kan.regularization_loss(scales, **{name: 1.0})
    assert torch.isfinite(total)
    total.backward()
    for layer in kan.layers:
        assert torch.isfinite(layer.spline_weight.grad).all()
        if name == "entropy":  # the coefficient terms do not involve the base branch
            assert torch.isfinite(layer.base_weight.grad).all()
    assert (kan.layers[0].spline_weight.grad[1, 0] == 0).all()  # the masked edge gets none


def test_masked_edge_gets_no_gradient_from_l1_terms(setup) -> None:
    kan, x, _ = setup
    _, scales = kan.forward_with_edge_scales(x)
    total, _ = kan.regularization_loss(scales, l1=1.0, coef_l1=1.0, smoothness=1.0)
    total.backward()
    g = kan.layers[0].spline_weight.grad
    assert torch.isfinite(g).all()
    assert (g[1, 0] == 0).all()
    assert g.abs().sum().item() > 0
