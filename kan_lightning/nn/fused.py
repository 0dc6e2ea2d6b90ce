"""The ``"fused"`` spline contraction: dense bases built by one compiled loop, one matmul.

At small grids the dense matmul is cheap and the eager kernels' cost is elsewhere: the scatter of
the ``k + 1`` values into a zeroed basis matrix, the int64 slot indices, the saved tensors, and
the fresh allocations (first-touch page faults) of each of these per step. Here
``torch.compile`` (inductor) fuses the knot-interval search, the basis polynomials and the
expansion to the dense ``(N, (G + k) in)`` matrix into two loops (the derivatives computed
with the bases when a backward can follow), and the ``x``-gradient (``grad_out @ coef`` times
the derivatives expanded to their slots, summed over the slots) into one more. Saved for
backward: the re-laid-out coefficients, the basis matrix and the ``k + 1`` derivatives with their
interval index (``4 (G + 2k + 2)`` bytes per input in float32, less than the eager
kernels' ``16 (k + 1)`` at the small grids this path is for). With a SiLU base branch
(``base_weight``) its ``silu(x)`` is one more column block of the basis matrix and ``W_b`` one
more of the coefficients, so the same product computes it; ``silu'(x)`` is kept for backward.

The numbers are the eager kernels' (:mod:`kan_lightning.nn.bases`): the same interval
decision from the actual knots, the same exact polynomials, zeros selected rather than
computed, so the scipy and gradcheck tests hold for it too.

Compiled lazily, on first use (never at import), into graphs static in every size: each
layer width, grid size, order and dtype compiles its own (seconds each), and so do the first
few batch sizes of each before one dynamic-batch graph takes the rest (:func:`_run`). Where
inductor cannot compile (no C++ compiler, an unsupported platform) the first call warns once
and :func:`available` turns ``False``; :func:`~kan_lightning.nn.kernels.spline_contract` then
takes the eager ``"dense"`` contraction. ``contraction="auto"`` takes this path for large
small-grid problems on the CPU when a C++ compiler is on the ``PATH``
(:func:`~kan_lightning.nn.kernels.choose_contraction`).
"""

from __future__ import annotations

import shutil
import types
import warnings
from functools import lru_cache
from types import CodeType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C._dynamo.guards import GlobalStateGuard
from torch.autograd.function import once_differentiable

from . import bases

# False: run the same functions eagerly (tests of the numbers without compile time; debugging).
COMPILE = True
_COMPILED: dict[tuple[str, bool], tuple[Callable, CodeType]] = {}  # (name, dynamic batch) -> compiled, code
_FAILED: list[str] = []  # the reason compiling failed, once it has
# argument signature -> (global state guard, compiled function, its code) of each compiled call
_SEEN: dict[tuple, list[tuple[GlobalStateGuard, Callable, CodeType]]] = {}
_BATCHES: dict[tuple, int] = {}  # per signature without the batch: how many batch sizes
STATIC_BATCHES = 4
RECOMPILE_LIMIT = 1024


def available() -> bool:
    """Whether the compiled path may be used (``False`` once compiling has failed here)."""
    return not _FAILED


def worth_choosing(device: torch.device | str) -> bool:
    """Whether ``contraction="auto"`` may pick this path: compiling is on, has not failed, and
    (CPU only: the CUDA path is unmeasured) inductor's C++ compiler is on the ``PATH``, so
    that machines without one never try."""
    return COMPILE and available() and torch.device(device).type == "cpu" and _cpp_compiler_found()


def reset() -> None:
    """``torch._dynamo.reset()`` (every compiled graph of the process dropped) and this module's
    record of the shapes it compiled, so that they are marked static again (see :func:`_run`)."""
    torch._dynamo.reset()
    _forget()


@lru_cache(maxsize=None)
def _cpp_compiler_found() -> bool:
    import torch._inductor.config as inductor_config

    names = [c for c in inductor_config.cpp.cxx if c]
    return any(shutil.which(name) for name in names)


