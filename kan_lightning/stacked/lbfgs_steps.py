"""``torch.optim.LBFGS``'s algorithm as a generator, with a history that costs O(1) ops per iteration.

:func:`lbfgs_step` is one ``LBFGS.step`` over a flat parameter vector ``x`` (updated in place):
it yields the points it wants evaluated and is sent ``(loss, flat_grad)`` back, so a caller can
drive many of them in rounds (one batched evaluation per round) without threads. It follows
torch's code line by line: the first step length ``min(1, 1/|g|_1) * lr``, the curvature test
``ys > 1e-10``, ``H_diag = ys / yy``, ``max_iter`` / ``max_eval``, the ``tolerance_grad`` /
``tolerance_change`` tests, the strong-Wolfe line search (torch's cubic interpolation), and the
scalars kept as 0-dim tensors where torch keeps them so (the same float32 rounding).

What differs is the direction. Torch's two-loop recursion runs ~4 tiny ops per stored pair;
here the pairs sit in one preallocated ``(2 * history_size, n)`` buffer (steps ``s`` then
gradient changes ``y``, a ring of slots) with their products ``s_i . y_j`` and ``y_i . y_j``
kept up to date (one matrix-vector product per new pair), and the
two-loop's result comes from its closed form (Byrd, Nocedal, Schnabel 1994): with
``R = triu(S Y^T)`` (its diagonal the ``ys``), ``R a = -S g``, ``R^T c = ys * a + H (Y g + Y Y^T a)``,
the direction is ``-H g - H Y^T a + S^T c`` (``a`` is the two-loop's ``al``). The same algebra, so
it agrees with torch to rounding: a few matmuls and two small triangular solves per iteration.
"""

from __future__ import annotations

from typing import Any, Generator

import torch
from torch import Tensor
from torch.optim.lbfgs import _cubic_interpolate

# what a step yields (a point), is sent (loss, flat gradient) and returns (the first loss)
Evaluations = Generator[Tensor, tuple[Tensor, Tensor], Any]


