"""The compiled "fused" contraction (inductor's C++ on CPU): exact, and eager where compiling fails.

The numbers of every grid kind and order are tested uncompiled in test_kernels.py ("fused-eager");
here the compiled loops themselves, on a few cases (each new case compiles for seconds).
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from kan_lightning.nn import KANLayer, fused
from kan_lightning.nn.kernels import spline_contract

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None,
                                reason="inductor on CPU needs a C++ compiler")


def _case(kind: str, k: int = 3):
    torch.manual_seed(0)
    layer = KANLayer(3, 4, grid_size=6, spline_order=k).double()
    if kind == "random":
        layer.update_grid(torch.rand(500, 3, dtype=torch.float64) ** 2 * 2 - 1, grid_eps=0.0)
    x = (torch.rand(64, 3, dtype=torch.float64) * 2.6 - 1.3).requires_grad_(True)
    coef = torch.randn(4, 3, layer.num_bases, dtype=torch.float64, requires_grad=True)
    return layer.grid, x, coef, kind == "uniform"


@pytest.mark.slow
@pytest.mark.parametrize("base", [False, True], ids=["splines", "with-base"])
@pytest.mark.parametrize("kind", ["uniform", "random"])
def test_compiled_matches_dense_and_gradcheck(kind, base) -> None:
    """Compiled: the eager dense kernel's outputs and gradients to float64 rounding (the dense
    kernel matches scipy to 1e-12 in test_kernels.py), and float64 gradcheck; ``base``: with the
    SiLU base branch in the product (the dense kernel adds it apart)."""
    grid, x, coef, uniform = _case(kind)
    weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True) if base else None
    params = (x, coef, weight) if base else (x, coef)
    results = []
    for contraction in ("dense", "fused"):
        out = spline_contract(x, grid, coef, 3, uniform=uniform, contraction=contraction, base_weight=weight)
        grads = torch.autograd.grad((out * torch.arange(4.0, dtype=out.dtype)).sum(), params)
        results.append((out, *grads))
    assert fused.available() and fused._COMPILED
    for a, b in zip(*results):
        assert (a - b).abs().max().item() <= 1e-12
    # Non-finite inputs: NaN rows stay NaN, infinities land past the grid ends, as in the dense kernel.
    bad = x.detach().clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("inf"), -float("inf")
    with torch.no_grad():
        outs = [spline_contract(bad, grid, coef, 3, uniform=uniform, contraction=c, base_weight=weight)
                for c in ("dense", "fused")]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12, equal_nan=True)

    def fn(a, c, w=None):
        return spline_contract(a, grid, c, 3, uniform=uniform, contraction="fused", base_weight=w)

    assert torch.autograd.gradcheck(fn, (x[:8].detach().requires_grad_(True), *params[1:]), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.slow
def test_graphs_static_per_width_then_one_for_every_batch(monkeypatch) -> None:
    """A new width compiles a graph of its own (a graph with a symbolic width would take it
    without compiling, and run the expansion ~35x slower); so does a new batch size until
    ``STATIC_BATCHES`` of them, then one dynamic-batch graph takes every other. Each result is
    the dense kernel's."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(fused, "STATIC_BATCHES", 2)
    monkeypatch.setattr(fused, "_COMPILED", {})
    fused.reset()
    torch.manual_seed(0)

    def graphs_compiled_by(width: int, batch: int, evaluation=torch.no_grad) -> int:
        layer = KANLayer(width, 2, grid_size=4).double()
        coef = torch.randn(2, width, layer.num_bases, dtype=torch.float64)
        before = counters["stats"]["unique_graphs"]
        with evaluation():  # two compiled functions: bases, expansion
            x = torch.rand(batch, width, dtype=torch.float64) * 2 - 1
            out = spline_contract(x, layer.grid, coef, 3, uniform=True, contraction="fused")
        expected = spline_contract(x, layer.grid, coef, 3, uniform=True, contraction="dense")
        assert (out - expected).abs().max().item() <= 1e-12
        return counters["stats"]["unique_graphs"] - before

    try:
        assert [graphs_compiled_by(w, 16) for w in (3, 5, 7)] == [2, 2, 2]
        assert graphs_compiled_by(3, 16) == 0
        assert graphs_compiled_by(7, 20) == 2  # the second batch size: static
        assert graphs_compiled_by(7, 24) == 2  # the third: the dynamic-batch graph
        assert [graphs_compiled_by(7, n) for n in (28, 40, 16, 20)] == [0, 0, 0, 0]
        # inference tensors (Lightning evaluates under inference_mode): graphs of their own
        assert [graphs_compiled_by(w, 16, torch.inference_mode) for w in (3, 5, 7, 3)] == [2, 2, 2, 0]
        torch._dynamo.reset()  # from outside: every graph dropped, the shapes marked afresh
        assert [graphs_compiled_by(w, 16) for w in (3, 5, 7)] == [2, 2, 2]
    finally:
        fused.reset()