def _select(values: Tensor, j: Tensor, spline_order: int, n_bases: int) -> Tensor:
    """``(N, G + k, in)`` from the ``k + 1`` per-input ``values`` ``(N, k + 1, in)`` of bases
    ``j - k .. j``: entry ``b`` is ``values[:, b + k - j]`` where that is in ``0..k``, else 0."""
    b = torch.arange(n_bases, dtype=j.dtype, device=j.device).view(1, -1, 1)
    m = b + spline_order - j.unsqueeze(1)
    out = torch.zeros((), dtype=values.dtype, device=values.device)
    for index in range(spline_order, -1, -1):
        out = torch.where(m == index, values[:, index : index + 1], out)
    return out


def _local(x: Tensor, grid: Tensor, tables: dict, spline_order: int, uniform: bool):
    """:func:`bases._local_bases` with the grid's tables computed (and cached) outside, as a
    separate compiled loop: inlined into the expansion, the interval search and polynomials
    would be recomputed for every basis."""
    return bases._local_bases(x, grid, spline_order, uniform, False, tables)


def _local_slopes(x: Tensor, grid: Tensor, tables: dict, spline_order: int, uniform: bool):
    """:func:`_local` with the derivatives: a function of its own, since dynamo counts its
    recompiles (at most 8, then eager) per function, and shapes x dtypes x grid kinds already
    make several."""
    return bases._local_bases(x, grid, spline_order, uniform, True, tables)


def _expand(values: Tensor, j: Tensor, spline_order: int, n_bases: int) -> Tensor:
    """The dense basis matrix ``(N, (G + k) in)``, slot-major columns ``b * in + i``."""
    return _select(values, j, spline_order, n_bases).reshape(values.shape[0], -1)


def _grad_x(derivs: Tensor, j: Tensor, dots: Tensor, spline_order: int, n_bases: int) -> Tensor:
    """``sum_b dots[n, b * in + i] * dB_b/dx (x[n, i])``: ``(N, in)``, from the ``k + 1``
    derivatives of each input expanded to its dense slots (zeros elsewhere) and one reduction
    over the slots, read in ``dots``' own layout (a gather per derivative was 3.5x slower)."""
    slopes = _select(derivs, j, spline_order, n_bases)
    return (dots.view_as(slopes) * slopes).sum(1)


# -- the base branch ``silu(x) @ W_b^T`` in the same product -----------------------------------
# One more block of ``in`` columns in the basis matrix (``silu(x)``, written by the same loops)
# and of coefficients (``W_b``): one matmul instead of two per product, and no separate
# activation and sum (the benchmark's [64, 64, 64] at G = 5: the base branch's own products
# and ops cost ~10% of the whole pass, ~4% as columns of the splines' product). Separate
# functions, not flags: dynamo's recompile limit counts per function.


