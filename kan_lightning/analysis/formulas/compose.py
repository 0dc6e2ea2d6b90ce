"""From fitted edges to one formula: compose, simplify, refit the constants, snap and round."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import numpy as np
import sympy
import torch
from torch import Tensor

from .edge_fits import EdgeKey, SymbolicEdge, as_numpy


def default_names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 and prefix == "y" else [f"{prefix}{k}" for k in range(n)]


def symbolic_formula(
    model: torch.nn.Module,
    fits: Mapping[EdgeKey, SymbolicEdge],
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    precision: int | None = 4,
    simplify: bool = True,
) -> dict[str, sympy.Expr]:
    """Compose the fitted edges into one expression per output: ``{output_name: expr}``.

    Layer by layer, node ``j`` of the next layer is the sum of ``fit(x_i)`` over the layer's
    live (unmasked) edges ``(j, i)``. Every live edge needs a fit (see :func:`auto_symbolic`).
    With ``simplify`` the expression is brought into a canonical form (:func:`simplify_formula`);
    with ``precision`` its constants are rounded to that many decimals (``None``: not rounded).
    """
    widths = [model.layers[0].in_features] + [layer.out_features for layer in model.layers]
    input_names = list(input_names or default_names("x", widths[0]))
    output_names = list(output_names or default_names("y", widths[-1]))
    if len(input_names) != widths[0] or len(output_names) != widths[-1]:
        raise ValueError(
            f"need {widths[0]} input and {widths[-1]} output names, got {input_names} and {output_names}"
        )
    nodes: list[sympy.Expr] = [sympy.Symbol(name) for name in input_names]
    for l, layer in enumerate(model.layers):
        mask = layer.mask.detach().cpu()
        nxt = []
        for j in range(layer.out_features):
            total = sympy.Integer(0)
            for i in range(layer.in_features):
                if mask[j, i] == 0:
                    continue
                key = (l, j, i)
                if key not in fits:
                    raise KeyError(f"edge {key} (layer, j, i) is live but has no symbolic fit; run auto_symbolic first")
                total = total + fits[key].sympy(nodes[i])
            nxt.append(total)
        nodes = nxt
    out = {}
    for name, expr in zip(output_names, nodes):
        if simplify:
            expr = simplify_formula(expr)
        if precision is not None:
            expr = round_constants(expr, precision)
        out[name] = expr
    return out


def _pull_exp_constant(e: sympy.Expr) -> sympy.Expr:
    const, rest = e.args[0].as_coeff_Add()
    if const != 0 and rest != 0 and const.is_Float:
        return sympy.exp(const) * sympy.exp(rest)
    return e


def _wrap_phase(e: sympy.Expr) -> sympy.Expr:
    # sin/cos(a x + b): bring a numeric phase b into (-pi, pi].
    const, rest = e.args[0].as_coeff_Add()
    if const.is_Float and rest != 0:
        b = float(const)
        wrapped = b - 2 * math.pi * round(b / (2 * math.pi))
        if wrapped != b:
            return e.func(rest + sympy.Float(wrapped))
    return e


_EXPAND = dict(deep=True, mul=True, multinomial=True, power_exp=False, power_base=False, log=False)


def simplify_formula(expr: sympy.Expr) -> sympy.Expr:
    """A cheap canonical form that merges the redundant constants of composed edges: expand
    products and integer powers (also inside function arguments), pull additive constants out
    of ``exp`` (``exp(k + g) = e^k exp(g)``) and wrap sin/cos phases into ``(-pi, pi]``."""
    expr = sympy.expand(expr, **_EXPAND)
    expr = expr.replace(lambda e: isinstance(e, sympy.exp), _pull_exp_constant)
    expr = expr.replace(lambda e: isinstance(e, (sympy.sin, sympy.cos)), _wrap_phase)
    return sympy.expand(expr, **_EXPAND)


def round_constants(expr: sympy.Expr, precision: int = 4) -> sympy.Expr:
    """Round every float constant to ``precision`` decimals; whole numbers become integers
    (so ``1.0*x`` reads ``x`` and ``0.0*x`` disappears)."""
    replace = {}
    for f in expr.atoms(sympy.Float):
        value = round(float(f), precision)
        replace[f] = sympy.Integer(int(value)) if value == int(value) else sympy.Float(value, max(15, precision + 2))
    return expr.xreplace(replace)


def _symbols_for(expr: sympy.Expr, variables: Sequence[str | sympy.Symbol] | None, n: int) -> list[sympy.Symbol]:
    if variables is None:
        variables = default_names("x", n)
    by_name = {s.name: s for s in expr.free_symbols}
    return [v if isinstance(v, sympy.Symbol) else by_name.get(str(v), sympy.Symbol(str(v))) for v in variables]


def _evaluate(fn: Callable, x: np.ndarray, params: Sequence[float] = ()) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = fn(*x.T, *params)
    return np.broadcast_to(np.asarray(out, dtype=np.float64), (x.shape[0],))


def formula_rmse(
    expr: sympy.Expr,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    variables: Sequence[str | sympy.Symbol] | None = None,
) -> float:
    """Root-mean-square error of ``expr`` on data (``x``: ``(N, d)``, columns in the order of
    ``variables``, default ``x0, x1, ...``), evaluated with ``sympy.lambdify`` and numpy."""
    x = as_numpy(x)
    x = x.reshape(x.shape[0], -1)
    y = as_numpy(y).reshape(-1)
    symbols = _symbols_for(expr, variables, x.shape[1])
    fn = sympy.lambdify(symbols, expr, "numpy")
    pred = _evaluate(fn, x)
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def _parametrize(expr: sympy.Expr) -> tuple[sympy.Expr, list[sympy.Symbol], list[float]]:
    """Replace every float constant (each occurrence separately) by a fresh symbol."""
    params: list[sympy.Symbol] = []
    values: list[float] = []

    def walk(e: sympy.Expr) -> sympy.Expr:
        if isinstance(e, sympy.Float):
            p = sympy.Symbol(f"_c{len(params)}")
            params.append(p)
            values.append(float(e))
            return p
        if not e.args:
            return e
        return e.func(*(walk(a) for a in e.args))

    return walk(expr), params, values


def _snap_candidates(v: float, tol: float) -> list[sympy.Expr]:
    """Simple numbers near ``v``: integers, fractions with denominator <= 4, k pi / q."""
    out: list[tuple[float, sympy.Expr]] = []
    for q in (1, 2, 3, 4):
        k = round(v * q)
        out.append((abs(v - k / q), sympy.Rational(k, q)))
        kp = round(v * q / math.pi)
        if kp != 0:
            out.append((abs(v - kp * math.pi / q), sympy.Rational(kp, q) * sympy.pi))
    seen, result = set(), []
    for dist, cand in sorted(out, key=lambda t: t[0]):
        if dist <= tol * max(1.0, abs(v)) and cand not in seen:
            seen.add(cand)
            result.append(cand)
    return result


@dataclass
class RefinedFormula:
    """The result of :func:`refine_formula`."""

    expr: sympy.Expr
    rmse: float  # on the data it was refined on, after rounding
    rmse_before: float  # of the input expression on the same data
    snapped: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the refit and snapping were skipped, if they were


def refine_formula(
    expr: sympy.Expr,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    variables: Sequence[str | sympy.Symbol] | None = None,
    precision: int | None = 4,
    refit: bool = True,
    snap: bool = True,
    snap_tolerance: float = 1e-2,
    max_evaluations: int = 20000,
    max_constants: int | None = 80,
) -> RefinedFormula:
    """Make a composed formula exact on data.

    1. ``refit``: least squares (``scipy.optimize.least_squares``) over all float constants of
       ``expr`` (each occurrence a separate parameter), starting from their current values.
    2. ``snap``: each constant within ``snap_tolerance`` (relative) of a simple number (an
       integer, a fraction with denominator <= 4, a multiple of pi / q) is replaced by it when
       the RMSE grows by at most 10 %; then the remaining constants are refit.
    3. ``precision``: the remaining constants are rounded to that many decimals.

    Each least-squares fit evaluates the formula on the data at most about ``max_evaluations``
    times (the Jacobian is estimated by finite differences). A formula with more than
    ``max_constants`` constants is only rounded (each of its fits would take minutes): the
    result's ``skipped`` says so.
    """
    from scipy.optimize import least_squares

    x = as_numpy(x)
    x = x.reshape(x.shape[0], -1)
    y = as_numpy(y).reshape(-1)
    symbols = _symbols_for(expr, variables, x.shape[1])
    rmse_before = formula_rmse(expr, x, y, symbols)
    template, params, values = _parametrize(sympy.expand(expr, **_EXPAND))
    values = np.array(values, dtype=np.float64)
    fn = sympy.lambdify(symbols + params, template, "numpy") if params else None
    big = 1e6 * (1.0 + float(np.abs(y).max()))

    def rmse_of(vals: np.ndarray) -> float:
        pred = _evaluate(fn, x, vals)
        return float(np.sqrt(np.mean((pred - y) ** 2))) if np.isfinite(pred).all() else math.inf

    def fit(vals: np.ndarray, free: np.ndarray) -> np.ndarray:
        if not free.any():
            return vals

        def residual(p: np.ndarray) -> np.ndarray:
            full = vals.copy()
            full[free] = p
            r = _evaluate(fn, x, full) - y
            return np.where(np.isfinite(r), r, big)

        try:
            n_free = int(free.sum())
            method = "lm" if y.size >= n_free else "trf"
            # lm counts iterations (each costs n_free + 1 evaluations), trf every evaluation.
            max_nfev = max(20, max_evaluations // (n_free + 1)) if method == "lm" else max_evaluations
            result = least_squares(residual, vals[free], method=method, max_nfev=max_nfev, xtol=1e-15, ftol=1e-15, gtol=1e-15)
        except (ValueError, np.linalg.LinAlgError):
            return vals
        out = vals.copy()
        out[free] = result.x
        return out if rmse_of(out) <= rmse_of(vals) else vals

    exact: dict[int, sympy.Expr] = {}
    snapped: list[str] = []
    skipped = None
    if fn is not None and max_constants is not None and len(values) > max_constants and (refit or snap):
        skipped = f"{len(values)} constants, more than max_constants={max_constants}: not refit or snapped (prune the network first)"
        refit = snap = False
    if fn is not None:
        free = np.ones(len(values), dtype=bool)
        if refit:
            values = fit(values, free)
        if snap:
            current = rmse_of(values)
            order = np.argsort([min((abs(v - float(c)) for c in _snap_candidates(v, snap_tolerance)), default=math.inf) for v in values])
            for k in order:
                for cand in _snap_candidates(values[k], snap_tolerance):
                    trial = values.copy()
                    trial[k] = float(cand)
                    score = rmse_of(trial)
                    if score <= current * 1.1 + 1e-15:
                        snapped.append(f"{values[k]:.10g} -> {cand}")
                        values, current, exact[k] = trial, score, cand
                        free[k] = False
                        break
            if refit and exact:
                values = fit(values, free)
    replace = {p: exact.get(k, sympy.Float(values[k], 17)) for k, p in enumerate(params)}
    result = template.xreplace(replace)
    result = simplify_formula(result)
    if precision is not None:
        result = round_constants(result, precision)
    return RefinedFormula(result, formula_rmse(result, x, y, symbols), rmse_before, snapped, skipped)


def denormalize_formula(
    expr: sympy.Expr,
    variables: Sequence[str | sympy.Symbol],
    x_shift: Sequence[float] | None = None,
    x_scale: Sequence[float] | None = None,
    y_mean: float = 0.0,
    y_std: float = 1.0,
) -> sympy.Expr:
    """A formula of normalized inputs and targets (``x_n = (x - x_shift) / x_scale``,
    ``y_n = (y - y_mean) / y_std``) as a formula of the original ones:
    ``y = y_std * expr((x - x_shift) / x_scale) + y_mean``."""
    symbols = _symbols_for(expr, variables, len(variables))
    subs = {}
    for k, s in enumerate(symbols):
        shift = float(x_shift[k]) if x_shift is not None else 0.0
        scale = float(x_scale[k]) if x_scale is not None else 1.0
        if shift != 0.0 or scale != 1.0:
            subs[s] = (s - _number(shift)) / _number(scale)
    if subs:
        expr = expr.xreplace(subs)
    if y_std != 1.0 or y_mean != 0.0:
        expr = _number(y_std) * expr + _number(y_mean)
    return simplify_formula(expr) if subs or y_std != 1.0 or y_mean != 0.0 else expr


def _number(v: float) -> sympy.Expr:
    frac = Fraction(v).limit_denominator(1000)
    return sympy.Rational(frac.numerator, frac.denominator) if abs(float(frac) - v) <= 1e-12 * max(1.0, abs(v)) else sympy.Float(v, 17)


def formula_to_dict(expr: sympy.Expr, **extra) -> dict:
    """A JSON-ready record of a formula: ``str``, ``srepr`` and ``latex`` plus ``extra``."""
    return {"formula": str(expr), "srepr": sympy.srepr(expr), "latex": sympy.latex(expr), **extra}


def fits_to_dict(fits: Mapping[EdgeKey, SymbolicEdge]) -> list[dict]:
    """The fitted edges as JSON-ready records (``layer, j, i`` and the fit)."""
    return [{"layer": l, "j": j, "i": i, **fit.to_dict()} for (l, j, i), fit in sorted(fits.items())]