def test_falls_back_to_eager_when_the_compiler_is_missing(monkeypatch) -> None:
    """A C++ compiler that does not exist: one warning, then the eager kernels, same numbers."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.setattr(fused, "_FAILED", [])
    fused.reset()
    grid, x, coef, uniform = _case("uniform", k=2)
    expected = spline_contract(x, grid, coef, 2, uniform=uniform, contraction="dense")
    # (inductor's config module is patched with its own context manager: monkeypatch's undo
    # would delete the entries)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        with pytest.warns(RuntimeWarning, match="could not be compiled"):
            got = spline_contract(x, grid, coef, 2, uniform=uniform, contraction="fused")
    assert not fused.available()
    assert (got - expected).abs().max().item() <= 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only; now the eager dense kernel
        again = spline_contract(x, grid, coef, 2, uniform=uniform, contraction="fused")
    assert torch.equal(again, expected)
    fused.reset()


def test_derivatives_only_where_a_backward_needs_them(monkeypatch) -> None:
    """The forward computes and keeps the x-derivatives only when x requires grad and grad mode
    is on (not in evaluation, not for a first layer's data); the gradients are the dense kernel's."""
    monkeypatch.setattr(fused, "COMPILE", False)  # the same functions, uncompiled
    calls = []
    with_slopes = fused._local_slopes
    monkeypatch.setattr(fused, "_local_slopes", lambda *args: calls.append(1) or with_slopes(*args))
    grid, x, coef, uniform = _case("random")
    with torch.no_grad():
        spline_contract(x, grid, coef, 3, uniform=uniform, contraction="fused")
    spline_contract(x.detach(), grid, coef, 3, uniform=uniform, contraction="fused").sum().backward()
    assert calls == []
    grads = []
    for contraction in ("dense", "fused"):
        out = spline_contract(x, grid, coef, 3, uniform=uniform, contraction=contraction)
        grads.append(torch.autograd.grad((out * out).sum(), (x, coef)))
    assert calls == [1]
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.slow
def test_training_matches_the_dense_contraction() -> None:
    """30 Adam steps of a float32 layer: the same trajectory as with the eager dense kernel."""
    finals = []
    for contraction in ("dense", "fused"):
        torch.manual_seed(0)
        layer = KANLayer(2, 3, grid_size=5)
        layer.contraction = contraction
        x = torch.rand(256, 2) * 2 - 1
        y = torch.sin(3 * x[:, :1]) * x[:, 1:]
        opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            (layer(x) - y).square().mean().backward()
            opt.step()
        finals.append(layer(x).detach())
    assert (finals[0] - finals[1]).abs().max().item() <= 1e-5


def test_contraction_option_reaches_every_layer_and_is_checked() -> None:
    from kan_lightning.nn import KAN

    model = KAN([2, 3, 1], grid_size=4, contraction="dense")
    assert [layer.contraction for layer in model.layers] == ["dense", "dense"]
    assert model.config["contraction"] == "dense"
    with pytest.raises(ValueError, match="contraction must be one of"):
        KANLayer(2, 1, contraction="sparse")


@pytest.mark.slow
def test_kan_train_with_fused_contraction(make_cfg) -> None:
    import math

    from kan_lightning.commands.train import train

    record = train(make_cfg("debug=fast", "trainer.enable_progress_bar=false", "model.contraction=fused"))
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["test/rmse"])