def _silu_and_slope(x: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(x)
    return x * s, s * (1 + x * (1 - s))


def _local_base(x: Tensor, grid: Tensor, tables: dict, spline_order: int, uniform: bool):
    """:func:`_local` and ``silu(x)`` (no derivative: no backward to x follows)."""
    return (*_local(x, grid, tables, spline_order, uniform), F.silu(x), None)


def _local_slopes_base(x: Tensor, grid: Tensor, tables: dict, spline_order: int, uniform: bool):
    """:func:`_local_slopes` and ``silu(x)`` with its derivative."""
    return (*_local_slopes(x, grid, tables, spline_order, uniform), *_silu_and_slope(x))


def _expand_base(values: Tensor, j: Tensor, act: Tensor, spline_order: int, n_bases: int) -> Tensor:
    """The dense basis matrix with ``silu(x)`` as its last ``in`` columns: ``(N, (G + k + 1) in)``."""
    return torch.cat([_expand(values, j, spline_order, n_bases), act], 1)


def _grad_x_base(derivs, j, dots, act_slope: Tensor, spline_order: int, n_bases: int, scale) -> Tensor:
    """dL/dx of splines and base branch: :func:`_grad_x` on the splines' columns of ``dots``
    (times ``scale`` where the derivatives are in grid units), plus the base block times
    ``silu'(x)``. ``derivs`` is ``None`` for ``k = 0`` (piecewise constant splines)."""
    n_spline = n_bases * act_slope.shape[1]
    grad = dots[:, n_spline:] * act_slope
    if derivs is None:
        return grad
    spline = _grad_x(derivs, j, dots[:, :n_spline], spline_order, n_bases)
    return grad + (spline if scale is None else spline * scale)


def _run(name: str, fn: Callable, batched: int, *args) -> Tensor:
    """``fn`` compiled, or eagerly once compiling has failed.

    Graphs are static in every size (each compiles in seconds). Left to dynamo's automatic
    dynamic shapes, a second layer width turned the width symbolic, and the expansion's flat
    index arithmetic then ran per element: ~35x slower (5.5 ms instead of 0.16 ms at [64]
    inputs, G = 5), which made a KAN [64, 128, 64] slower fused than eager. A symbolic batch
    costs little with one thread but ~8% of a [256, 256] pass with two, so the batch (the
    first dimension of the first ``batched`` arguments) stays static for the first
    ``STATIC_BATCHES`` batch sizes of a shape (the training batch, the last one, the
    evaluation's); one dynamic-batch graph, compiled from a copy of ``fn`` (dynamo tries a
    function's newest graph first, which would shadow the static ones), serves the rest.

    Compiling happens only for a new argument signature (everything dynamo guards on: see
    :func:`_static_signature`, and its global state), with the dimensions marked and dynamo's
    recompile limit (8 per function, then eager) lifted for these functions: a sweep meets
    many shapes in one process. A signature seen before runs its graph directly."""
    if _FAILED or not COMPILE:
        return fn(*args)
    signature = (name, *(_static_signature(arg) for arg in args))
    for state, compiled, code in _SEEN.get(signature, ()):
        if state.check():
            if _graphs_dropped(code):  # torch._dynamo.reset() from outside: start afresh
                _forget()
                break
            return compiled(*args)
    shape = (name, *(_without_batch(s) if i < batched else s for i, s in enumerate(signature[1:])))
    dynamic = _BATCHES.get(shape, 0) >= STATIC_BATCHES
    compiled, code = _compiled(name, fn, dynamic)
    _mark(args, batched if dynamic else 0)
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                        accumulated_recompile_limit=RECOMPILE_LIMIT):
            out = compiled(*args)
    except Exception as exc:  # no C++ compiler, or inductor cannot build this
        _FAILED.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        warnings.warn(f"the fused spline kernel could not be compiled ({_FAILED[0]}); using the eager kernels",
                      RuntimeWarning, stacklevel=2)
        return fn(*args)
    _SEEN.setdefault(signature, []).append((GlobalStateGuard(), compiled, code))
    _BATCHES[shape] = _BATCHES.get(shape, 0) + 1
    return out


def _compiled(name: str, fn: Callable, dynamic_batch: bool) -> tuple[Callable, CodeType]:
    """The compiled function for ``name``, and the code object dynamo keeps its graphs on. The
    dynamic-batch one compiles a copy of ``fn`` with a code object of its own."""
    entry = _COMPILED.get((name, dynamic_batch))
    if entry is None:
        if dynamic_batch:
            fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                    fn.__closure__)
        entry = _COMPILED[(name, dynamic_batch)] = (torch.compile(fn), fn.__code__)
    return entry


def _graphs_dropped(code: CodeType) -> bool:
    """Whether dynamo holds no graph for ``code`` any more (``torch._dynamo.reset()``)."""
    entries = getattr(torch._C._dynamo.eval_frame, "_debug_get_cache_entry_list", None)
    return entries is not None and not entries(code)


def _forget() -> None:
    _SEEN.clear()
    _BATCHES.clear()


def _mark(args: tuple, dynamic: int) -> None:
    """Mark each tensor of ``args`` (in a dict too) static in every dimension, but for a dynamic
    batch in the first ``dynamic`` arguments (dynamo's marks: attributes of the tensors, read
    when it compiles)."""
    for i, arg in enumerate(args):
        for t in arg.values() if isinstance(arg, dict) else (arg,):
            if isinstance(t, Tensor):
                batch = i < dynamic
                torch._dynamo.mark_static(t, list(range(batch, t.dim())))
                if batch:
                    torch._dynamo.maybe_mark_dynamic(t, 0)