class LBFGSHistory:
    """One model's state across steps: what ``torch.optim.LBFGS`` keeps in ``optimizer.state``,
    with the (s, y) pairs in a ring of preallocated slots and their products in order, oldest first."""

    def __init__(self, n: int, history_size: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
        self.size = history_size
        self.func_evals = 0
        self.n_iter = 0
        self.d: Tensor | None = None
        self.t: Any = None
        self.H_diag: Any = 1
        self.prev_flat_grad: Tensor | None = None
        self.prev_loss: float | None = None
        self.pairs = torch.zeros(2 * history_size, n, dtype=dtype, device=device)  # s rows, then y rows
        # [0]: s_i . y_j for i <= j (R of the compact form), [1]: y_i . y_j; pairs oldest first
        self.products = torch.zeros(2, history_size, history_size, dtype=dtype, device=device)
        self.count = 0  # pairs stored
        self.head = 0  # the oldest pair's slot (0 until the ring is full)

    def clear(self) -> None:
        """Forget the pairs (torch starts a new list when ``n_iter`` is 1)."""
        self.count = self.head = 0

    def _in_order(self, ring: Tensor) -> Tensor:
        """``(2, h, ...)`` values per slot (s rows, y rows) put oldest first."""
        return ring.roll(-self.head, 1) if self.head else ring

    def add(self, s: Tensor, y: Tensor, ys: Tensor) -> None:
        """Store a pair, dropping the oldest when full (torch's ``pop(0)``)."""
        h = self.size
        if self.count < h:
            slot, self.count = self.count, self.count + 1
        else:
            slot, self.head = self.head, (self.head + 1) % h
            self.products[:, :-1, :-1] = self.products[:, 1:, 1:].clone()  # the oldest leaves
        self.pairs[slot] = s
        self.pairs[h + slot] = y
        k = self.count
        with_y = self._in_order((self.pairs @ y).view(2, h))[:, :k]  # s_i . y and y_i . y
        self.products[:, :k, k - 1] = with_y
        self.products[1, k - 1, :k] = with_y[1]
        self.products[0, k - 1, k - 1] = ys  # the very value torch's ro is 1 / of

    def direction(self, g: Tensor) -> Tensor:
        """``-H g`` for the L-BFGS inverse Hessian ``H`` of the stored pairs (torch's two-loop)."""
        h, k, H = self.size, self.count, self.H_diag
        if k == 0:
            return torch.mul(g.neg(), H)
        with_g = self._in_order((self.pairs @ g.neg()).view(2, h, 1))[:, :k]  # -S g, -Y g as columns
        r, yy = self.products[:, :k, :k]
        al = torch.linalg.solve_triangular(r, with_g[0], upper=True)
        yq = torch.addmm(with_g[1], yy, al, alpha=-1)  # Y q with q = -g - Y^T al
        c = torch.linalg.solve_triangular(r.T, torch.diagonal(r).unsqueeze(1) * al - H * yq, upper=False)
        coef = torch.zeros(2, h, 1, dtype=g.dtype, device=g.device)
        coef[:, :k] = torch.stack([c, torch.mul(al, -H)])
        if self.head:
            coef = coef.roll(self.head, 1)
        # H q + S^T c = -H g - H Y^T al + S^T c
        return torch.addmv(torch.mul(g, -H), self.pairs.T, coef.view(-1))


def _evaluate_at(x: Tensor, t: Any, d: Tensor) -> Evaluations:
    """torch's ``_directional_evaluate``: the loss (a float) and gradient at ``x + t d``."""
    loss, grad = yield x.add(d, alpha=t)
    return float(loss), grad


def strong_wolfe(x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25) -> Evaluations:
    """``torch.optim.lbfgs._strong_wolfe`` with its evaluations yielded; returns
    ``(f_new, g_new, t, ls_func_evals)``."""
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = yield from _evaluate_at(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)
    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new.clone()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new.clone()], [gtd_prev, gtd_new]
            break
        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new.clone(), gtd_new
        f_new, g_new = yield from _evaluate_at(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: refine the bracket until a point satisfies the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # too close to a boundary (twice, or on it): move 0.1 of the bracket away from it
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = yield from _evaluate_at(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than the lowest point
            bracket[high_pos], bracket_f[high_pos], bracket_g[high_pos], bracket_gtd[high_pos] = t, f_new, g_new.clone(), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # the old high becomes the new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos], bracket_g[low_pos], bracket_gtd[low_pos] = t, f_new, g_new.clone(), gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def lbfgs_step(state: LBFGSHistory, x: Tensor, group: dict[str, Any]) -> Evaluations:
    """One ``torch.optim.LBFGS.step`` with the settings ``group`` (an LBFGS param group) on the
    flat parameters ``x`` (moved in place); returns the first evaluation's loss, as torch does.
    Run it under ``torch.no_grad()`` (torch's step is)."""
    lr, max_iter, max_eval = float(group["lr"]), group["max_iter"], group["max_eval"]
    tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
    line_search_fn = group["line_search_fn"]
    if line_search_fn not in (None, "strong_wolfe"):
        raise RuntimeError("only 'strong_wolfe' is supported")

    orig_loss, flat_grad = yield x
    loss = float(orig_loss)
    current_evals = 1
    state.func_evals += 1
    if flat_grad.abs().max() <= tolerance_grad:
        return orig_loss
    d, t = state.d, state.t
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state.n_iter += 1
        if state.n_iter == 1:
            state.clear()
            state.H_diag = 1
            d = flat_grad.neg()
        else:
            y = flat_grad.sub(state.prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:
                state.add(s, y, ys)
                state.H_diag = ys / y.dot(y)
            d = state.direction(flat_grad)
        if state.prev_flat_grad is None:
            state.prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            state.prev_flat_grad.copy_(flat_grad)
        state.prev_loss = loss
        # step length: the first iteration ever scales by the gradient's size
        t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state.n_iter == 1 else lr
        gtd = flat_grad.dot(d)
        if gtd > -tolerance_change:
            break
        ls_func_evals = 0
        if line_search_fn is not None:
            loss, flat_grad, t, ls_func_evals = yield from strong_wolfe(
                x.clone(), t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
            )
            x.add_(d, alpha=t)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
        else:
            x.add_(d, alpha=t)
            if n_iter != max_iter:  # torch evaluates again except in the last iteration
                new_loss, flat_grad = yield x
                loss = float(new_loss)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        state.func_evals += ls_func_evals
        if n_iter == max_iter or current_evals >= max_eval or opt_cond:
            break
        if d.mul(t).abs().max() <= tolerance_change or abs(loss - state.prev_loss) < tolerance_change:
            break
    state.d, state.t = d, t
    return orig_loss
