"""From a trained KAN to a formula: fit every edge to a library of symbolic functions, compose
the network into a sympy expression, refit its constants on data and round them.

The steps, as in the KAN paper (and pykan's ``suggest_symbolic`` / ``auto_symbolic`` /
``symbolic_formula``):

1. :func:`suggest_symbolic` fits one edge ``phi_{j,i}`` of layer ``l``, sampled on the layer's
   actual inputs, to ``c * f(a * x + b) + d`` for every ``f`` of the :data:`LIBRARY` (a grid
   search over ``a, b`` with ``c, d`` by linear least squares, then a local least-squares
   refinement) and ranks the fits with :func:`rank_fits`: the best ``R^2`` unless a simpler
   function (lower complexity) is within ``tolerance`` of it.
2. :func:`auto_symbolic` does that for every edge and returns the chosen fits as a dict
   ``{(l, j, i): SymbolicEdge}``; the network itself is not modified. Masked (pruned) edges are
   skipped, edges that are (nearly) constant become the constant ``"0"`` function.
3. :func:`symbolic_formula` composes the fits layer by layer (``x_{l+1, j} = sum_i
   phi_{l,j,i}(x_{l,i})``) into one sympy expression per output, simplified and rounded.
4. :func:`refine_formula` refits the expression's numeric constants on data
   (``scipy.optimize.least_squares``), snaps those that are close to simple values (integers,
   small fractions, multiples of pi) when the fit does not suffer, and rounds the rest;
   :func:`formula_rmse` measures the result on data with ``sympy.lambdify``.

A fitted edge replaces the *whole* edge function (base branch plus spline), so the fits are made
on the values of ``phi`` itself. Only ``kan_lightning.nn`` is imported from the project.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import sympy
import torch
from torch import Tensor

EdgeKey = tuple[int, int, int]  # (layer, output j, input i)


# ---------------------------------------------------------------------------------------------
# The library


@dataclass(frozen=True)
class SymbolicFunction:
    """A candidate edge function ``f``: numpy and torch implementations, a sympy expression
    builder and a complexity (a rough count of operations; lower is simpler).

    ``affine`` says whether ``f`` is fitted as ``c * f(a x + b) + d`` (True) or as
    ``c * f(x) + d`` (``"x"`` and ``"0"``, for which ``a`` and ``b`` add nothing).
    """

    name: str
    numpy: Callable[[np.ndarray], np.ndarray]
    torch: Callable[[Tensor], Tensor]
    sympy: Callable[[sympy.Expr], sympy.Expr]
    complexity: int
    affine: bool = True


def _np_sigmoid(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * u))  # no overflow for large |u|


def _library(*functions: SymbolicFunction) -> dict[str, SymbolicFunction]:
    return {f.name: f for f in functions}


#: All candidate functions, simplest first within each complexity (ties in the selection rule
#: go to the earlier entry).
LIBRARY: dict[str, SymbolicFunction] = _library(
    SymbolicFunction("0", lambda u: np.zeros_like(u), torch.zeros_like, lambda u: sympy.Integer(0), 0, affine=False),
    SymbolicFunction("x", lambda u: u, lambda u: u, lambda u: u, 1, affine=False),
    SymbolicFunction("x^2", lambda u: u**2, lambda u: u**2, lambda u: u**2, 2),
    SymbolicFunction("sin", np.sin, torch.sin, sympy.sin, 2),
    SymbolicFunction("cos", np.cos, torch.cos, sympy.cos, 2),
    SymbolicFunction("exp", np.exp, torch.exp, sympy.exp, 2),
    SymbolicFunction("log", np.log, torch.log, sympy.log, 2),
    SymbolicFunction("sqrt", np.sqrt, torch.sqrt, sympy.sqrt, 2),
    SymbolicFunction("1/x", lambda u: 1.0 / u, lambda u: 1.0 / u, lambda u: 1 / u, 2),
    SymbolicFunction("x^3", lambda u: u**3, lambda u: u**3, lambda u: u**3, 3),
    SymbolicFunction("tanh", np.tanh, torch.tanh, sympy.tanh, 3),
    SymbolicFunction("abs", np.abs, torch.abs, sympy.Abs, 3),
    SymbolicFunction("gaussian", lambda u: np.exp(-(u**2)), lambda u: torch.exp(-(u**2)), lambda u: sympy.exp(-(u**2)), 3),
    SymbolicFunction("1/x^2", lambda u: 1.0 / u**2, lambda u: 1.0 / u**2, lambda u: 1 / u**2, 3),
    SymbolicFunction("sigmoid", _np_sigmoid, torch.sigmoid, lambda u: 1 / (1 + sympy.exp(-u)), 3),
    SymbolicFunction("x^4", lambda u: u**4, lambda u: u**4, lambda u: u**4, 4),
    SymbolicFunction("arctan", np.arctan, torch.atan, sympy.atan, 4),
)


#: Other spellings of library names (``x2`` needs no quoting in a Hydra override, ``x^2`` does).
ALIASES: dict[str, str] = {
    "zero": "0",
    "x1": "x",
    "x2": "x^2",
    "x**2": "x^2",
    "x3": "x^3",
    "x**3": "x^3",
    "x4": "x^4",
    "x**4": "x^4",
    "inv": "1/x",
    "inv2": "1/x^2",
    "1/x**2": "1/x^2",
    "gauss": "gaussian",
    "atan": "arctan",
}


def get_library(names: Iterable[str] | None = None) -> dict[str, SymbolicFunction]:
    """The library restricted to ``names`` (``None``: all of it), in library order.

    Names may also be spelled as in :data:`ALIASES` (``x2`` for ``x^2``). The constant ``"0"``
    is always included: it is how (nearly) dead edges are expressed.
    """
    if names is None:
        return dict(LIBRARY)
    if isinstance(names, str):
        names = [names]
    names = [ALIASES.get(str(n).strip(), str(n).strip()) for n in names]
    unknown = [n for n in names if n not in LIBRARY]
    if unknown:
        raise ValueError(f"unknown symbolic function(s) {unknown}; known: {', '.join(LIBRARY)}")
    wanted = set(names) | {"0"}
    return {name: fn for name, fn in LIBRARY.items() if name in wanted}


# ---------------------------------------------------------------------------------------------
# One fitted edge


@dataclass
class SymbolicEdge:
    """An edge function fitted as ``c * f(a * x + b) + d`` with ``f = LIBRARY[name]``."""

    name: str
    a: float
    b: float
    c: float
    d: float
    r2: float
    complexity: int

    @property
    def function(self) -> SymbolicFunction:
        return LIBRARY[self.name]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The fitted function on a numpy array."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            return self.c * self.function.numpy(self.a * x + self.b) + self.d

    def torch(self, x: Tensor) -> Tensor:
        """The fitted function on a tensor."""
        return self.c * self.function.torch(self.a * x + self.b) + self.d

    def sympy(self, x: sympy.Expr) -> sympy.Expr:
        """The fitted function of the sympy expression ``x``."""
        f = self.function
        Float = sympy.Float
        if self.name == "0":
            return Float(self.d)
        inner = x if not f.affine else Float(self.a) * x + Float(self.b)
        return Float(self.c) * f.sympy(inner) + Float(self.d)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.c:.4g}*{self.name}({self.a:.4g}*x{self.b:+.4g}){self.d:+.4g} (R^2={self.r2:.6f})"


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination; a constant ``y`` has ``R^2 = 1`` if matched, else 0."""
    y = np.asarray(y, dtype=np.float64)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if not math.isfinite(ss_res):
        return -math.inf
    scale = max(1.0, float(np.mean(y**2))) * y.size
    if ss_tot <= 1e-24 * scale:
        return 1.0 if ss_res <= 1e-20 * scale else 0.0
    return 1.0 - ss_res / ss_tot