def _static_signature(arg):
    """What of ``arg`` a static graph is specialized on (what dynamo guards): a tensor's shape,
    strides, dtype, device, ``requires_grad`` and whether it is an inference tensor (made under
    ``torch.inference_mode``, as Lightning evaluates); a Python value itself; of a dict (the
    grid's tables, whose tensors the grid fixes), its other values, and which uniform
    polynomial tables are cached (:func:`bases._uniform_polynomials`, read while tracing)."""
    if isinstance(arg, Tensor):
        return arg.shape, arg.stride(), arg.dtype, arg.device, arg.requires_grad, arg.is_inference()
    if isinstance(arg, dict):
        return (*((k, v) for k, v in arg.items() if not isinstance(v, Tensor)), len(bases._POLYNOMIALS))
    return arg


def _without_batch(signature):
    """A batched argument's signature with the batch left out (``None``: no tensor)."""
    return signature if signature is None else (signature[0][1:], signature[1][1:], *signature[2:])


class FusedSplineContraction(torch.autograd.Function):
    """``y = basis(x) @ coef_t.T`` with the basis and the ``x``-gradient from compiled loops;
    with ``base_weight`` (``(out, in)``), plus ``silu(x) @ base_weight.T`` in the same product.

    ``grad_enabled``: whether a backward can follow (``torch.is_grad_enabled()`` of the caller;
    inside ``forward`` it is always off). Only then are the ``k + 1`` derivatives computed with
    the bases, in the same loop, and kept for backward: recomputing them there cost a compiled
    call and a second interval search (up to 1.5x the whole pass on small layers)."""

    @staticmethod
    def forward(ctx, x, grid, coef, base_weight, spline_order, uniform, grad_enabled=True):
        n_bases = coef.shape[-1]
        grid = grid.contiguous()
        tables = bases._grid_tables(grid, spline_order, uniform)
        base = base_weight is not None
        need_x = bool(grad_enabled and ctx.needs_input_grad[0])
        slopes = need_x and (spline_order > 0 or base)
        act_slope = None
        coef_t = coef.transpose(1, 2)  # (out, G + k, in): slot-major columns once flattened
        if base:
            name, local = ("local_slopes_base", _local_slopes_base) if slopes else ("local_base", _local_base)
            values, derivs, j, scale, act, act_slope = _run(name, local, 1, x, grid, tables, spline_order, uniform)
            basis = _run("expand_base", _expand_base, 3, values, j, act, spline_order, n_bases)
            coef_t = torch.cat([coef_t, base_weight.unsqueeze(1)], 1)
        else:
            name, local = ("local_slopes", _local_slopes) if slopes else ("local", _local)
            values, derivs, j, scale = _run(name, local, 1, x, grid, tables, spline_order, uniform)
            basis = _run("expand", _expand, 2, values, j, spline_order, n_bases)
        coef_t = coef_t.reshape(coef.shape[0], -1)  # (out, (G + k [+ 1]) in)
        kept = (j, scale) if slopes and derivs is not None else (None, None)
        ctx.save_for_backward(coef_t, basis, derivs, *kept, act_slope)
        ctx.args = (spline_order, n_bases, x.shape, x.dtype, base)
        return basis @ coef_t.T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        coef_t, basis, derivs, j, scale, act_slope = ctx.saved_tensors
        spline_order, n_bases, x_shape, x_dtype, base = ctx.args
        grad_out = grad_out.contiguous()
        grad_x = grad_coef = grad_base = None
        if ctx.needs_input_grad[0]:
            if act_slope is not None:
                grad_x = _run("grad_x_base", _grad_x_base, 4, derivs, j, grad_out @ coef_t, act_slope, spline_order,
                              n_bases, scale)
            elif derivs is None:  # (only for k = 0) piecewise constant: zero derivative almost everywhere
                grad_x = grad_out.new_zeros(x_shape, dtype=x_dtype)
            else:
                grad_x = _run("grad_x", _grad_x, 3, derivs, j, grad_out @ coef_t, spline_order, n_bases)
                if scale is not None:
                    grad_x = grad_x * scale
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            grad_t = (grad_out.T @ basis).view(-1, n_bases + base, x_shape[1])
            grad_coef = grad_t[:, :n_bases].transpose(1, 2)
            grad_base = grad_t[:, n_bases] if base else None
        return grad_x, None, grad_coef, grad_base, None, None, None
