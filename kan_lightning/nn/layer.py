"""KANLayer: a learnable 1-D function on every edge, ``phi(x) = w_b * b(x) + w_s * spline(x)``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .activations import make_activation
from .config import SplineConfig, check_count, signature_of
from .kernels import spline_contract
from .knots import is_uniform
from .refit import check_smoothness, penalized_fit_coefficients
from .splines import (
    bspline_basis,
    bspline_basis_derivative,
    bspline_basis_reference,
    extend_knots,
    fit_coefficients,
    uniform_grid,
)


class KANLayer(nn.Module):
    """One KAN layer mapping ``in_features`` to ``out_features``.

    Edge ``(j, i)`` computes ``base_weight[j, i] * base_activation(x_i)
    + spline_scaler[j, i] * sum_m spline_weight[j, i, m] * B_m(x_i)`` and output ``j`` sums
    its edges. ``mask`` (a buffer of ones) switches edges off after pruning.

    The keyword options are the fields of :class:`~kan_lightning.nn.config.SplineConfig`.
    """

    __signature__ = signature_of(SplineConfig, "in_features", "out_features")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        options = self.__signature__.bind(*args, **kwargs).arguments
        in_features = self.in_features = check_count("in_features", options.pop("in_features"), 1)
        out_features = self.out_features = check_count("out_features", options.pop("out_features"), 1)
        spline = SplineConfig(**options)
        for name in ("grid_size", "spline_order", "grid_eps", "basis", "extrapolate", "contraction"):
            setattr(self, name, getattr(spline, name))
        # Whether the knots are equally spaced (enables the closed-form basis kernel).
        self.uniform_grid = True

        self.register_buffer("grid", uniform_grid(in_features, spline.grid_size, spline.spline_order, spline.grid_range))
        self.register_buffer("mask", torch.ones(out_features, in_features))
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, spline.grid_size + spline.spline_order))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.base_activation = make_activation(spline.base_activation)
        self.reset_parameters(spline.scale_noise, spline.scale_base, spline.scale_spline)

    @torch.no_grad()
    def reset_parameters(self, scale_noise: float = 0.1, scale_base: float = 1.0, scale_spline: float = 1.0) -> None:
        nn.init.xavier_uniform_(self.base_weight, gain=scale_base)
        self.spline_weight.uniform_(-0.5, 0.5).mul_(scale_noise / self.grid_size)
        self.spline_scaler.fill_(scale_spline)

    @property
    def num_bases(self) -> int:
        return self.grid.shape[-1] - self.spline_order - 1

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}"
        )

    # -- evaluation -------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"KANLayer expects inputs of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        return x.reshape(-1, self.in_features)

    def spline_input(self, x: Tensor) -> Tensor:
        """Where the splines are evaluated for inputs ``x`` ``(N, in)``: ``x`` itself, or with
        ``extrapolate="linear"`` ``x`` clamped into the grid range (just below its right end:
        bases are half-open on the right, and the tangent there is the left one)."""
        if self.extrapolate == "bases":
            return x
        k, last = self.spline_order, self.grid.shape[-1] - self.spline_order - 1
        lo, hi = self.grid[:, k], self.grid[:, last]
        # a few ulps inside the last interval (plain arithmetic: ONNX has no nextafter)
        inside = hi - (hi - self.grid[:, last - 1]) * (4 * torch.finfo(x.dtype).eps)
        return torch.clamp(x, lo, inside)

    def _tangent_bases(self, x: Tensor, at: Tensor) -> Tensor | None:
        """For ``extrapolate="linear"``: ``(x - c) dB_m/dx (c)`` at the clamped inputs ``c``,
        ``(N, in, G + k)``, so that the splines continue along their end tangents; ``None``
        otherwise."""
        if self.extrapolate != "linear":
            return None
        return (x - at).unsqueeze(-1) * bspline_basis_derivative(at, self.grid, self.spline_order)

    def bases(self, x: Tensor) -> Tensor:
        """B-spline bases of the flattened inputs: ``(N, in, G + k)``."""
        if self.basis == "reference":
            return bspline_basis_reference(x, self.grid, self.spline_order)
        return bspline_basis(x, self.grid, self.spline_order, uniform=self.uniform_grid)

    def spline_bases(self, x: Tensor, full_grid: bool = False) -> Tensor:
        """What each coefficient multiplies for inputs ``x`` ``(N, in)``: the bases at
        :meth:`spline_input`, plus the tangent terms past the grid ends with
        ``extrapolate="linear"``: ``(N, in, G + k)``. ``full_grid``: by the plain Cox-de Boor
        recursion (traceable for export)."""
        at = self.spline_input(x)
        bases = bspline_basis_reference(at, self.grid, self.spline_order) if full_grid else self.bases(at)
        tangent = self._tangent_bases(x, at)
        return bases if tangent is None else bases + tangent

    def scaled_coefficients(self) -> Tensor:
        """Spline coefficients with the per-edge scale and mask folded in: ``(out, in, G + k)``."""
        return self.spline_weight * (self.spline_scaler * self.mask).unsqueeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = self._check_input(x)
        base_weight = self.base_weight * self.mask
        coef = self.scaled_coefficients()
        if self.basis == "reference":
            # Plain autograd through the full Cox-de Boor recursion (the benchmarks' baseline).
            spline = self.spline_bases(flat).flatten(1) @ coef.flatten(1).T
            out = self.base_activation(flat) @ base_weight.T + spline
        else:
            # Only the k + 1 non-zero bases, hand-written backward (kernels.SplineContraction,
            # or fused.FusedSplineContraction, which also takes a SiLU base branch into its
            # product where the splines read the inputs themselves).
            at = self.spline_input(flat)
            joint = self.extrapolate == "bases" and type(self.base_activation) is nn.SiLU
            out = spline_contract(
                at, self.grid, coef, self.spline_order, uniform=self.uniform_grid,
                contraction=getattr(self, "contraction", "auto"),  # (layers pickled before the option)
                base_weight=base_weight if joint else None,
            )
            if self.extrapolate == "linear":
                out = self._add_tangents(out, flat, at, coef)
            if not joint:
                out = self.base_activation(flat) @ base_weight.T + out
        return out.reshape(*shape[:-1], self.out_features)

    def _add_tangents(self, spline: Tensor, x: Tensor, at: Tensor, coef: Tensor) -> Tensor:
        """``spline`` plus the tangent terms of :meth:`_tangent_bases`, computed (full-grid) only
        for the rows that leave the grid; for every row while tracing (no data-dependent shapes)."""
        if torch.jit.is_tracing():
            return spline + self._tangent_bases(x, at).flatten(1) @ coef.flatten(1).T
        rows = (x != at).any(1).nonzero().squeeze(1)
        if not rows.numel():
            return spline
        tangent = self._tangent_bases(x[rows], at[rows])
        # (under autocast the product is in the autocast dtype, the spline term in float32)
        return spline.index_add(0, rows, (tangent.flatten(1) @ coef.flatten(1).T).to(spline.dtype))

    def spline_values(self, x: Tensor) -> Tensor:
        """Unscaled ``sum_m c[j, i, m] B_m(x_i)`` per edge: ``(N, out, in)``."""
        return torch.einsum("nim,oim->noi", self.spline_bases(x), self.spline_weight)

    def edge_activations(self, x: Tensor) -> Tensor:
        """Every edge function at the given inputs: ``phi[n, j, i] = phi_{j,i}(x[n, i])``.

        Summing over the last dimension gives :meth:`forward`.
        """
        flat = self._check_input(x)
        base = self.base_activation(flat).unsqueeze(1) * self.base_weight
        spline = self.spline_values(flat) * self.spline_scaler
        return (base + spline) * self.mask

    # -- grids ------------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A saved layer may have an extended grid: take its shape, then detect uniform spacing
        # (a Python flag, so the kernel choice stays static for torch.compile).
        grid = state_dict.get(prefix + "grid")
        if grid is not None and grid.shape != self.grid.shape:
            self.grid = torch.empty_like(grid, dtype=self.grid.dtype, device=self.grid.device)
            n_bases = grid.shape[-1] - self.spline_order - 1
            self.spline_weight = nn.Parameter(self.spline_weight.new_empty(self.out_features, self.in_features, n_bases))
            self.grid_size = n_bases - self.spline_order
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if grid is not None:
            self.uniform_grid = is_uniform(grid)

    def _apply(self, fn, *args, **kwargs):
        # A dtype change can make rounded knots unequal at the new precision: re-detect, so the
        # closed-form kernel is used only where it is exact.
        module = super()._apply(fn, *args, **kwargs)
        self.uniform_grid = self.uniform_grid and is_uniform(self.grid)
        return module

    def _refit(self, x: Tensor, new_grid: Tensor, uniform: bool, ridge: float = 1e-8, smoothness: float = 0.0) -> None:
        """Switch to ``new_grid``, refitting coefficients to the current splines at ``x``
        (``smoothness`` > 0: the penalized fit of :mod:`.refit`)."""
        with torch.no_grad():
            target = self.spline_values(x)
            if smoothness:
                coef = penalized_fit_coefficients(x, target, new_grid, self.spline_order, smoothness)
            else:
                coef = fit_coefficients(x, target, new_grid, self.spline_order, ridge=ridge)
            self.grid = new_grid.to(self.grid)
            self.grid_size = new_grid.shape[-1] - 2 * self.spline_order - 1
            self.uniform_grid = uniform
            if coef.shape == self.spline_weight.shape:
                self.spline_weight.copy_(coef)
            else:
                # A new Parameter: optimizers holding the old one must be rebuilt.
                self.spline_weight = nn.Parameter(coef.to(self.spline_weight))

    def update_grid(
        self, x: Tensor, grid_eps: float | None = None, grid_size: int | None = None, *,
        keep_range: bool = False, margin: float = 0.0, bounds: tuple[Tensor, Tensor] | None = None,
        smoothness: float = 0.0,
    ) -> None:
        """Move the knots toward the quantiles of ``x`` (``(N, in)``), keeping the functions.

        The interior knots become ``eps * uniform + (1 - eps) * quantiles`` over the data's
        range, the outer knots continue with the edge spacing, and the coefficients are refit by
        least squares so the edge functions at ``x`` change as little as possible.
        ``grid_size`` also changes the number of intervals (grid extension fitted on data).
        ``keep_range``: the new range also covers the current one (for a network's inputs: a
        grid on the domain the inputs were scaled to keeps test inputs that lie just outside
        the training sample on the grid, where past its ends the splines run out).
        ``margin``: otherwise, widen the data's range by this many grid intervals on each side,
        so that inputs a little past the data's extremes still fall in the outermost intervals,
        whose polynomial pieces were fitted to data, rather than past the grid.
        ``bounds``: otherwise, ``(low, high)`` per input (``(in,)``) that the range must cover
        as well (e.g. interval bounds of where the inputs can go, :mod:`.intervals`).
        ``smoothness``: > 0 refits with a difference penalty (:mod:`.refit`), which holds the
        coefficients of bases with little data under them on the curve through their neighbours.
        """
        if not (margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        eps = self.grid_eps if grid_eps is None else grid_eps
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1], got {eps!r}")
        size = self.grid_size if grid_size is None else grid_size
        check_count("grid_size", size, 1)
        x = self._check_input(x).detach()
        with torch.no_grad():
            xs = x.to(self.grid.dtype).sort(dim=0).values.T  # (in, N)
            n = xs.shape[1]
            idx = torch.linspace(0, n - 1, size + 1, device=x.device).round().long()
            adaptive = xs[:, idx]
            lo, hi = xs[:, :1], xs[:, -1:]
            if keep_range:
                interior_now = self.grid_interior()
                lo, hi = torch.minimum(lo, interior_now[:, :1]), torch.maximum(hi, interior_now[:, -1:])
            elif bounds is not None:
                lo = torch.minimum(lo, bounds[0].to(lo).reshape(-1, 1))
                hi = torch.maximum(hi, bounds[1].to(hi).reshape(-1, 1))
            elif margin:
                pad = margin * (hi - lo) / size
                lo, hi = lo - pad, hi + pad
            steps = torch.arange(size + 1, dtype=xs.dtype, device=x.device)
            uniform = lo + (hi - lo) / size * steps
            interior = eps * uniform + (1 - eps) * adaptive
            degenerate = (hi - lo) <= 0  # a constant input: keep a unit-width uniform grid
            # The ends are the data's own extremes (mixing could round them inwards); bases are
            # half-open on the right, so the last knot lies just above the data (matters for k = 0).
            interior[:, :1] = lo
            interior[:, -1:] = torch.nextafter(hi, torch.full_like(hi, math.inf))
            interior = torch.where(degenerate, lo + (steps - size / 2) / size, interior)
            new_grid = extend_knots(interior, self.spline_order)
        self._refit(x, new_grid, uniform=eps == 1.0, smoothness=check_smoothness(smoothness))

    def grid_interior(self) -> Tensor:
        """The ``G + 1`` knots spanning the grid range: ``(in, G + 1)``."""
        k = self.spline_order
        return self.grid[:, k : self.grid.shape[-1] - k]

    def extend_grid(self, new_grid_size: int, samples_per_basis: int = 8) -> None:
        """Refine (or coarsen) the grid to ``new_grid_size`` intervals on the same range.

        New knots follow the current interior knots piecewise linearly (so an adapted grid keeps
        its shape and a uniform refinement by an integer factor contains the old knots); the
        coefficients are refit by least squares on dense samples of the grid range.
        """
        check_count("grid_size", new_grid_size, 1)
        with torch.no_grad():
            interior = self.grid_interior()
            old = torch.linspace(0, 1, interior.shape[-1], dtype=torch.float64, device=interior.device)
            new = torch.linspace(0, 1, new_grid_size + 1, dtype=torch.float64, device=interior.device)
            new_interior = _interp_rows(new, old, interior.double())
            new_grid = extend_knots(new_interior, self.spline_order)
            n = max(samples_per_basis * (new_grid_size + self.spline_order), 64)
            u = torch.linspace(0, 1, n, dtype=torch.float64, device=interior.device)
            x = _interp_rows(u, old, interior.double()).T.contiguous()  # (n, in)
            x[-1] = x[-1].nextafter(x[0])  # half-open bases: with k = 0 the end is outside
        # Dense samples support every basis: no ridge, so nested grids reproduce the spline exactly.
        self._refit(x.to(self.grid.dtype), new_grid, uniform=self.uniform_grid, ridge=0.0)


def _interp_rows(query: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of each row of ``fp`` (on shared ``xp``) at ``query``."""
    idx = torch.searchsorted(xp, query, right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = (query - x0) / (x1 - x0)
    return fp[:, idx - 1] * (1 - w) + fp[:, idx] * w
