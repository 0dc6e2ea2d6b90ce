"""The fast exact spline branch of a KAN layer: a custom autograd Function.

``spline_contract(x, grid, coef, k)`` returns ``y[n, o] = sum_i sum_m coef[o, i, m] B_m(x[n, i])``
(the spline term of :class:`~kan_lightning.nn.layer.KANLayer`). It evaluates only the ``k + 1``
non-zero B-splines per input, with their derivatives, and differentiates by hand: no autograd
graph through the basis recursion and no dense basis tensor kept for backward.

Bases. The knot interval ``j`` of each input is decided by the actual knots, as in the reference
(uniform grids: a closed-form guess and one gathered knot; other grids: ``searchsorted``). Values
and derivatives come from the power-basis polynomials of the uniform B-spline (uniform grids) or
from de Boor's triangle, whose last stage also gives the derivatives
``dB/dx = k (B_{m,k-1} / (t_{m+k} - t_m) - B_{m+1,k-1} / (t_{m+k+1} - t_{m+1}))``.

Layout. Everything per input is stored "m-major": ``(N, k + 1, in)``, so that the elementwise
work runs over contiguous ``in``-long rows. Input ``x[n, i]`` in knot interval ``j`` (``-1`` below
the grid, ``G + 2k`` above it) touches the padded basis slots ``b' = j + 1 + m``, ``m = 0..k``;
real basis ``b`` sits in slot ``b + k + 1`` and the ``k + 1`` slots on each side are padding
whose coefficients are zero (dense: padding columns are left out of the matmul; local: zero
rows of the coefficient table). So inputs outside the grid and bases that run past its ends need
no masks, and their values may be anything finite.

Saved for backward, per input: the ``k + 1`` values, the ``k + 1`` derivatives (not when ``x``
needs no gradient) and the ``k + 1`` slot indices (int64), plus a re-laid-out copy of the
coefficients (dense: ``(out, (G + k) in)``; local: the padded ``(in (G + 3k + 2), out)`` table).
That is ``16 (k + 1)`` bytes per input in float32, against ``~ 20 k (G + 2k)`` for autograd
through the full Cox-de Boor recursion.

Two contractions, same results to float rounding:

* ``"dense"``: scatter the values into the ``(N, (G + 3k + 2) in)`` padded basis matrix (slot-major
  columns, so the real columns are one contiguous block) and use one matmul. Backward:
  ``grad_out @ coef`` gathered at the ``k + 1`` slots, times the derivatives, gives ``dL/dx``;
  ``grad_out^T @ basis`` (the matrix rebuilt from the saved values) gives ``dL/dcoef``.
* ``"local"``: touch only the ``k + 1`` coefficient rows per input. Forward: ``embedding_bag``
  with the values as per-sample weights. ``dL/dx``: ``torch.sparse.sampled_addmm`` computes
  ``grad_out[n] . coef[:, i, b]`` at the non-zeros only. ``dL/dcoef``: the ``N * in`` inputs are
  sorted by ``(i, j)`` and every coefficient row becomes one bag of ``grad_out`` rows (weighted by
  the values) for one more ``embedding_bag``. When the tables are small, ``k + 1`` bag passes
  over the sorted inputs, one per ``m``, added with a shift, are cheaper (``SEGMENT_MAX_FLOATS``).

:func:`choose_contraction` picks one by a measured rule (see there). Under ``torch.compile`` the
Function runs eagerly between two graph breaks (:func:`_apply`).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import fused
from .bases import _index_dtype, _local_bases, local_bases  # noqa: F401 (local_bases re-exported)
from .knots import is_uniform

CONTRACTIONS = ("auto", "dense", "local", "fused")

# When the local contraction wins, from `python -m kan_lightning.commands.bench` measurements (CPU, one
# thread, k = 3, fwd+bwd, x requiring grad): pairs (minimum N * in, minimum (G + k) / (k + 1)),
# the first pair whose size matches applies; below the last size dense always wins (per-op
# overhead dominates). Batch 1024: [64, 64, 64] local/dense = 1.14 at G = 5, 0.84 at G = 10;
# [256, 256] 1.44 at G = 5, 1.04 at G = 10, 0.69 at G = 20. N * in of 8k-32k: local/dense
# 1.04-1.15 at G = 20, 0.79-0.83 at G = 50. N * in = 512: dense even at G = 30. On CUDA a matmul
# is relatively much faster than gathers and scatters: the CUDA thresholds are estimates.
LOCAL_RULES = {
    "cpu": ((2**16, 3.0), (2**12, 8.0)),
    "cuda": ((2**18, 8.0), (2**15, 24.0)),
}

# The compiled "fused" contraction beats both up to (G + k) / (k + 1) of about 4 (CPU, batch
# 1024, G = 5: fused/dense 0.66 at [64, 64, 64], 0.83 at [256, 256]; G = 20: fused/local 0.98
# at [64, 64, 64]), once compiled: the first call of a new shape compiles for seconds. From
# FUSED_MIN_INPUTS inputs N * in on, a step is long enough (~10 ms) for that to pay off within a
# short run; smaller problems (tiny models, tests) stay eager.
FUSED_MAX_RATIO = 4.0
FUSED_MIN_INPUTS = 2**15


def choose_contraction(
    n_bases: int, spline_order: int, device: torch.device | str = "cpu", n_inputs: int | None = None
) -> str:
    """``"local"``, ``"dense"`` or ``"fused"`` for splines with ``n_bases = G + k`` bases of order
    ``k`` on ``n_inputs = N * in`` inputs (``None``: a large batch).

    The dense matmul does ``G + k`` multiply-adds per input and output where the local gathers
    do ``k + 1``, but a matmul runs several times faster per multiply-add and the local path
    has a larger fixed cost (sort, more ops): local wins once ``(G + k) / (k + 1)`` passes a
    threshold that grows as the problem shrinks (``LOCAL_RULES``). Below ``FUSED_MAX_RATIO``,
    large enough problems (``FUSED_MIN_INPUTS``) take the compiled dense path when it can
    compile here (:func:`~kan_lightning.nn.fused.worth_choosing`).
    """
    kind = torch.device(device).type
    rules = LOCAL_RULES.get(kind, LOCAL_RULES["cuda"])
    ratio = n_bases / (spline_order + 1)
    large = n_inputs is None or n_inputs >= FUSED_MIN_INPUTS
    if large and ratio < FUSED_MAX_RATIO and fused.worth_choosing(device):
        return "fused"
    for min_inputs, min_ratio in rules:
        if n_inputs is None or n_inputs >= min_inputs:
            return "local" if ratio >= min_ratio else "dense"
    return "dense"


# -- slot indices ------------------------------------------------------------------------------


def _slots(j: Tensor, spline_order: int, stride: int, row_step: int, n_cols: int) -> Tensor:
    """int64 ``(N, k + 1, in)``: ``(j + 1 + m) * stride + i * row_step`` (padded slot ``j + 1 + m``
    of input ``i`` in a flat layout of ``n_cols`` entries)."""
    k = spline_order
    fdt = _index_dtype(j.dtype, n_cols)
    rows = torch.arange(j.shape[1], device=j.device, dtype=fdt) * row_step + stride
    base = torch.add(rows, j.to(fdt), alpha=stride).to(torch.int32).long()
    steps = torch.arange(k + 1, device=j.device).view(-1, 1) * stride
    return base.unsqueeze(1) + steps


class _Geometry:
    """Sizes of the padded layouts: ``width = G + 3k + 2`` slots per input, real bases in slots
    ``k + 1 .. k + G + k``."""

    def __init__(self, n_in: int, n_bases: int, spline_order: int) -> None:
        k = spline_order
        self.k, self.n_in, self.n_bases = k, n_in, n_bases
        self.width = n_bases + 2 * k + 2
        self.lo = (k + 1) * n_in  # dense: first real column
        self.hi = (k + 1 + n_bases) * n_in


# -- dense contraction -------------------------------------------------------------------------


# Scratch matrices of the dense contraction kept between calls on the CPU (per thread, role,
# inference mode, dtype and shape; up to SCRATCH_MAX_ELEMENTS each, SCRATCH_SLOTS in all): a
# fresh ~1 MB matrix per call is touched for the first time each call (page faults, cache
# misses), which took a quarter of a forward + backward of KAN [2, 5, 1] on 1000 points.
SCRATCH_MAX_ELEMENTS = 2**20
SCRATCH_SLOTS = 16
_SCRATCH: dict[tuple, Tensor] = {}


def _scratch(role: object, like: Tensor, rows: int, cols: int) -> Tensor | None:
    """A kept ``(rows, cols)`` matrix of ``like``'s dtype, zeros when created, for one ``role``;
    ``None`` off the CPU, while compiling, or when large."""
    if like.device.type != "cpu" or rows * cols > SCRATCH_MAX_ELEMENTS or torch.compiler.is_compiling():
        return None
    # (one set inside inference mode: its tensors may not be updated outside it)
    key = (role, threading.get_ident(), torch.is_inference_mode_enabled(), like.dtype, rows, cols)
    matrix = _SCRATCH.get(key)
    if matrix is None:
        if len(_SCRATCH) >= SCRATCH_SLOTS:
            _SCRATCH.clear()
        matrix = _SCRATCH[key] = like.new_zeros(rows, cols)
    return matrix


def _dense_basis(values: Tensor, slots: Tensor, geo: _Geometry) -> Tensor:
    """The padded basis matrix ``(N, width * in)``, slot-major columns ``slot * in + i``. Only
    the real block ``[lo, hi)`` is defined; padding columns hold whatever was scattered there
    (or nothing) and are never read. (A scratch matrix: use it before the next call.)"""
    n, per_row = values.shape[0], (geo.k + 1) * geo.n_in
    basis = _scratch("basis", values, n, geo.width * geo.n_in)
    if basis is None:
        basis = values.new_empty(n, geo.width * geo.n_in)
    basis[:, geo.lo : geo.hi].zero_()
    return basis.scatter_(1, slots.view(n, per_row), values.view(n, per_row))


def _dense_forward(values, j, coef, geo):
    slots = _slots(j, geo.k, geo.n_in, 1, geo.width * geo.n_in)
    basis = _dense_basis(values, slots, geo)
    coef_t = coef.transpose(1, 2).reshape(coef.shape[0], -1)  # (out, (G + k) * in), slot-major
    return basis[:, geo.lo : geo.hi] @ coef_t.T, slots, coef_t


def _dense_backward(grad_out, values, derivs, slots, coef_t, geo, need_x, need_coef):
    n = grad_out.shape[0]
    grad_x = grad_coef = None
    if need_x and derivs is not None:
        # (its padding stays zero: one matrix per block [lo, hi) written)
        dense = _scratch(("grad", geo.lo, geo.hi), grad_out, n, geo.width * geo.n_in)
        if dense is None:
            dense = grad_out.new_empty(n, geo.width * geo.n_in)
            dense[:, : geo.lo].zero_()
            dense[:, geo.hi :].zero_()
        if torch.compiler.is_compiling():  # dynamo does not take a strided ``out=``
            dense[:, geo.lo : geo.hi] = grad_out @ coef_t
        else:
            torch.mm(grad_out, coef_t, out=dense[:, geo.lo : geo.hi])
        dots = dense.gather(1, slots.view(n, (geo.k + 1) * geo.n_in)).view_as(derivs)
        grad_x = (dots * derivs).sum(1)
    if need_coef:
        basis = _dense_basis(values, slots, geo)
        grad_t = grad_out.T @ basis[:, geo.lo : geo.hi]
        grad_coef = grad_t.view(-1, geo.n_bases, geo.n_in).transpose(1, 2)
    return grad_x, grad_coef


# -- local contraction -------------------------------------------------------------------------


def _local_forward(values, j, coef, geo):
    n = values.shape[0]
    slots = _slots(j, geo.k, 1, geo.width, geo.width * geo.n_in)  # row i * width + slot
    table = coef.new_zeros(geo.n_in, geo.width, coef.shape[0])
    table[:, geo.k + 1 : geo.k + 1 + geo.n_bases] = coef.permute(1, 2, 0)
    table = table.view(-1, coef.shape[0])
    per_row = (geo.k + 1) * geo.n_in
    out = F.embedding_bag(slots.view(n, per_row), table, per_sample_weights=values.view(n, per_row), mode="sum")
    return out, slots, table


def _local_grad_x(grad_out, derivs, slots, table, geo):
    """``sum_m derivs[n, m, i] * (grad_out[n] . table[slot(n, m, i)])`` via a sampled matmul at the
    non-zeros of the basis matrix (CSR). The CPU kernel computes each non-zero independently, so
    the columns are passed in their natural (slot-major) order; elsewhere they are sorted per
    row (input-major), as cuSPARSE expects."""
    n = grad_out.shape[0]
    per_row = geo.n_in * (geo.k + 1)
    crow = torch.arange(n + 1, device=slots.device) * per_row
    ordered = slots.device.type != "cpu"
    cols = slots.transpose(1, 2).reshape(-1) if ordered else slots.view(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cols, derivs.view(-1), (n, table.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, grad_out, table.T, beta=0.0).values()
    if ordered:
        dots = dots.view(n, geo.n_in, geo.k + 1).transpose(1, 2)
    return (dots.view_as(derivs) * derivs).sum(1)


def _local_grad_coef(grad_out, values, slots, geo):
    """``dL/dcoef[o, i, b] = sum over (n, m) with slot b + k + 1 of values[n, m, i] grad_out[n, o]``,
    without the dense basis: every coefficient row is one bag of ``grad_out`` rows.

    The ``N * in`` inputs are sorted by key ``(i, j)``; bag ``(i, b)`` is the concatenation over
    ``m`` of the inputs with ``j + 1 + m = b + k + 1``, weighted by ``values[:, m]``. Positions in
    the concatenation are ``rank within the key + a per (m, key) offset``; the (key, m) pairs that
    land in padding slots fill one extra trailing bag that is dropped.
    """
    k, n_in, n_bases, width = geo.k, geo.n_in, geo.n_bases, geo.width
    n = grad_out.shape[0]
    count = n * n_in
    dev = slots.device
    # int32 index arithmetic where it fits (several times faster than int64 on CPU).
    itype = torch.int32 if (k + 1) * count < 2**31 and n_in * width < 2**31 else torch.long
    keys = slots[:, 0].to(itype).reshape(-1)  # i * width + j + 1
    sorted_keys, perm = torch.sort(keys)
    counts = torch.bincount(keys, minlength=n_in * width).to(itype).view(n_in, width)
    seg_start = counts.reshape(-1).cumsum(0, dtype=itype) - counts.reshape(-1)
    # Sizes of the m-th part of bag (i, b): inputs with j + 1 = b + k + 1 - m.
    parts = counts.unfold(1, k + 1, 1)[:, 1 : 1 + n_bases].flip(-1)  # (in, G + k, k + 1)
    inclusive = parts.cumsum(-1, dtype=itype)
    bag_size = inclusive[..., -1].reshape(-1)
    bag_end = bag_size.cumsum(0, dtype=itype)
    bag_start = bag_end - bag_size
    total_real = bag_end[-1:]
    part_start = bag_start.view(n_in, n_bases, 1) + inclusive - parts
    # Start of every (m, key) block: inside its bag, or in the trailing trash bag.
    block = torch.empty(k + 1, n_in, width, dtype=itype, device=dev)
    real = torch.zeros(k + 1, 1, width, dtype=torch.bool, device=dev)
    for m in range(k + 1):
        block[m, :, k + 1 - m : k + 1 - m + n_bases] = part_start[..., m]
        real[m, :, k + 1 - m : k + 1 - m + n_bases] = True
    trash = torch.where(real, 0, counts).reshape(-1)
    trash_start = total_real + trash.cumsum(0, dtype=itype) - trash
    block = torch.where(real, block, trash_start.view(k + 1, n_in, width)).view(k + 1, -1)
    rank = torch.arange(count, device=dev, dtype=itype) - seg_start[sorted_keys]
    pos = (block.index_select(1, sorted_keys) + rank).view(-1).long()
    samples = torch.empty((k + 1) * count, dtype=itype, device=dev)
    samples.scatter_(0, pos, (perm.to(itype) // n_in).expand(k + 1, -1).reshape(-1))
    weights = torch.empty((k + 1) * count, dtype=values.dtype, device=dev)
    weights.scatter_(0, pos, values.transpose(0, 1).reshape(k + 1, count).index_select(1, perm).view(-1))
    offsets = torch.cat([bag_start, total_real])
    rows = F.embedding_bag(samples, grad_out, offsets, per_sample_weights=weights, mode="sum")
    return rows[: n_in * n_bases].view(n_in, n_bases, -1).permute(2, 0, 1)


def _local_grad_coef_segments(grad_out, values, slots, geo):
    """dL/dcoef by ``k + 1`` embedding bags over the inputs sorted by ``(i, j)``: bag ``(i, s)``
    of pass ``m`` sums ``values[n, m, i] * grad_out[n]`` over the inputs with ``j + 1 = s``, which
    belong to coefficient slot ``s + m``; the passes are added with that shift."""
    k, n_in, n_bases, width = geo.k, geo.n_in, geo.n_bases, geo.width
    n = grad_out.shape[0]
    count = n * n_in
    itype = torch.int32 if count < 2**31 and n_in * width < 2**31 else torch.long
    keys = slots[:, 0].to(itype).reshape(-1)  # i * width + j + 1
    _, perm = torch.sort(keys)
    counts = torch.bincount(keys, minlength=n_in * width).to(itype)
    offsets = counts.cumsum(0, dtype=itype) - counts
    samples = perm.to(itype) // n_in
    weights = values.transpose(0, 1).reshape(k + 1, count).index_select(1, perm)
    total = None
    for m in range(k + 1):
        part = F.embedding_bag(samples, grad_out, offsets, per_sample_weights=weights[m], mode="sum")
        part = part.view(n_in, width, -1)[:, k + 1 - m : k + 1 - m + n_bases]
        total = part.clone() if total is None else total.add_(part)
    return total.permute(2, 0, 1)


# The segment passes write (k + 1) tables of in * (G + 3k + 2) * out floats; past about 2**23
# floats in all that traffic costs more than building the bags (CPU, k = 3, batch 1024, fwd+bwd
# of one layer: 64x64 G = 20: segments 1.8 ms, bags 3.4 ms; 256x256 G = 20: 23 vs 24 ms;
# 256x256 G = 50: 68 vs 25 ms).
SEGMENT_MAX_FLOATS = 2**23


def _coef_grad_by_segments(geo: _Geometry, n_out: int) -> bool:
    return (geo.k + 1) * geo.n_in * geo.width * n_out <= SEGMENT_MAX_FLOATS


# -- the Function ------------------------------------------------------------------------------


class SplineContraction(torch.autograd.Function):
    """``y = sum_i sum_m coef[o, i, m] B_m(x_i)`` with a hand-written backward (see the module
    docstring). Inputs: ``x (N, in)``, ``grid (in, G + 2k + 1)``, ``coef (out, in, G + k)``; the
    grid gets no gradient. Once differentiable."""

    @staticmethod
    def forward(ctx, x, grid, coef, spline_order, uniform, contraction, grad_enabled=True):
        geo = _Geometry(x.shape[1], coef.shape[-1], spline_order)
        # needs_input_grad ignores no_grad mode, hence the caller's grad mode.
        derivatives = grad_enabled and ctx.needs_input_grad[0]
        values, derivs, j, scale = _local_bases(x, grid, spline_order, uniform, derivatives)
        if contraction == "dense":
            out, slots, layout = _dense_forward(values, j, coef, geo)
        else:
            out, slots, layout = _local_forward(values, j, coef, geo)
        ctx.save_for_backward(values, derivs, slots, layout, scale)
        ctx.geo = geo
        ctx.contraction = contraction
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        values, derivs, slots, layout, scale = ctx.saved_tensors
        geo = ctx.geo
        need_x, need_coef = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        grad_out = grad_out.contiguous()
        grad_x = grad_coef = None
        if ctx.contraction == "dense":
            grad_x, grad_coef = _dense_backward(grad_out, values, derivs, slots, layout, geo, need_x, need_coef)
        else:
            if need_x and derivs is not None:
                grad_x = _local_grad_x(grad_out, derivs, slots, layout, geo)
            if need_coef and _coef_grad_by_segments(geo, grad_out.shape[1]):
                grad_coef = _local_grad_coef_segments(grad_out, values, slots, geo)
            elif need_coef:
                grad_coef = _local_grad_coef(grad_out, values, slots, geo)
        if need_x:
            if grad_x is None:  # k = 0: piecewise constant, zero derivative almost everywhere
                grad_x = grad_out.new_zeros(grad_out.shape[0], geo.n_in)
            elif scale is not None:
                grad_x = grad_x * scale
        return grad_x, None, grad_coef, None, None, None, None


def spline_contract(
    x: Tensor,
    grid: Tensor,
    coef: Tensor,
    spline_order: int,
    uniform: bool = False,
    contraction: str = "auto",
    base_weight: Tensor | None = None,
) -> Tensor:
    """The spline branch of a KAN layer: ``(N, out)`` from ``x (N, in)``.

    ``coef`` (``(out, in, G + k)``) is used as given (fold scales and masks in beforehand; their
    gradients then flow through autograd outside). ``base_weight`` (``(out, in)``, optional):
    also add the SiLU base branch ``silu(x) @ base_weight.T``, on the ``"fused"`` path as more
    columns of the splines' one product. ``uniform=True`` asserts equally spaced knots
    in every row (closed-form bases). ``contraction`` is ``"auto"`` (:func:`choose_contraction`),
    ``"dense"``, ``"local"`` or ``"fused"`` (:mod:`~kan_lightning.nn.fused`: compiled on first
    use, ``"dense"`` where compiling fails). float32 and float64, any device. Half precision (float16,
    bfloat16, under autocast or not) is computed in float32 with autocast off; the output then
    has the promoted dtype of ``x`` and ``coef`` (float32 under autocast, where ``coef`` is float32).
    """
    if contraction not in CONTRACTIONS:
        raise ValueError(f"contraction must be one of {CONTRACTIONS}, got {contraction!r}")
    if x.dim() != 2 or grid.dim() != 2 or coef.dim() != 3 or not (x.shape[1] == grid.shape[0] == coef.shape[1]):
        raise ValueError(
            f"expected x (N, in), grid (in, G + 2k + 1), coef (out, in, G + k); got "
            f"{tuple(x.shape)}, {tuple(grid.shape)}, {tuple(coef.shape)}"
        )
    if base_weight is not None and base_weight.shape != coef.shape[:2]:
        raise ValueError(f"expected base_weight (out, in) = {tuple(coef.shape[:2])}, got {tuple(base_weight.shape)}")
    if grid.shape[-1] - spline_order - 1 != coef.shape[-1]:
        raise ValueError(
            f"a grid of {grid.shape[-1]} knots has {grid.shape[-1] - spline_order - 1} bases of order "
            f"{spline_order}, but coef has {coef.shape[-1]}"
        )
    tensors = (x, grid, coef) if base_weight is None else (x, grid, coef, base_weight)
    compute = _compute_dtype(*tensors)
    if contraction == "auto":
        contraction = choose_contraction(coef.shape[-1], spline_order, x.device, x.shape[0] * x.shape[1])
    out_dtype = torch.promote_types(x.dtype, coef.dtype)
    if all(t.dtype == compute for t in tensors) and not torch.is_autocast_enabled(x.device.type):
        return _apply(x, grid, coef, spline_order, bool(uniform), contraction, base_weight)
    # Half-precision inputs (autocast, or a model converted to bf16/fp16): bases and contraction
    # in float32 with autocast off (the knot-interval search and the basis polynomials lose
    # whole intervals in 8-bit mantissas); the output in the inputs' promoted dtype, float32
    # under autocast, where the coefficients stay float32.
    if uniform and grid.dtype != compute:  # the flag was set at the half dtype's tolerance
        uniform = is_uniform(grid.to(compute))
    if base_weight is not None:
        base_weight = base_weight.to(compute)
    with torch.autocast(x.device.type, enabled=False):
        out = _apply(x.to(compute), grid.to(compute), coef.to(compute), spline_order, bool(uniform), contraction,
                     base_weight)
    return out.to(out_dtype)


_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(x: Tensor, grid: Tensor, coef: Tensor, *more: Tensor) -> torch.dtype:
    """float32 or float64: the dtype of ``x``, ``grid`` and ``coef`` (and ``more``) once half
    precision is upcast to float32; a float32/float64 mix or a non-float dtype is an error."""
    given = [t.dtype for t in (x, grid, coef, *more)]
    names = "x, grid, coef" + (", base_weight" if more else "")
    got = ", ".join(str(d) for d in given)
    if not set(given) <= {torch.float32, torch.float64, *_HALF}:
        raise TypeError(f"spline_contract needs float tensors; got {got}")
    full = {torch.float32 if d in _HALF else d for d in given}
    if len(full) > 1:
        raise TypeError(
            f"spline_contract needs {names} of one dtype (float16/bfloat16 count as float32); got {got}"
        )
    return full.pop()


@torch.compiler.disable
def _apply(x, grid, coef, spline_order, uniform, contraction, base_weight=None):
    """The Function runs eagerly under torch.compile (a graph break on each side): its sorts,
    data-dependent bag sizes and sparse CSR products do not trace, and it is one fused unit
    already. The rest of a model still compiles."""
    grad_enabled = torch.is_grad_enabled()
    if contraction == "fused":
        if fused.available():
            return fused.FusedSplineContraction.apply(x, grid, coef, base_weight, spline_order, uniform, grad_enabled)
        contraction = "dense"
    out = SplineContraction.apply(x, grid, coef, spline_order, uniform, contraction, grad_enabled)
    return out if base_weight is None else out + F.silu(x) @ base_weight.T
