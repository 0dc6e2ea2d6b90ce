"""The ``k + 1`` non-zero B-spline bases of each input, and their derivatives: the knot
interval of every input and the basis values there, as polynomials in the position on equally
spaced knots or by de Boor's triangle on any knots. The contractions of :mod:`.kernels` and
:mod:`.fused` and the bases of :mod:`.splines` all come from here."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .knots import extend_knots


# -- uniform B-spline pieces as polynomials ----------------------------------------------------

_POLYNOMIALS: dict[int, tuple[tuple[float, ...], ...]] = {}


def _uniform_polynomials(spline_order: int) -> tuple[tuple[float, ...], ...]:
    """Cached :func:`_uniform_polynomials_exact`. The usual orders come from a tuple made at
    import: a compiled caller guards on what it reads, and a cache filled by its own first
    call would fail those guards on the second (one needless recompile per process)."""
    if spline_order < len(_COMMON_POLYNOMIALS):
        return _COMMON_POLYNOMIALS[spline_order]
    table = _POLYNOMIALS.get(spline_order)
    if table is None:
        table = _POLYNOMIALS[spline_order] = _uniform_polynomials_exact(spline_order)
    return table


def _uniform_polynomials_exact(spline_order: int) -> tuple[tuple[float, ...], ...]:
    """Power-basis coefficients of the ``k + 1`` pieces of the uniform B-spline.

    Row ``p`` holds the coefficients of ``u**p`` (``u`` in ``[0, 1]`` is the position in the
    interval in units of the knot spacing), column ``m`` belongs to basis ``j - k + m``. Exact
    rationals from de Boor's triangle, rounded once.
    """
    k = spline_order

    def mul(a, b):
        out = [Fraction(0)] * (len(a) + len(b) - 1)
        for i, ai in enumerate(a):
            for j, bj in enumerate(b):
                out[i + j] += ai * bj
        return out

    def add(a, b):
        n = max(len(a), len(b))
        return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]

    values = [[Fraction(1)]]
    for r in range(1, k + 1):
        saved = [Fraction(0)]
        new = []
        for s in range(r):
            temp = [c / r for c in values[s]]
            new.append(add(saved, mul([Fraction(s + 1), Fraction(-1)], temp)))
            saved = mul([Fraction(r - s - 1), Fraction(1)], temp)
        values = new + [saved]
    return tuple(tuple(float(v[p]) if p < len(v) else 0.0 for v in values) for p in range(k + 1))


_COMMON_POLYNOMIALS = tuple(_uniform_polynomials_exact(k) for k in range(6))


def _values_uniform(u: Tensor, spline_order: int, derivatives: bool) -> tuple[Tensor, Tensor | None]:
    """Values and ``u``-derivatives of the ``k + 1`` non-zero uniform bases, ``(N, k + 1, in)``.

    Each is a polynomial in ``u``, evaluated on ``(N, in)`` tensors and stacked (ops that
    broadcast over the small ``k + 1`` axis are slow on CPU).
    """
    k = spline_order
    if k == 0:
        return torch.ones_like(u).unsqueeze(1), None
    table = _uniform_polynomials(k)
    powers = [None, u]
    for _ in range(2, k + 1):
        powers.append(powers[-1] * u)
    values = _polynomials([[table[p][m] for p in range(k + 1)] for m in range(k + 1)], powers)
    if not derivatives:
        return values, None
    slopes = [[(p + 1) * table[p + 1][m] for p in range(k)] for m in range(k + 1)]
    return values, _polynomials(slopes, powers)


def _polynomials(coeffs: list[list[float]], powers: list[Tensor | None]) -> Tensor:
    """``out[:, m] = sum_p coeffs[m][p] * powers[p]`` (``powers[0]`` is 1): ``(N, len(coeffs), in)``."""
    rows = []
    for row in coeffs:
        terms = [(p, c) for p, c in enumerate(row) if c != 0 and p > 0]
        if not terms:
            rows.append(torch.full_like(powers[1], row[0]))
            continue
        p, c = terms[0]
        acc = powers[p] * c
        for p, c in terms[1:]:
            acc.add_(powers[p], alpha=c)
        if row[0] != 0:
            acc.add_(row[0])
        rows.append(acc)
    return torch.stack(rows, dim=1)


def _values_general(
    x: Tensor, knots: list[Tensor], spline_order: int, derivatives: bool, distinct: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Values and ``x``-derivatives of the ``k + 1`` non-zero bases (de Boor's BSPLVB triangle)
    at ``x`` in ``[t_j, t_{j+1}]`` given ``knots = [t_{j-k+1}, ..., t_{j+k}]``: ``(N, k + 1, in)``.

    The last stage of the triangle divides the order ``k - 1`` values by the knot spans of the
    order ``k`` bases; those quotients give the derivative directly:
    ``dB_{j-k+m}/dx = k (temp_{m-1} - temp_m)``. ``distinct``: the knots are strictly
    increasing, so no span is zero (see :func:`_general_tables`).
    """
    k = spline_order
    if k == 0:
        return torch.ones_like(x).unsqueeze(1), None
    left = [None] + [x - knots[k - r] for r in range(1, k + 1)]
    right = [None] + [knots[k - 1 + r] - x for r in range(1, k + 1)]
    values: list[Tensor | None] = [None]  # the order-0 basis: 1 (the products by it are skipped)
    temps: list[Tensor] = []
    for r in range(1, k + 1):
        saved = None
        new = []
        temps = []
        for s in range(r):
            den = right[s + 1] + left[r - s]
            if distinct:
                inverse = den.reciprocal()
            else:
                # 0/0 = 0 for repeated knots; the reciprocal of a safe denominator keeps autograd
                # through these values finite there.
                repeated = den == 0
                inverse = torch.where(repeated, 0.0, torch.where(repeated, 1.0, den).reciprocal())
            temp = inverse if values[s] is None else values[s] * inverse
            temps.append(temp)
            new.append(right[s + 1] * temp if saved is None else torch.addcmul(saved, right[s + 1], temp))
            saved = left[r - s] * temp
        values = new + [saved]
    if not derivatives:
        return torch.stack(values, dim=1), None
    padded = [None] + temps + [None]
    derivs = []
    for m in range(k + 1):
        lo, hi = padded[m], padded[m + 1]
        derivs.append(k * lo if hi is None else -k * hi if lo is None else k * (lo - hi))
    return torch.stack(values, dim=1), torch.stack(derivs, dim=1)