def _linear_fit(g: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``c, d`` minimizing ``|c g + d - y|``."""
    with np.errstate(all="ignore"):
        gm, ym = g.mean(), y.mean()
        gc = g - gm
        var = float(gc @ gc)
        c = float(gc @ (y - ym)) / var if 0 < var < math.inf else 0.0
    if not math.isfinite(c):
        c = 0.0
    return c, float(ym - c * gm)


def _grid_r2(fn: SymbolicFunction, z: np.ndarray, y: np.ndarray, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """``R^2`` of the best ``c f(alpha z + beta) + d`` for every ``(alpha, beta)``: the squared
    correlation of ``f(alpha z + beta)`` with ``y``; ``-inf`` where ``f`` is not finite.

    ``y`` ``(N,)`` gives ``(A, B)``; ``y`` ``(N, J)`` (several edges on the same input) gives
    ``(A, B, J)`` from one evaluation of ``f`` on the grid."""
    with np.errstate(all="ignore"):
        g = fn.numpy(alphas[:, None, None] * z + betas[None, :, None])  # (A, B, N)
        finite = np.isfinite(g).all(-1)
        g = np.where(np.isfinite(g), g, 0.0)
        gc = g - g.mean(-1, keepdims=True)
        yc = y - y.mean(0)
        cov = gc @ yc
        var_g = np.einsum("abn,abn->ab", gc, gc)
        var_y = np.einsum("n...,n...->...", yc, yc)
        if y.ndim == 2:
            finite, var_g = finite[..., None], var_g[..., None]
        r2 = cov**2 / (var_g * var_y)
    r2 = np.where(finite & (var_g > 1e-300) & np.isfinite(r2), r2, -np.inf)
    return r2


# exp(a x + b) = e^b exp(a x): the shift only rescales c, so it is not fitted.
_SHIFT_IS_SCALE = {"exp"}


def _refine(fn: SymbolicFunction, z: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> tuple[float, float]:
    """Local least squares over ``(alpha, beta)``, with ``c, d`` solved linearly inside
    (variable projection)."""
    from scipy.optimize import least_squares

    big = 1e3 * (1.0 + float(np.abs(y).max()))
    fixed_beta = fn.name in _SHIFT_IS_SCALE

    def residual(p: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            g = fn.numpy(p[0] * z + (beta if fixed_beta else p[1]))
        if not np.isfinite(g).all():
            return np.full_like(y, big)
        c, d = _linear_fit(g, y)
        return c * g + d - y

    start = np.array([alpha] if fixed_beta else [alpha, beta])
    try:
        result = least_squares(residual, start, method="lm", max_nfev=200, xtol=1e-12, ftol=1e-12)
    except (ValueError, np.linalg.LinAlgError):
        return alpha, beta
    return float(result.x[0]), beta if fixed_beta else float(result.x[1])


def fit_function(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    fn: SymbolicFunction | str,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 41,
    grid_points: int = 256,
    refine: bool = True,
) -> SymbolicEdge:
    """Fit ``y ~= c * f(a * x + b) + d`` (pykan's ``fit_params``).

    ``a, b`` are searched on a ``grid_number`` x ``grid_number`` grid over ``a_range`` x
    ``b_range`` in units of the standardized input ``(x - mean) / std`` (so the search adapts to
    the range of ``x``; ``grid_points`` samples are used for it), ``c, d`` follow by linear least
    squares, then ``a, b`` are refined by least squares on all points.
    """
    y = _as_numpy(y).ravel()
    return fit_function_shared(x, y[:, None], fn, a_range, b_range, grid_number, grid_points, refine)[0]


def fit_function_shared(
    x: np.ndarray | Tensor,
    ys: np.ndarray | Tensor,
    fn: SymbolicFunction | str,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 41,
    grid_points: int = 256,
    refine: bool = True,
) -> list[SymbolicEdge]:
    """:func:`fit_function` for the columns of ``ys`` ``(N, J)``, all sampled at the same ``x``
    (the edges leaving one input of a layer): the grid search evaluates ``f`` once for all of
    them; the same fits as one call per column."""
    fn = LIBRARY[fn] if isinstance(fn, str) else fn
    x = _as_numpy(x).ravel()
    ys = _as_numpy(ys)
    if ys.ndim != 2 or ys.shape[0] != x.size or x.size == 0:
        raise ValueError(f"x and y must be non-empty and of the same length, got {x.shape} and {ys.shape[:1]}")
    keep = np.isfinite(x) & np.isfinite(ys).all(axis=1)
    if ys.shape[1] > 1 and not keep.all():  # rows to drop differ per column: one at a time
        return [fit_function_shared(x, ys[:, j : j + 1], fn, a_range, b_range, grid_number, grid_points, refine)[0] for j in range(ys.shape[1])]
    x, ys = x[keep], ys[keep]
    if fn.name == "0":
        return [SymbolicEdge("0", 0.0, 0.0, 0.0, float(y.mean()), r2_score(y, np.full_like(y, float(y.mean()))), fn.complexity) for y in ys.T]
    if not fn.affine:  # "x"
        out = []
        for y in ys.T:
            c, d = _linear_fit(x, y)
            out.append(SymbolicEdge(fn.name, 1.0, 0.0, c, d, r2_score(y, c * x + d), fn.complexity))
        return out

    mean, std = float(x.mean()), float(x.std())
    std = std if std > 0 else 1.0
    z = (x - mean) / std
    step = max(1, z.size // grid_points)
    order = np.argsort(z)[::step]
    alphas = np.linspace(*a_range, grid_number)
    betas = np.linspace(*b_range, grid_number)
    r2_all = _grid_r2(fn, z[order], ys[order], alphas, betas)  # (A, B, J)
    return [_finish_fit(fn, z, y, mean, std, alphas, betas, r2_all[..., j], refine) for j, y in enumerate(ys.T)]


def _finish_fit(fn: SymbolicFunction, z: np.ndarray, y: np.ndarray, mean: float, std: float,
                alphas: np.ndarray, betas: np.ndarray, r2: np.ndarray, refine: bool) -> SymbolicEdge:
    """From the grid's ``R^2`` to the fit: the best grid point, refined, ``c, d`` by least squares."""
    if not np.isfinite(r2).any():
        return SymbolicEdge(fn.name, 1.0, 0.0, 0.0, float(y.mean()), -math.inf, fn.complexity)
    ia, ib = np.unravel_index(int(np.argmax(r2)), r2.shape)
    alpha, beta = float(alphas[ia]), float(betas[ib])
    candidates = [(alpha, beta)]
    if refine:
        candidates.append(_refine(fn, z, y, alpha, beta))
    best = None
    for alpha, beta in candidates:
        with np.errstate(all="ignore"):
            g = fn.numpy(alpha * z + beta)
        if not np.isfinite(g).all():
            continue
        c, d = _linear_fit(g, y)
        score = r2_score(y, c * g + d)
        if best is None or score > best[0]:
            best = (score, alpha, beta, c, d)
    if best is None:
        return SymbolicEdge(fn.name, 1.0, 0.0, 0.0, float(y.mean()), -math.inf, fn.complexity)
    score, alpha, beta, c, d = best
    # Back to the original input: alpha * (x - mean) / std + beta = a x + b.
    a = alpha / std
    b = beta - alpha * mean / std
    if fn.name in _SHIFT_IS_SCALE and abs(b) < 700:
        c, b = c * math.exp(b), 0.0  # c exp(a x + b) = (c e^b) exp(a x)
    return SymbolicEdge(fn.name, a, b, c, d, score, fn.complexity)


def rank_fits(fits: Sequence[SymbolicEdge], tolerance: float = 1e-4) -> list[SymbolicEdge]:
    """Order fits best first by the selection rule.

    The fits whose ``R^2`` is within ``tolerance`` of the best ``R^2`` are *eligible*; they come
    first, simplest (lowest complexity) first, ties in library order. The rest follow by
    decreasing ``R^2``. So the first fit is the best one unless a simpler function is almost
    as good.
    """
    fits = [f for f in fits if f is not None]
    if not fits:
        return []
    order = {name: k for k, name in enumerate(LIBRARY)}
    best = max(f.r2 for f in fits)
    eligible = [f for f in fits if f.r2 >= best - tolerance]
    rest = [f for f in fits if f.r2 < best - tolerance]
    eligible.sort(key=lambda f: (f.complexity, order.get(f.name, len(order))))
    rest.sort(key=lambda f: -f.r2)
    return eligible + rest


def fit_edge(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    library: Mapping[str, SymbolicFunction] | Iterable[str] | None = None,
    tolerance: float = 1e-4,
    **fit_kwargs,
) -> list[SymbolicEdge]:
    """Fit samples ``(x, y)`` of one edge to every library function; ranked by :func:`rank_fits`."""
    library = _resolve_library(library)
    fits = [fit_function(x, y, fn, **fit_kwargs) for fn in library.values()]
    return rank_fits(fits, tolerance)


# ---------------------------------------------------------------------------------------------
# Edges of a network


def _as_numpy(v: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(v, Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


def _resolve_library(library) -> dict[str, SymbolicFunction]:
    if library is None:
        return dict(LIBRARY)
    if isinstance(library, Mapping):
        return dict(library)
    return get_library(library)


def _model_inputs(model: torch.nn.Module, x: Tensor | np.ndarray) -> Tensor:
    param = next(model.parameters())
    x = torch.as_tensor(x)
    return x.to(device=param.device, dtype=param.dtype).reshape(-1, model.layers[0].in_features)


@torch.no_grad()
def edge_samples(model: torch.nn.Module, x: Tensor | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, its inputs ``(N, in)`` and its edge values ``(N, out, in)`` on ``x`` (numpy)."""
    acts = model.activations(_model_inputs(model, x))
    return [(_as_numpy(inputs), _as_numpy(phi)) for inputs, phi in acts]


def suggest_symbolic(
    model: torch.nn.Module,
    x: Tensor | np.ndarray,
    layer: int,
    i: int,
    j: int,
    top_k: int = 5,
    library: Mapping[str, SymbolicFunction] | Iterable[str] | None = None,
    tolerance: float = 1e-4,
    **fit_kwargs,
) -> list[SymbolicEdge]:
    """The ``top_k`` best symbolic fits of edge ``phi_{j,i}`` (input ``i``, output ``j``) of
    layer ``layer``, sampled on the layer's inputs when the network sees ``x``; first is best."""
    samples = edge_samples(model, x)
    if not 0 <= layer < len(samples):
        raise IndexError(f"layer {layer} out of range for a network of {len(samples)} layers")
    inputs, phi = samples[layer]
    if not (0 <= i < phi.shape[2] and 0 <= j < phi.shape[1]):
        raise IndexError(f"edge (j={j}, i={i}) out of range for layer {layer} of shape (out={phi.shape[1]}, in={phi.shape[2]})")
    ranked = fit_edge(inputs[:, i], phi[:, j, i], library, tolerance, **fit_kwargs)
    return ranked[:top_k]


def auto_symbolic(
    model: torch.nn.Module,
    x: Tensor | np.ndarray,
    library: Mapping[str, SymbolicFunction] | Iterable[str] | None = None,
    r2_threshold: float = 0.99,
    tolerance: float = 1e-4,
    zero_threshold: float = 1e-3,
    verbose: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **fit_kwargs,
) -> dict[EdgeKey, SymbolicEdge]:
    """Fix every live edge to a symbolic function: ``{(layer, j, i): SymbolicEdge}``.

    ``progress(done, total)`` is called after each edge. Edges below ``r2_threshold`` are
    reported in one warning (the count and the first few), not one warning each.

    Masked (pruned) edges are left out. An edge whose spread (std of ``phi`` over ``x``) is at
    most ``zero_threshold`` times the largest spread in its layer becomes the constant ``"0"``
    function (its mean). Otherwise the first fit of :func:`rank_fits` is taken; if no function
    reaches ``r2_threshold`` the best ``R^2`` is taken instead and a warning names the edge.
    The network itself is not changed.
    """
    library = _resolve_library(library)
    fits: dict[EdgeKey, SymbolicEdge] = {}
    poor: list[str] = []
    total, done = live_edges(model), 0
    for l, (inputs, phi) in enumerate(edge_samples(model, x)):
        mask = model.layers[l].mask.detach().cpu().numpy()
        spread = phi.std(axis=0)  # (out, in)
        live = spread[mask > 0]
        largest = float(live.max()) if live.size else 0.0
        for i in range(phi.shape[2]):
            outputs = [j for j in range(phi.shape[1]) if mask[j, i] != 0]
            fitted = [j for j in outputs if spread[j, i] > zero_threshold * largest]
            # every library function against all the edges leaving input i at once
            per_function = [fit_function_shared(inputs[:, i], phi[:, fitted, i], fn, **fit_kwargs) for fn in library.values()] if fitted else []
            ranked_by_edge = {j: rank_fits([fits_j[k] for fits_j in per_function], tolerance) for k, j in enumerate(fitted)}
            for j in outputs:
                if j not in ranked_by_edge:
                    fit = fit_function(inputs[:, i], phi[:, j, i], LIBRARY["0"])
                else:
                    ranked = ranked_by_edge[j]
                    fit = ranked[0]
                    if fit.r2 < r2_threshold:
                        best = max(ranked, key=lambda f: f.r2)
                        poor.append(f"(layer={l}, j={j}, i={i}) best {best.name}: {best.r2:.4f}")
                        fit = best
                fits[(l, j, i)] = fit
                done += 1
                if progress is not None:
                    progress(done, total)
                if verbose:
                    print(f"fixing (layer={l}, j={j}, i={i}) with {fit.name}, R^2={fit.r2:.6f}")
    if poor:
        more = f" and {len(poor) - 3} more" if len(poor) > 3 else ""
        warnings.warn(
            f"{len(poor)} edge(s) where no library function reaches R^2 >= {r2_threshold}, using the "
            f"best fit anyway: edge {'; edge '.join(poor[:3])}{more}",
            stacklevel=2,
        )
    return dict(sorted(fits.items()))  # layer, then output, then input


def live_edges(model: torch.nn.Module) -> int:
    """The number of edges a KAN has left (its masks' ones)."""
    return int(sum(int((layer.mask > 0).sum()) for layer in model.layers))


# ---------------------------------------------------------------------------------------------
# The formula


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
    x = _as_numpy(x)
    x = x.reshape(x.shape[0], -1)
    y = _as_numpy(y).reshape(-1)
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

    x = _as_numpy(x)
    x = x.reshape(x.shape[0], -1)
    y = _as_numpy(y).reshape(-1)
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
