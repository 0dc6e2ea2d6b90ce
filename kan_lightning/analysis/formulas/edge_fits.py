"""One edge function fitted to the library: ``y ~= c * f(a x + b) + d``, ranked by ``R^2`` and
simplicity."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import sympy
from torch import Tensor

from .library import LIBRARY, SymbolicFunction, resolve_library

EdgeKey = tuple[int, int, int]  # (layer, output j, input i)


def as_numpy(v: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(v, Tensor):
        return v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


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


def fit_function(x: np.ndarray | Tensor, y: np.ndarray | Tensor, fn: SymbolicFunction | str, **search) -> SymbolicEdge:
    """Fit ``y ~= c * f(a * x + b) + d`` (pykan's ``fit_params``); ``search``: the settings of
    the search, as for :func:`fit_function_shared`."""
    y = as_numpy(y).ravel()
    return fit_function_shared(x, y[:, None], fn, **search)[0]


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
    them; the same fits as one call per column.

    ``a, b`` are searched on a ``grid_number`` x ``grid_number`` grid over ``a_range`` x
    ``b_range`` in units of the standardized input ``(x - mean) / std`` (so the search adapts to
    the range of ``x``; ``grid_points`` samples are used for it), ``c, d`` follow by linear least
    squares, then (with ``refine``) ``a, b`` are refined by least squares on all points.
    """
    fn = LIBRARY[fn] if isinstance(fn, str) else fn
    x = as_numpy(x).ravel()
    ys = as_numpy(ys)
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
    library = resolve_library(library)
    fits = [fit_function(x, y, fn, **fit_kwargs) for fn in library.values()]
    return rank_fits(fits, tolerance)
