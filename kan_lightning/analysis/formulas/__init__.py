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

from .compose import (
    RefinedFormula,
    default_names,
    denormalize_formula,
    fits_to_dict,
    formula_rmse,
    formula_to_dict,
    refine_formula,
    round_constants,
    simplify_formula,
    symbolic_formula,
)
from .edge_fits import EdgeKey, SymbolicEdge, fit_edge, fit_function, fit_function_shared, r2_score, rank_fits
from .library import ALIASES, LIBRARY, SymbolicFunction, get_library
from .network_fits import auto_symbolic, edge_samples, live_edges, suggest_symbolic

__all__ = [
    "ALIASES",
    "EdgeKey",
    "LIBRARY",
    "RefinedFormula",
    "SymbolicEdge",
    "SymbolicFunction",
    "auto_symbolic",
    "default_names",
    "denormalize_formula",
    "edge_samples",
    "fit_edge",
    "fit_function",
    "fit_function_shared",
    "fits_to_dict",
    "formula_rmse",
    "formula_to_dict",
    "get_library",
    "live_edges",
    "r2_score",
    "rank_fits",
    "refine_formula",
    "round_constants",
    "simplify_formula",
    "suggest_symbolic",
    "symbolic_formula",
]
