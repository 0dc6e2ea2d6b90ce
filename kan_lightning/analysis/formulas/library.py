"""The candidate edge functions: ``c * f(a x + b) + d`` for every ``f`` of :data:`LIBRARY`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import sympy
import torch
from torch import Tensor


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


def resolve_library(library) -> dict[str, SymbolicFunction]:
    if library is None:
        return dict(LIBRARY)
    if isinstance(library, Mapping):
        return dict(library)
    return get_library(library)
