"""kan-symbolic stays bounded: shared-input fits, progress, one warning, capped refits."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sympy
import torch

from kan_lightning.analysis import formulas as sym
from kan_lightning.nn import KAN


def test_shared_fits_recover_closed_forms_and_match_single_fits():
    """Edges leaving one input, fitted together: each finds its own closed form (R^2 ~ 1, the
    known a, b), and the fits equal those of one call per edge (to rounding)."""
    x = np.linspace(-1, 1, 400)
    ys = np.stack([3 * np.sin(2 * x + 1) - 0.5, 0.7 * np.exp(1.5 * x), 2 * (x - 0.3) ** 2 + 1], axis=1)
    expected = ["sin", "exp", "x^2"]
    for fn_name, col in zip(expected, range(3)):
        shared = sym.fit_function_shared(x, ys, fn_name)
        single = sym.fit_function(x, ys[:, col], fn_name)
        # the same fit up to rounding (batched and single least squares may differ in the last ulp)
        assert (shared[col].name, shared[col].complexity) == (single.name, single.complexity)
        for field in ("a", "b", "c", "d", "r2"):
            assert getattr(shared[col], field) == pytest.approx(getattr(single, field), rel=1e-9, abs=1e-12), field
        assert single.r2 > 1 - 1e-9, single
    sin_fit = sym.fit_function_shared(x, ys, "sin")[0]
    assert abs(sin_fit.a) == pytest.approx(2.0, rel=1e-6)  # c sin(a x + b): a sign may flip with b
    assert np.abs(sin_fit(x) - ys[:, 0]).max() < 1e-6


def test_auto_symbolic_reports_progress_and_warns_once():
    torch.manual_seed(0)
    model = KAN([2, 4, 3, 1], grid_size=5)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fits = sym.auto_symbolic(model, torch.rand(300, 2) * 2 - 1, library=["x", "x2"], r2_threshold=1.0, progress=lambda d, t: seen.append((d, t)))
    assert len(fits) == sym.live_edges(model) == 2 * 4 + 4 * 3 + 3
    assert seen == [(k, len(fits)) for k in range(1, len(fits) + 1)]
    poor = [w for w in caught if "no library function reaches" in str(w.message)]
    assert len(poor) == 1 and "more" in str(poor[0].message)
    assert list(fits) == sorted(fits)


def test_refine_skips_refits_of_formulas_with_too_many_constants():
    x0 = sympy.Symbol("x0")
    expr = sum(sympy.Float(0.1 * (k + 1)) * sympy.sin(sympy.Float(1.0 + k / 10) * x0) for k in range(30))
    xs = np.linspace(-1, 1, 50)[:, None]
    ys = sympy.lambdify(x0, expr)(xs[:, 0])
    capped = sym.refine_formula(expr, xs, ys, ["x0"], max_constants=10)
    assert capped.skipped and "60 constants, more than max_constants=10" in capped.skipped
    assert capped.snapped == [] and math.isfinite(capped.rmse)
    assert sym.refine_formula(sympy.Float(2.0) * x0, xs, 2 * xs[:, 0], ["x0"], max_constants=10).skipped is None
