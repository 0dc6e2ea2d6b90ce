"""``torch.optim.LBFGS``'s control flow for one model, in Python floats, as a generator.

:func:`lbfgs_step` is one ``LBFGS.step`` of one model of a stack. It holds no tensors: it keeps
the scalars (losses, step lengths, directional derivatives, counters) and makes every decision
(the strong-Wolfe line search's brackets and cubic interpolation, the curvature test
``ys > 1e-10``, ``max_iter`` / ``max_eval``, the ``tolerance_grad`` / ``tolerance_change``
tests), while the vector work is requested from a driver that does it for all models at once
(:class:`~kan_lightning.stacked.lbfgs.BatchedLBFGS`). It yields requests and is sent replies:

- ``(EVALUATE, t)``: the loss and gradient at ``x + t d`` (``t`` None: at ``x``); the reply is
  ``(loss, g . d, max |g|, gradient)``, the gradient an opaque handle the driver resolves;
- ``(ITERATE, move, restart, gradient)``: move ``x`` by ``move * d`` (0: not), take ``gradient``
  as the current one and start an iteration: the curvature pair of the previous one (kept
  where :meth:`ModelState.keeps_pair` says so; the history cleared when ``restart``), the new
  direction ``d``; the reply is ``(g . d, max |d|, |g|_1)``.

It returns ``(first loss, move)``: the step's first loss, and the move still to apply to ``x``.
It follows torch's code line by line; torch's 0-dim tensor scalars are Python floats here (the
same values in float64; in float32 they round less often than torch's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generator

EVALUATE, ITERATE = "evaluate", "iterate"
Requests = Generator[tuple, Any, tuple[float, float]]


@dataclass
class ModelState:
    """One model's L-BFGS scalars across steps (what ``torch.optim.LBFGS`` keeps in its state
    besides tensors), and where its pairs sit in the driver's ring of slots."""

    size: int  # history_size
    func_evals: int = 0
    n_iter: int = 0
    t: float = 0.0
    H_diag: float = 1.0
    count: int = 0  # pairs stored
    head: int = 0  # the oldest pair's slot (0 until the ring is full)

    def keeps_pair(self, ys: float, yy: float) -> tuple[int, bool] | None:
        """After a non-restarting iteration's ``(ys, yy)``: the slot for the new pair and whether
        it drops the oldest (torch's ``pop(0)`` when full), or None (torch's curvature test)."""
        if not ys > 1e-10:
            return None
        self.H_diag = ys / yy
        if self.count < self.size:
            self.count += 1
            return self.count - 1, False
        slot, self.head = self.head, (self.head + 1) % self.size
        return slot, True

    def restart(self) -> None:
        self.count = self.head = 0
        self.H_diag = 1.0


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None) -> float:
    """``torch.optim.lbfgs._cubic_interpolate`` on floats."""
    xmin_bound, xmax_bound = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _evaluate_at(t: float | None) -> Requests:
    """The loss, ``g . d`` and ``(gradient, max |g|)`` at ``x + t d``."""
    loss, gtd, gmax, grad = yield (EVALUATE, t)
    return loss, gtd, (grad, gmax)


def strong_wolfe(t, d_norm, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25) -> Requests:
    """``torch.optim.lbfgs._strong_wolfe`` with its evaluations requested (``g``: a
    ``(gradient, max |g|)`` pair); returns ``(f_new, g_new, t, ls_func_evals)``."""
    f_new, gtd_new, g_new = yield from _evaluate_at(t)
    ls_func_evals = 1
    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, gtd_new, g_new = yield from _evaluate_at(t)
        ls_func_evals += 1
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: refine the bracket until a point satisfies the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
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
        f_new, gtd_new, g_new = yield from _evaluate_at(t)
        ls_func_evals += 1
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than the lowest point
            bracket[high_pos], bracket_f[high_pos], bracket_g[high_pos], bracket_gtd[high_pos] = t, f_new, g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # the old high becomes the new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos], bracket_g[low_pos], bracket_gtd[low_pos] = t, f_new, g_new, gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def lbfgs_step(state: ModelState, group: dict[str, Any]) -> Requests:
    """One ``torch.optim.LBFGS.step`` of one model with the settings ``group`` (an LBFGS param
    group); returns ``(first loss, move still to apply)``."""
    lr, max_iter, max_eval = float(group["lr"]), group["max_iter"], group["max_eval"]
    tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
    line_search_fn = group["line_search_fn"]
    if line_search_fn not in (None, "strong_wolfe"):
        raise RuntimeError("only 'strong_wolfe' is supported")

    orig_loss, _, (grad, gmax) = yield from _evaluate_at(None)
    loss = orig_loss
    current_evals = 1
    state.func_evals += 1
    if gmax <= tolerance_grad:
        return orig_loss, 0.0
    move = 0.0
    n_iter = 0
    opt_cond = False
    while n_iter < max_iter:
        n_iter += 1
        state.n_iter += 1
        gtd, d_norm, g_sum = yield (ITERATE, move, state.n_iter == 1, grad)
        move = 0.0
        prev_loss = loss
        # step length: the first iteration ever scales by the gradient's size
        t = state.t = min(1.0, 1.0 / g_sum if g_sum else math.inf) * lr if state.n_iter == 1 else lr
        if gtd > -tolerance_change:
            break
        ls_func_evals = 0
        if line_search_fn is not None:
            loss, (grad, gmax), t, ls_func_evals = yield from strong_wolfe(
                t, d_norm, loss, (grad, gmax), gtd, max_ls=max_eval - current_evals
            )  # torch leaves the line search's tolerance_change at its default, as here
            move = state.t = t
            opt_cond = gmax <= tolerance_grad
        else:
            move = t
            if n_iter != max_iter:  # torch evaluates again except in the last iteration
                loss, _, (grad, gmax) = yield from _evaluate_at(t)
                opt_cond = gmax <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals
        state.func_evals += ls_func_evals
        if n_iter == max_iter or current_evals >= max_eval or opt_cond:
            break
        if abs(t) * d_norm <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
            break
    return orig_loss, move