# -- knot intervals ----------------------------------------------------------------------------


def _index_dtype(dtype: torch.dtype, count: int) -> torch.dtype:
    """A float dtype in which integers up to ``count`` are exact (index arithmetic in floats is
    several times faster than in int64 on CPU)."""
    return dtype if dtype == torch.float32 and count < 2**24 else torch.float64


def _uniform_tables(grid: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
    """Per-row constants of an equally spaced grid: ``1 / spacing``, the offset of the biased
    closed-form interval guess, the knots ``t_{-1} = -inf, t_0, ..., t_last`` flattened over rows
    (``lower``) with the row starts in it (``rows``, floats), and the grid's ends."""
    n_knots = grid.shape[-1]
    g = grid.double()
    h = (g[:, -1] - g[:, 0]) / (n_knots - 1)
    ideal = g[:, :1] + h.unsqueeze(-1) * torch.arange(n_knots, dtype=g.dtype, device=g.device)
    deviation = (g - ideal).abs().amax(-1) / h
    eps = torch.finfo(dtype).eps
    bias = deviation + 16 * eps * ((g[:, 0].abs() + g[:, -1].abs()) / h + n_knots)
    lower = F.pad(grid, (1, 0), value=-torch.inf).reshape(-1)
    rows = torch.arange(grid.shape[0], device=grid.device, dtype=_index_dtype(dtype, lower.numel()))
    return {
        "inv_h": (1 / h).to(dtype),
        "offset": (bias - g[:, 0] / h).to(dtype),
        "lower": lower,
        "rows": rows * (n_knots + 1) + 1,
        "first": grid[:, 0].contiguous(),
        "last": grid[:, -1].contiguous(),
    }


def _general_tables(grid: Tensor, spline_order: int, dtype: torch.dtype) -> dict[str, Any]:
    """Windows of the ``2k`` knots ``t_{j-k+1}, ..., t_{j+k}`` for ``j = -1 .. G + 2k`` (columns
    of ``windows``, ``(2k, in (G + 2k + 2))``; the grid extended by ``k + 1`` knots per side), the
    first column of each row's windows (``starts``, ``(in, 1)``), whether the extended knots are
    strictly increasing (``distinct``, a bool; ``False`` while compiling, where it would need a
    data-dependent branch), and the grid's ends."""
    k = spline_order
    n_knots = grid.shape[-1]
    tables: dict[str, Any] = {"first": grid[:, 0].contiguous(), "last": grid[:, -1].contiguous()}
    if k > 0:
        ext = extend_knots(grid, k + 1)
        windows = ext[:, 1:].unfold(1, 2 * k, 1)[:, : n_knots + 1].reshape(-1, 2 * k)
        starts = torch.arange(grid.shape[0], device=grid.device).view(-1, 1) * (n_knots + 1)
        distinct = not torch.compiler.is_compiling() and bool((ext.diff(dim=-1) > 0).all())
        tables.update(windows=windows.T.contiguous(), starts=starts, distinct=distinct)
    return tables


_TABLES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _grid_tables(grid: Tensor, spline_order: int, uniform: bool) -> dict[str, Any]:
    """:func:`_uniform_tables` / :func:`_general_tables`, cached per grid tensor (weakly) until it
    is modified in place (its version counter changes). Not cached while compiling."""
    compiling = torch.compiler.is_compiling()
    key = (spline_order, uniform, grid._version)
    if not compiling:
        cached = _TABLES.get(grid)
        if cached is not None and cached[0] == key:
            return cached[1]
    if uniform:
        tables = _uniform_tables(grid, grid.dtype)
    else:
        tables = _general_tables(grid, spline_order, grid.dtype)
    if not compiling and not grid.requires_grad:
        _TABLES[grid] = (key, tables)
    return tables


def _interval_uniform(x: Tensor, grid: Tensor, tables: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Knot interval ``j`` (as floats, ``-1`` below the grid, ``G + 2k`` at or above its end),
    position ``u`` in it (in units of the spacing) and ``1 / spacing`` per row, for equally
    spaced knots.

    ``j`` is decided by the actual knots, as in the reference: a closed-form guess biased upwards
    by more than its rounding error (and the knots' deviation from an exact progression) can only
    be one too high, which one comparison with the gathered knot ``t_j`` corrects.
    """
    n_knots = grid.shape[-1]
    inv_h, rows = tables["inv_h"], tables["rows"]
    j = torch.addcmul(tables["offset"], x, inv_h).floor_().clamp_(-1, n_knots - 1)
    # A NaN input goes below the grid (padding slots), and is never "below t_j". Compiled, a
    # comparison vectorizes where inductor's nan_to_num is a scalar loop (half the time of the
    # whole basis loop on CPU); eagerly, the in-place ops are the cheaper ones.
    compiling = torch.compiler.is_compiling()
    j = torch.where(x == x, j, -1.0) if compiling else j.nan_to_num_(-1.0)
    t_j = tables["lower"].take((j.to(rows.dtype) + rows).to(torch.int32).long())
    if compiling:
        down = (x < t_j).to(x.dtype)  # 1 where x < t_j
    else:
        down = (t_j - x).sign_().clamp_(0, 1).nan_to_num_(0.0)
    j = j - down
    xc = x.clamp(tables["first"], tables["last"])
    u = torch.addcmul(down, xc - t_j, inv_h).clamp_(0, 1)
    return j, u, inv_h


def _interval_general(
    x: Tensor, grid: Tensor, spline_order: int, tables: dict[str, Any]
) -> tuple[Tensor, list[Tensor], Tensor]:
    """Knot interval ``j`` (as floats, ``-1`` below the grid, ``G + 2k`` at or above its end), the
    ``2k`` knots ``t_{j-k+1}, ..., t_{j+k}`` around it (each ``(N, in)``) and ``x`` clamped into
    the grid (values outside only land in padding slots; clamping keeps them finite)."""
    after = torch.searchsorted(grid, x.T.contiguous(), right=True)  # (in, N): j + 1
    j = torch.empty_like(x, memory_format=torch.contiguous_format).copy_(after.T).sub_(1)
    xc = x.clamp(tables["first"], tables["last"])
    if spline_order == 0:
        return j, [], xc
    index = (after + tables["starts"]).T.reshape(-1)  # window of input (n, i), n-major
    knots = tables["windows"].index_select(1, index).view(-1, *j.shape)  # (2k, N, in)
    return j, list(knots.unbind(0)), xc


def _local_bases(
    x: Tensor, grid: Tensor, spline_order: int, uniform: bool, derivatives: bool = True,
    tables: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """``values`` and ``derivs`` ``(N, k + 1, in)``, the interval ``j`` ``(N, in)`` (floats) and, for
    uniform grids, the per-row factor turning ``derivs`` into ``x``-derivatives (else ``None``).

    ``values[:, m]`` belongs to basis ``j - k + m``; entries of bases outside ``[0, G + k)`` are
    finite but meaningless (they go to padding slots). ``derivs`` is ``None`` for ``k = 0`` or
    when not requested. ``tables``: :func:`_grid_tables` computed beforehand (a compiled caller
    passes them in, so that they are not recomputed inside its loops).
    """
    k = spline_order
    grid = grid.contiguous()
    if tables is None:
        tables = _grid_tables(grid, k, uniform)
    if uniform:
        j, u, scale = _interval_uniform(x, grid, tables)
        values, derivs = _values_uniform(u, k, derivatives)
        return values, derivs, j, scale
    j, knots, xc = _interval_general(x, grid, k, tables)
    values, derivs = _values_general(xc, knots, k, derivatives, tables.get("distinct", False))
    return values, derivs, j, None


def local_bases(
    x: Tensor, grid: Tensor, spline_order: int, uniform: bool = False, derivatives: bool = True
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The ``k + 1`` non-zero bases and their ``x``-derivatives (``None`` unless
    ``derivatives``), both ``(N, in, k + 1)``, and the index of the first one ``(N, in)``
    (entries of bases outside ``[0, G + k)`` and of inputs outside the grid are zero); what
    :func:`~kan_lightning.nn.splines.bspline_local` returns."""
    k = spline_order
    values, derivs, j, scale = _local_bases(x, grid, k, uniform, derivatives)
    n_bases = grid.shape[-1] - k - 1
    slot = j.unsqueeze(1) + 1 + torch.arange(k + 1, device=x.device, dtype=x.dtype).view(-1, 1)
    valid = ((slot >= k + 1) & (slot <= k + n_bases)).to(x.dtype)
    start = j.long() - k
    if not derivatives:
        return (values * valid).transpose(1, 2), None, start
    if derivs is None:
        derivs = torch.zeros_like(values)
    elif scale is not None:
        derivs = derivs * scale
    return (values * valid).transpose(1, 2), (derivs * valid).transpose(1, 2), start
