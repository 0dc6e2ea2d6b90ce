"""The damped Gauss-Newton step in the samples' space, for KANs with more parameters than samples.

Levenberg-Marquardt solves ``(J^T J + A) s = J^T t + c`` with ``A = Q + lambda S``: ``Q`` the
difference penalty (per edge, on its own coefficients), ``S`` Marquardt's diagonal scale, ``t``
the negated residuals and ``c`` the negated penalty gradient. ``A`` is block-diagonal (one
``(G + k)``-square block per edge, a diagonal on the other parameters), so by Woodbury, with
``A = L L^T``, ``W = J L^-T`` ``(N, P)`` and ``h = L^-1 c``:

    s = L^-T (h + W^T (I + W W^T)^-1 (t - W h))

an ``(N, N)`` Cholesky factorization instead of a ``(P, P)`` one, and no ``J^T J``. Past the
interpolation threshold (a deep KAN at G = 10-20 on 1000 points has 2-3x more parameters than
points) this is the cheaper form: ``~N^2 P`` per trial step against ``~P^3 / 3``, and slower
below ~1.6 parameters per point, where the sparse ``J^T J`` is cheap (README "Levenberg-Marquardt
past the interpolation threshold": the figures and the command that measures them).
"""

from __future__ import annotations

import torch
from torch import Tensor

# the samples' space from this many parameters per sample on: below, the (P, P) factorization
# is cheaper (measured: python -m kan_lightning.commands.bench_lm)
SAMPLE_SPACE_ABOVE = 1.6


def sample_space_pays(n_samples: int, n_parameters: int) -> bool:
    return n_parameters > SAMPLE_SPACE_ABOVE * n_samples


def symmetric_product(a: Tensor, blocks: int = 4) -> Tensor:
    """``a^T a`` from its blocks on and below the diagonal (10 of the 16 products), the others
    their transposes: 1.5x faster than one product at ``a`` (2875, 1000), one thread."""
    n = a.shape[1]
    out = a.new_empty(n, n)
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    for lo, hi in zip(edges, edges[1:]):
        torch.mm(a[:, lo:hi].T, a[:, :hi], out=out[lo:hi, :hi])
        out[:lo, lo:hi] = out[lo:hi, :lo].T
    return out


def solve_in_sample_space(
    jac: Tensor, blocks: list[tuple[int, int, int, Tensor]], diagonal: Tensor, data_rhs: Tensor, rhs: Tensor
) -> Tensor | None:
    """``(J^T J + A)^-1 (J^T data_rhs + rhs)`` for ``jac`` ``(N, P)`` and ``A`` the diagonal
    ``diagonal`` ``(P,)`` plus, on each block ``(start, n_bases, out, penalty)``, the
    ``(n_bases, n_bases)`` matrix ``penalty`` for every one of the ``out`` edges whose
    coefficients are the columns ``start + m * out + o`` (basis-major). ``None`` when a block of
    ``A`` is not positive definite in rounding (the caller then solves in the parameters' space).

    The right-hand side's part in the range of ``J^T`` goes through ``W^T (I + W W^T)^-1``
    directly: written as ``A^-1 b - ...`` it would be the difference of two terms of size
    ``1 / lambda``, and lose all its digits at the small dampings the fit ends with."""
    n, p = jac.shape
    factors = torch.zeros(p, dtype=jac.dtype, device=jac.device)  # 1 / sqrt(A) on the diagonal part
    plain = torch.ones(p, dtype=torch.bool, device=jac.device)
    for start, n_bases, out, _ in blocks:
        plain[start:start + n_bases * out] = False
    # a column without data or penalty (a switched-off edge) whose damping underflowed to 0: its
    # step is 0, as its gradient is
    factors[plain] = diagonal[plain].rsqrt().nan_to_num(posinf=0.0)
    wt = jac.T * factors[:, None]  # W^T (P, N): the diagonal part's rows here, the blocks' below
    h = rhs * factors  # L^-1 rhs
    lowers = []
    for start, n_bases, out, penalty in blocks:
        columns = slice(start, start + n_bases * out)
        a = torch.diag_embed(diagonal[columns].view(n_bases, out).T) + penalty  # (out, M, M)
        lower, info = torch.linalg.cholesky_ex(a)
        if bool(info.any()):
            return None
        lowers.append(lower)
        edges = jac.T[columns].view(n_bases, out, n).transpose(0, 1)  # (out, M, N)
        solved = torch.linalg.solve_triangular(lower, edges, upper=False)
        wt[columns] = solved.transpose(0, 1).reshape(n_bases * out, n)
        rhs_edges = rhs[columns].view(n_bases, out).T[..., None]
        h[columns] = torch.linalg.solve_triangular(lower, rhs_edges, upper=False)[..., 0].T.reshape(-1)
    k = symmetric_product(wt)
    k.diagonal().add_(1)
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        return None
    # s = L^-T v, v = h + W^T (I + W W^T)^-1 (data_rhs - W h)
    v = h + wt @ torch.cholesky_solve((data_rhs - wt.T @ h)[:, None], chol)[:, 0]
    step = v * factors
    for (start, n_bases, out, _), lower in zip(blocks, lowers):
        columns = slice(start, start + n_bases * out)
        v_edges = v[columns].view(n_bases, out).T[..., None]
        step[columns] = torch.linalg.solve_triangular(lower.mT, v_edges, upper=True)[..., 0].T.reshape(-1)
    return step
