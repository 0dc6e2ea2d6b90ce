"""StackedKAN against the separate KANs it stacks (float64, rounding-level tolerance)."""

from __future__ import annotations

import pytest
import torch

from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN, check_stackable


def _models(seeds, dtype=torch.float64, **kwargs):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(KAN(**{"layers_hidden": [2, 5, 1], "grid_size": 5, **kwargs}).to(dtype))
    return models


def _inputs(n_models, n=64, width=2, seed=0, spread=1.2):
    gen = torch.Generator().manual_seed(seed)
    # a little past [-1, 1]: inputs outside the grid must behave as in KANLayer
    return (torch.rand(n_models, n, width, generator=gen, dtype=torch.float64) * 2 - 1) * spread


def _grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters()}


# G = 5: the dense contraction; G = 40, 30: the local one (LOCAL_MIN_RATIO)
@pytest.mark.parametrize("kwargs", [{}, {"spline_order": 2, "grid_size": 7, "layers_hidden": [3, 4, 2]}, {"spline_order": 0},
                                    {"grid_size": 40}, {"spline_order": 2, "grid_size": 30, "layers_hidden": [3, 4, 2]}])
def test_forward_and_gradients_equal_the_separate_models(kwargs):
    seeds = [0, 1, 7]
    models = _models(seeds, **kwargs)
    stacked = StackedKAN(_models(seeds, **kwargs))
    width = models[0].layers_hidden[0]
    x = _inputs(len(seeds), width=width).requires_grad_(True)
    y = torch.randn(len(seeds), x.shape[1], models[0].layers_hidden[-1], dtype=torch.float64)

    out = stacked(x)
    # the objective of stacked training: each model's mean loss, summed
    ((out - y) ** 2).mean(dim=(1, 2)).sum().backward()
    stacked_grads = _grads(stacked)
    for m, model in enumerate(models):
        xm = x[m].detach().clone().requires_grad_(True)
        ref = model(xm)
        torch.testing.assert_close(out[m], ref, rtol=1e-12, atol=1e-13)
        ((ref - y[m]) ** 2).mean().backward()
        torch.testing.assert_close(x.grad[m], xm.grad, rtol=1e-10, atol=1e-13)
        for name, grad in _grads(model).items():
            torch.testing.assert_close(stacked_grads[name][m], grad, rtol=1e-10, atol=1e-13, msg=name)


def test_gradients_match_finite_differences():
    stacked = StackedKAN(_models([3, 4]))
    x = _inputs(2, n=16).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: stacked(x), (x,))
    coef = stacked.layers[0].spline_weight
    assert torch.autograd.gradcheck(lambda c: torch.func.functional_call(stacked, {"layers.0.spline_weight": c}, (x.detach(),)), (coef.detach().clone().requires_grad_(True),))


def test_initialization_equals_separately_seeded_models_and_unstacks():
    seeds = [5, 6]
    stacked = StackedKAN(_models(seeds))
    for m, model in enumerate(_models(seeds)):
        back = stacked.model(m)
        for (name, a), (_, b) in zip(back.state_dict().items(), model.state_dict().items()):
            assert torch.equal(a, b), name
        assert back.config == model.config
    assert not torch.equal(stacked.layers[0].spline_weight[0], stacked.layers[0].spline_weight[1])


def test_per_model_grid_update_and_extension_equal_the_separate_models():
    seeds = [0, 1]
    models = _models(seeds)
    stacked = StackedKAN(_models(seeds))
    xs = torch.stack([_inputs(1, n=200, seed=1, spread=0.7)[0], _inputs(1, n=200, seed=2, spread=1.5)[0]])
    weight = stacked.layers[0].spline_weight
    assert stacked.update_grid(xs)  # same grid size: in place, the Parameter is kept
    assert stacked.layers[0].spline_weight is weight
    assert not stacked.extend_grid(10, xs)  # a new grid size: new parameters
    for m, model in enumerate(models):
        model.update_grid(xs[m])
        model.extend_grid(10, xs[m])
        probe = _inputs(1, n=50, seed=3)[0]
        torch.testing.assert_close(stacked(probe.expand(2, -1, -1).contiguous())[m], model(probe), rtol=1e-12, atol=1e-13)
        assert not stacked.layers[0].uniform_grids[m] and not model.layers[0].uniform_grid
    assert stacked.model(0).grid_size == 10


def test_unstackable_models_are_refused_naming_the_difference():
    with pytest.raises(ValueError, match="grid_size"):
        check_stackable(_models([0], grid_size=5) + _models([1], grid_size=6))
    with pytest.raises(ValueError, match="extrapolate"):
        StackedKAN(_models([0, 1], extrapolate="linear"))
    with pytest.raises(ValueError, match="expects inputs"):
        StackedKAN(_models([0, 1]))(torch.zeros(3, 4, 2, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stacked_forward_on_cuda_equals_the_cpu_models():
    seeds = [0, 1]
    models = _models(seeds)
    stacked = StackedKAN(_models(seeds)).cuda()
    x = _inputs(2)
    out = stacked(x.cuda()).cpu()
    for m, model in enumerate(models):
        torch.testing.assert_close(out[m], model(x[m]), rtol=1e-10, atol=1e-12)
    assert stacked.update_grid(x.cuda())
    assert stacked.model(1).layers[0].grid.is_cuda
