"""Levenberg-Marquardt on a KAN's squared error: a second-order fit for small full-batch problems.

On the grid-extension toy, full-batch LBFGS stalls far above what the network can fit (KAN
[2, 5, 1], G = 50: training RMSE 5.5e-5 after 200 steps; 200 iterations of this from the same
network: 7.9e-8). The Jacobian is ``(N, P)``, so this is for networks of a few thousand
parameters at most. Each iteration forms ``J^T J`` from the Jacobian's sparsity
(:mod:`.gauss_newton`) and solves by Cholesky, or, with many more parameters than points, solves
in the samples' space without ``J^T J`` (:mod:`.sample_space`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .gauss_newton import GroupedJacobian, gram, grouped_jacobian
from .refit import difference_matrix
from .sample_space import sample_space_pays, solve_in_sample_space


def jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """``d model(x)[n] / d theta`` of a single-output KAN, ``(N, P)`` with the parameters in
    ``model.parameters()`` order.

    By the chain rule: one backward pass gives, per sample, the derivative of the output with
    respect to each layer's outputs (samples are independent), times the layer's local
    derivatives: ``base_activation(x_i)`` for ``base_weight``, the unscaled spline for
    ``spline_scaler``, and ``spline_scaler * B_m(x_i)`` for ``spline_weight``.
    """
    grouped = grouped_jacobian(model, x)
    out = torch.empty_like(grouped.matrix)
    out[:, grouped.order] = grouped.matrix
    return out


def _penalty_weights(model: nn.Module, x: Tensor, smoothness: float) -> list[tuple[Tensor, Tensor]]:
    """Per layer: ``lam_i`` ``(in,)`` and the difference matrix ``D`` of :func:`penalty_matrix`."""
    out, h = [], x
    for layer in model.layers:
        bases = layer.spline_bases(h)  # (N, in, M)
        n_bases = bases.shape[-1]
        d = difference_matrix(n_bases, min(layer.spline_order + 1, n_bases - 1), dtype=x.dtype, device=x.device)
        out.append((smoothness * bases.square().sum(dim=(0, 2)) / n_bases, d))
        h = layer(h)
    return out


def penalty_matrix(model: nn.Module, x: Tensor, smoothness: float) -> Tensor:
    """Rows ``sqrt(lam_i) * D`` on each edge's ``spline_weight`` (``D``: differences of order
    ``k + 1``, ``lam_i = smoothness * trace(B_i^T B_i) / (G + k)`` for the layer's input ``i`` at
    ``x``: the weights of :func:`~kan_lightning.nn.refit.penalized_fit_coefficients`), ``(R, P)``
    in ``model.parameters()`` order: coefficients with no data under them stay on the polynomial
    of their neighbours instead of taking any value that fits the training points."""
    blocks = []
    for i, (layer, (lam, d)) in enumerate(zip(model.layers, _penalty_weights(model, x, smoothness))):
        per_edge = lam.sqrt().repeat(layer.out_features)  # edges in (out, in) order
        blocks.append((f"layers.{i}.spline_weight", torch.block_diag(*(w * d for w in per_edge))))
    out = []
    for name, block in blocks:  # each block's rows are zero outside its own parameter's columns
        row = [block if n == name else x.new_zeros(block.shape[0], p.numel()) for n, p in model.named_parameters()]
        out.append(torch.cat(row, 1))
    return torch.cat(out, 0)


class _GroupedPenalty:
    """:func:`penalty_matrix`'s ``||pen theta||^2`` per spline group of a :class:`GroupedJacobian`
    (``lam_i * ||D c||^2`` for each of input ``i``'s edges), its gradient and Hessian blocks,
    without the dense ``(R, P)`` matrix."""

    def __init__(self, model: nn.Module, x: Tensor, smoothness: float, grouped: GroupedJacobian) -> None:
        self.order = grouped.order
        self.terms = []  # (columns, out, lam_i, D, D^T D) per group, in the groups' order
        groups = iter(grouped.groups)
        for layer, (lam, d) in zip(model.layers, _penalty_weights(model, x, smoothness)):
            for i in range(layer.in_features):
                group = next(groups)
                columns = slice(group.start, group.start + group.n_bases * group.out)
                self.terms.append((columns, group.out, lam[i], d, d.T @ d))

    def value(self, theta: Tensor) -> Tensor:
        theta = theta[self.order]
        return sum(lam * (d @ theta[c].view(-1, n)).square().sum() for c, n, lam, d, _ in self.terms)

    def add_gradient(self, grad: Tensor, theta: Tensor) -> None:
        """``g += pen^T pen theta`` in the grouped order."""
        theta = theta[self.order]
        for c, n, lam, _, dtd in self.terms:
            grad[c] += lam * (dtd @ theta[c].view(-1, n)).reshape(-1)

    def add_hessian(self, hessian: Tensor) -> None:
        """``H += pen^T pen`` in the grouped order (basis-major groups)."""
        for c, n, lam, _, dtd in self.terms:
            m = dtd.shape[0]
            hessian[c, c].view(m, n, m, n).diagonal(dim1=1, dim2=3).add_(lam * dtd[..., None])

    def add_diagonal(self, diagonal: Tensor) -> None:
        """``d += diag(pen^T pen)`` in the grouped order."""
        for c, n, lam, _, dtd in self.terms:
            diagonal[c] += (lam * dtd.diagonal()).repeat_interleave(n)

    def blocks(self) -> list[tuple[int, int, int, Tensor]]:
        """``(start, n_bases, out, lam_i D^T D)`` per group: the penalty's blocks for
        :func:`~kan_lightning.nn.sample_space.solve_in_sample_space`."""
        return [(c.start, dtd.shape[0], n, lam * dtd) for c, n, lam, _, dtd in self.terms]


def _solve_damped(h: Tensor, diagonal: Tensor, rhs: Tensor, factor: Tensor) -> Tensor:
    """``h^-1 rhs`` for a symmetric ``h`` whose diagonal is set to ``diagonal`` meanwhile (in
    place: no copy of ``h``): by Cholesky into ``factor``, by LU where Cholesky finds it not
    positive definite (in rounding)."""
    undamped = h.diagonal().clone()
    h.diagonal().copy_(diagonal)
    try:
        factor, info = torch.linalg.cholesky_ex(h, out=(factor, rhs.new_empty((), dtype=torch.int32)))
        if int(info) == 0:
            half = torch.linalg.solve_triangular(factor, rhs[:, None], upper=False)
            return torch.linalg.solve_triangular(factor.mT, half, upper=True)[:, 0]
        return torch.linalg.solve(h, rhs)
    finally:
        h.diagonal().copy_(undamped)


class _DampedSystem:
    """``(J^T J + pen^T pen + lambda S) step = -g`` for the trial dampings of one iteration, with
    ``g = J^T r + pen^T pen theta`` and ``S`` the diagonal of ``J^T J + pen^T pen`` (Marquardt's
    scale), in the grouped order: with the Gram matrix and a ``(P, P)`` Cholesky, or in the
    samples' space where there are many more parameters than samples (:mod:`.sample_space`:
    the same steps up to rounding)."""

    def __init__(self, jac: GroupedJacobian, pen: _GroupedPenalty | None, r: Tensor, theta: Tensor) -> None:
        self.jac, self.pen, self.r, self.hessian = jac, pen, r, None
        self.penalty_grad = torch.zeros_like(theta)
        if pen is not None:
            pen.add_gradient(self.penalty_grad, theta)
        self.grad = jac.matrix.T @ r + self.penalty_grad
        if sample_space_pays(*jac.matrix.shape):
            self.diagonal = jac.matrix.square().sum(0)
            if pen is not None:
                pen.add_diagonal(self.diagonal)
            self.blocks = [] if pen is None else pen.blocks()
        else:
            self._form_hessian()
            self.diagonal = self.hessian.diagonal().clone()
        self.scale = self.diagonal.clamp_min(torch.finfo(self.diagonal.dtype).tiny)

    def _form_hessian(self) -> None:
        self.hessian = gram(self.jac)
        if self.pen is not None:
            self.pen.add_hessian(self.hessian)
        self.factor = torch.empty_like(self.hessian).mT  # (LAPACK's column-major layout)

    def solve(self, lam: float) -> Tensor:
        if self.hessian is None:
            step = solve_in_sample_space(self.jac.matrix, self.blocks, lam * self.scale, -self.r, -self.penalty_grad)
            if step is not None:
                return step
            self._form_hessian()  # a penalty block not positive definite in rounding
        return _solve_damped(self.hessian, self.diagonal + lam * self.scale, -self.grad, self.factor)


# iterations over which ``min_progress`` is measured
PROGRESS_WINDOW = 10


@torch.no_grad()
def levenberg_marquardt(
    model: nn.Module, x: Tensor, y: Tensor, iterations: int, damping: float = 1e-3, smoothness: float = 0.0,
    min_progress: float = 0.0, after_iteration: Callable[[int], bool] | None = None,
) -> dict:
    """Minimize ``sum (model(x) - y)^2`` in place by Levenberg-Marquardt (Marquardt's scaling:
    ``(J^T J + lambda diag(J^T J)) step = -J^T r``; a step is taken only if it lowers the error,
    lambda / 3 after a success, x 4 after a failure: ~1.7 solves per iteration on the Feynman
    table, whose extra trials buy progress; Nielsen's gain-ratio rule took ~1 solve per iteration
    and delivered a median 1.07x higher test RMSE over its 27 equations, one more above the
    paper). ``smoothness`` > 0 adds the difference penalty of :func:`penalty_matrix` to the error. Returns ``{"iterations", "solves", "damping",
    "rmse_before", "rmse_after"}`` (RMSE of the data residuals); stops early when no damping up
    to 1e10 gives a descent, and with ``min_progress`` > 0 once the last
    :data:`PROGRESS_WINDOW` iterations lowered the objective by less than that fraction;
    ``after_iteration(i)``, called with the model at the ``i``-th accepted iterate, ends the fit by
    returning ``True``."""
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    y = y.reshape(-1).to(params[0])
    pen = None

    def objective(r: Tensor, theta: Tensor) -> Tensor:
        return r.square().sum() + (0 if pen is None else pen.value(theta))

    def residual() -> Tensor:
        return model(x).reshape(-1) - y

    def put(theta: Tensor) -> None:
        for p, t in zip(params, theta.split(sizes)):
            p.copy_(t.reshape(p.shape))

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    r = residual()
    before, lam, done = float(r.square().mean().sqrt()), float(damping), 0
    solves = 0  # damped solves (Cholesky factorizations): one per trial step
    history = []  # the objective after each iteration
    for done in range(1, iterations + 1):
        jac = grouped_jacobian(model, x)  # columns in jac.order
        if smoothness > 0 and pen is None:
            pen = _GroupedPenalty(model, x, smoothness, jac)
        system = _DampedSystem(jac, pen, r, theta)
        step = torch.empty_like(theta)
        current, improved = objective(r, theta), False  # (with the penalty, once it exists)
        while lam < 1e10:
            solves += 1
            step[jac.order] = system.solve(lam)
            put(theta + step)
            r_new = residual()
            trial = objective(r_new, theta + step)
            if bool(torch.isfinite(r_new).all()) and trial < current:
                theta, r, lam, improved = theta + step, r_new, max(lam / 3, 1e-15), True
                break
            lam *= 4
        put(theta)
        if not improved:
            break
        if min_progress > 0:
            history.append(float(trial))
            if len(history) > PROGRESS_WINDOW and history[-1] > (1 - min_progress) * history[-1 - PROGRESS_WINDOW]:
                break
        if after_iteration is not None and after_iteration(done):
            break
    rmse_after = float(r.square().mean().sqrt())
    return {"iterations": done, "solves": solves, "damping": lam, "rmse_before": before, "rmse_after": rmse_after}
