"""Symbolic regression of KAN edges: the library, edge fits, the selection rule, formula
composition and refinement, the paper toy end to end, and the ``kan-symbolic`` entry."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
import sympy
import torch

from kan_lightning.analysis import formulas as sym
from kan_lightning.nn import KAN, fit_coefficients

X0, X1 = sympy.symbols("x0 x1")
TRUTH = sympy.exp(sympy.sin(sympy.pi * X0) + X1**2)


def paper_toy(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)[:, None]


def equivalent(expr: sympy.Expr, truth: sympy.Expr) -> bool:
    return sympy.simplify(expr - truth) == 0


# ---------------------------------------------------------------------------------------------
# The library


@pytest.mark.parametrize("name", [n for n in sym.LIBRARY if n != "0"])
def test_library_implementations_agree(name):
    fn = sym.LIBRARY[name]
    u = np.linspace(0.3, 1.7, 7)
    via_numpy = fn.numpy(u)
    via_torch = fn.torch(torch.tensor(u)).numpy()
    s = sympy.Symbol("u")
    via_sympy = sympy.lambdify(s, fn.sympy(s), "numpy")(u)
    np.testing.assert_allclose(via_torch, via_numpy, rtol=1e-12)
    np.testing.assert_allclose(np.broadcast_to(via_sympy, u.shape), via_numpy, rtol=1e-12)
    assert fn.complexity >= 1


def test_get_library_selects_and_rejects():
    lib = sym.get_library(["sin", "x^2"])
    assert list(lib) == ["0", "x^2", "sin"]  # library order, "0" always in
    assert list(sym.get_library(["x2", "inv", "x**3"])) == ["0", "x^2", "1/x", "x^3"]
    with pytest.raises(ValueError, match="unknown symbolic function"):
        sym.get_library(["sinh"])


# ---------------------------------------------------------------------------------------------
# Fitting one edge


@pytest.mark.parametrize(
    "name,truth",
    [
        ("sin", lambda x: 2.0 * np.sin(3.0 * x + 0.5) + 1.0),
        ("x^2", lambda x: 0.7 * (x - 0.2) ** 2 - 0.3),
        ("exp", lambda x: 1.5 * np.exp(0.8 * x) - 2.0),
        ("tanh", lambda x: np.tanh(4.0 * x - 1.0)),
        ("x", lambda x: -3.0 * x + 0.25),
        ("gaussian", lambda x: np.exp(-((2.0 * x + 0.5) ** 2))),
    ],
)
def test_fit_edge_recovers_function(name, truth):
    x = np.linspace(-1, 1, 301)
    y = truth(x)
    ranked = sym.fit_edge(x, y)
    best = ranked[0]
    assert best.name == name
    assert best.r2 > 1 - 1e-9
    np.testing.assert_allclose(best(x), y, atol=1e-5)


def test_fit_function_parameters_and_sympy():
    x = np.linspace(-1, 1, 201)
    fit = sym.fit_function(x, 2.0 * np.sin(math.pi * x) + 1.0, "sin")
    # c sin(a x + b) + d with |a| = pi; the sign and phase may differ but the function may not.
    assert abs(abs(fit.a) - math.pi) < 1e-6
    np.testing.assert_allclose(fit(x), 2.0 * np.sin(math.pi * x) + 1.0, atol=1e-8)
    u = sympy.Symbol("u")
    f = sympy.lambdify(u, fit.sympy(u), "numpy")
    np.testing.assert_allclose(f(x), fit(x), atol=1e-12)
    np.testing.assert_allclose(fit.torch(torch.tensor(x)).numpy(), fit(x), atol=1e-12)


def test_fit_function_handles_domain_errors_and_constants():
    x = np.linspace(-1, 1, 101)
    log_fit = sym.fit_function(x, np.log(x + 1.5), "log")
    assert log_fit.r2 > 1 - 1e-9
    const = sym.fit_edge(x, np.full_like(x, 0.25))[0]
    assert const.name == "0" and const.d == pytest.approx(0.25)


def test_rank_fits_prefers_simpler_within_tolerance():
    edge = lambda name, r2, c: sym.SymbolicEdge(name, 1, 0, 1, 0, r2, c)
    fits = [edge("x^4", 0.99999, 4), edge("sin", 0.99995, 2), edge("x", 0.9, 1), edge("cos", 0.99995, 2)]
    assert [f.name for f in sym.rank_fits(fits, tolerance=1e-4)] == ["sin", "cos", "x^4", "x"]
    assert [f.name for f in sym.rank_fits(fits, tolerance=1e-6)] == ["x^4", "sin", "cos", "x"]
    assert [f.name for f in sym.rank_fits(fits, tolerance=0.2)][0] == "x"


# ---------------------------------------------------------------------------------------------
# Edges of a network set to known functions


def single_layer_kan() -> tuple[KAN, torch.Tensor]:
    """A [2, 2] KAN whose edges are least-squares splines of known functions:
    y0 = sin(pi x0) + x1^2, y1 = exp(x0) (edge x1 -> y1 pruned)."""
    torch.manual_seed(0)
    model = KAN([2, 2], grid_size=20).double()
    x = torch.rand(600, 2, dtype=torch.float64) * 2 - 1
    target = torch.zeros(600, 2, 2, dtype=torch.float64)
    target[:, 0, 0] = torch.sin(math.pi * x[:, 0])
    target[:, 0, 1] = x[:, 1] ** 2
    target[:, 1, 0] = torch.exp(x[:, 0])
    layer = model.layers[0]
    with torch.no_grad():
        layer.base_weight.zero_()
        layer.spline_scaler.fill_(1.0)
        layer.spline_weight.copy_(fit_coefficients(x, target, layer.grid, layer.spline_order))
        layer.mask[1, 1] = 0.0
    return model, x


def test_auto_symbolic_recovers_known_edges():
    model, x = single_layer_kan()
    fits = sym.auto_symbolic(model, x)
    assert {k: f.name for k, f in fits.items()} == {(0, 0, 0): "sin", (0, 0, 1): "x^2", (0, 1, 0): "exp"}
    u = np.linspace(-1, 1, 101)
    np.testing.assert_allclose(fits[(0, 0, 0)](u), np.sin(math.pi * u), atol=1e-4)
    assert abs(abs(fits[(0, 0, 0)].a) - math.pi) < 1e-3
    np.testing.assert_allclose(fits[(0, 0, 1)](u), u**2, atol=1e-4)
    np.testing.assert_allclose(fits[(0, 1, 0)](u), np.exp(u), atol=1e-4)
    assert all(f.r2 > 0.99999 for f in fits.values())

    top = sym.suggest_symbolic(model, x, layer=0, i=0, j=0, top_k=3)
    assert len(top) == 3 and top[0].name == "sin"

    exprs = sym.symbolic_formula(model, fits, ["x0", "x1"], ["y0", "y1"], precision=None)
    assert list(exprs) == ["y0", "y1"]
    y = torch.stack([torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2, torch.exp(x[:, 0])], 1)
    for k, (name, truth) in enumerate([("y0", sympy.sin(sympy.pi * X0) + X1**2), ("y1", sympy.exp(X0))]):
        assert sym.formula_rmse(exprs[name], x, y[:, k]) < 1e-3
        refined = sym.refine_formula(exprs[name], x, y[:, k], ["x0", "x1"])
        assert equivalent(refined.expr, truth), refined.expr
        assert refined.rmse < 1e-10


def test_symbolic_formula_needs_every_live_edge():
    model = KAN([2, 2], grid_size=3)
    with torch.no_grad():
        model.layers[0].mask[1, 1] = 0.0
    identity = sym.SymbolicEdge("x", 1.0, 0.0, 1.0, 0.0, 1.0, 1)
    fits = {(0, 0, 0): identity, (0, 0, 1): identity, (0, 1, 0): identity}
    assert sym.symbolic_formula(model, fits) == {"y0": X0 + X1, "y1": X0}  # masked edge skipped
    del fits[(0, 0, 1)]
    with pytest.raises(KeyError, match="no symbolic fit"):
        sym.symbolic_formula(model, fits)


def test_dead_edges_become_constants_and_bad_fits_warn():
    model, x = single_layer_kan()
    layer = model.layers[0]
    with torch.no_grad():
        layer.spline_weight[1, 0] *= 1e-6  # the exp edge is now (nearly) dead
    fits = sym.auto_symbolic(model, x, library=["x", "x^2", "sin", "exp"])
    assert fits[(0, 1, 0)].name == "0"
    with torch.no_grad():
        layer.spline_weight[0, 1] = torch.randn_like(layer.spline_weight[0, 1])  # noise edge
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sym.auto_symbolic(model, x, library=["x", "sin"], r2_threshold=0.999)
    assert any("no library function reaches" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------
# Formula helpers


def test_formula_rmse_and_round_constants():
    expr = sympy.Float(1.000004) * sympy.sin(sympy.Float(3.14159) * X0) + sympy.Float(0.00001) * X1
    rounded = sym.round_constants(expr, 4)
    assert rounded == sympy.sin(sympy.Float(3.1416, 15) * X0)
    x = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    y = np.sin(3.1416 * x[:, 0])
    assert sym.formula_rmse(rounded, x, y) < 1e-12
    assert sym.formula_rmse(sympy.Integer(2), x, np.full(200, 2.0)) == 0.0


def test_refine_formula_snaps_to_exact_constants():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (400, 2))
    y = np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)
    rough = sympy.Float(1.01) * sympy.exp(sympy.Float(0.98) * sympy.sin(sympy.Float(3.1) * X0 + sympy.Float(0.01)) + sympy.Float(1.02) * X1**2) - sympy.Float(0.01)
    refined = sym.refine_formula(rough, x, y, ["x0", "x1"])
    assert refined.rmse_before > 1e-2
    assert equivalent(refined.expr, TRUTH), refined.expr
    assert refined.rmse < 1e-12


def test_denormalize_formula_matches_affine_maps():
    shift, scale, y_mean, y_std = [0.5, -1.0], [2.0, 0.25], 3.0, 1.5
    normalized = sympy.sin(X0) + X1**2
    expr = sym.denormalize_formula(normalized, ["x0", "x1"], shift, scale, y_mean, y_std)
    x = np.random.default_rng(2).uniform(-1, 1, (50, 2))
    xn = (x - np.array(shift)) / np.array(scale)
    expected = y_std * (np.sin(xn[:, 0]) + xn[:, 1] ** 2) + y_mean
    assert sym.formula_rmse(expr, x, expected) < 1e-12
    assert sym.denormalize_formula(normalized, ["x0", "x1"]) == normalized


# ---------------------------------------------------------------------------------------------
# Acceptance: the paper toy exp(sin(pi x0) + x1^2) from a trained [2, 1, 1] KAN


def lbfgs(model, x, y, steps, grid_updates=()):
    def make():
        return torch.optim.LBFGS(model.parameters(), lr=1, max_iter=20, history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-32, tolerance_change=1e-32)

    opt = make()
    for step in range(steps):
        if step in grid_updates:
            model.update_grid(x)
            opt = make()

        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)


def train_paper_toy() -> tuple[KAN, torch.Tensor, torch.Tensor]:
    """A [2, 1, 1] KAN, grid 5 with grid updates, full-batch LBFGS in float64. A seed that
    lands in a poor local minimum (it happens for [2, 1, 1]) is replaced by the next one."""
    for seed in range(5):
        torch.manual_seed(seed)
        x = torch.rand(600, 2, dtype=torch.float64) * 2 - 1
        y = paper_toy(x)
        model = KAN([2, 1, 1], grid_size=5).double()
        lbfgs(model, x, y, steps=15, grid_updates=(0, 5, 10))
        with torch.no_grad():
            rmse = float(((model(x) - y) ** 2).mean().sqrt())
        if rmse < 2e-2:
            return model, x, y
    pytest.fail(f"no seed trained the [2, 1, 1] KAN below RMSE 2e-2 (last {rmse:.3g})")


def test_paper_toy_formula_recovered():
    start = time.time()
    model, x, y = train_paper_toy()
    fits = sym.auto_symbolic(model, x)
    assert sorted(f.name for f in fits.values()) == ["exp", "sin", "x^2"]
    composed = sym.symbolic_formula(model, fits, ["x0", "x1"], ["y"], precision=None)["y"]
    refined = sym.refine_formula(composed, x, y, ["x0", "x1"], precision=4)
    assert equivalent(refined.expr, TRUTH), refined.expr
    assert refined.expr == TRUTH  # the canonical form prints as the truth does
    gen = torch.Generator().manual_seed(123)
    x_test = torch.rand(1000, 2, generator=gen, dtype=torch.float64) * 2 - 1
    assert sym.formula_rmse(refined.expr, x_test, paper_toy(x_test)) < 1e-4
    # Without refit and snapping the composed network is only as good as the KAN.
    rounded = sym.symbolic_formula(model, fits, ["x0", "x1"], ["y"], precision=4)["y"]
    assert sym.formula_rmse(rounded, x_test, paper_toy(x_test)) < 5e-2
    assert time.time() - start < 60


# ---------------------------------------------------------------------------------------------
# The kan-symbolic entry


def test_symbolic_config_composes(make_cfg):
    cfg = make_cfg("ckpt_path=x.ckpt", config_name="symbolic")
    assert cfg.ckpt_path == "x.ckpt" and cfg.split == "test" and cfg.precision == 4
    assert cfg.library is None and 0 < cfg.r2_threshold <= 1


def test_symbolic_from_checkpoint_writes_files(make_cfg, tmp_path):
    from kan_lightning.commands.symbolic import symbolic_from_checkpoint
    from kan_lightning.commands.train import train

    train_dir = tmp_path / "train"
    record = train(
        make_cfg(
            "debug=fast",
            "trainer.enable_progress_bar=false",
            "model.layers_hidden=[2,1,1]",
            "data.function=paper_exp_sin",
            "data.normalize_inputs=true",
            "data.normalize_targets=true",
            output_dir=train_dir,
        )
    )
    assert record["status"] == "completed"
    out_dir = tmp_path / "symbolic"
    cfg = make_cfg(f"ckpt_path={train_dir}/checkpoints/last.ckpt", "n_points=300", "library=[x,x2,sin,exp]", output_dir=out_dir, config_name="symbolic")
    result = symbolic_from_checkpoint(cfg)
    assert math.isfinite(result["rmse"]) and math.isfinite(result["kan_rmse"])
    assert {e["name"] for e in result["edges"]} <= {"0", "x", "x^2", "sin", "exp"}
    saved = json.loads((out_dir / "formula.json").read_text())
    assert saved["formula"] == str(result["expr"])
    assert sympy.sympify(saved["srepr"]) == result["expr"]  # srepr round-trips
    assert (out_dir / "formula.txt").read_text().startswith("y = ")
    assert (out_dir / "network.png").stat().st_size > 1000
    svg = make_cfg(f"ckpt_path={train_dir}/checkpoints/last.ckpt", "n_points=300", "library=[x,x2,sin,exp]", "figure_format=svg",
                   output_dir=tmp_path / "svg", config_name="symbolic")
    assert symbolic_from_checkpoint(svg)["figure"].endswith("network.svg")
    assert (tmp_path / "svg" / "network.svg").read_bytes().startswith(b"<?xml")


@pytest.mark.slow
def test_paper_toy_end_to_end_with_normalized_data(make_cfg, tmp_path):
    """train(experiment=paper_toy, [2, 1, 1], float64, normalized inputs and targets), then
    kan-symbolic: the formula is exact in the original units."""
    from kan_lightning.commands.symbolic import symbolic_from_checkpoint
    from kan_lightning.commands.train import train

    train_dir = tmp_path / "train"
    train(
        make_cfg(
            "experiment=paper_toy",
            "model.layers_hidden=[2,1,1]",
            "trainer.precision=64-true",
            "trainer.enable_progress_bar=false",
            "trainer.max_epochs=30",
            "logger=none",
            "data.normalize_inputs=true",
            "data.normalize_targets=true",
            output_dir=train_dir,
        )
    )
    out_dir = tmp_path / "symbolic"
    result = symbolic_from_checkpoint(make_cfg(f"ckpt_path={train_dir}/checkpoints/last.ckpt", output_dir=out_dir, config_name="symbolic"))
    assert equivalent(result["expr"], TRUTH), result["expr"]
    assert result["rmse"] < 1e-4
