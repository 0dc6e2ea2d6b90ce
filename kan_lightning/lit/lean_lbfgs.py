"""``torch.optim.LBFGS`` with a leaner two-loop recursion, the same numbers in float64.

Torch's search direction runs ~8 tensor ops per stored curvature pair (a dot, a product with
``ro``, a negation and an in-place add in each loop), each a few microseconds of Python and
dispatch for the tiny parameter vectors of a KAN: with ``history_size=100`` ~1600 ops, 1.4 ms per
iteration for the 375 parameters of the paper toy's KAN [2, 5, 1] at G = 20 (one thread), a third
of a forward and backward pass; here 0.95 ms.
:class:`LBFGS` keeps the dots and in-place adds (the same kernels on the same tensors) and does
the scalar arithmetic on Python floats: in float64 ``al = (s . q) * ro`` and ``al - be`` round
exactly as the 0-dim tensors do, and ``add_`` takes its ``alpha`` as a double either way.
Everything else is torch's ``step`` line for line, with the same ``state`` (``al`` included, as
0-dim tensors), so checkpoints move freely between the two. Parameters of another dtype
(float32: torch rounds the scalars to it) take torch's own step. The class keeps torch's name,
so what is keyed by it (the ``lr-LBFGS`` of Lightning's LearningRateMonitor) stays the same.

:func:`lean_optimizer` swaps a plain ``torch.optim.LBFGS`` for one (``KANRegressor`` does).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.optim.lbfgs import _strong_wolfe, _to_scalar


def lean_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """An :class:`LBFGS` with the settings and parameters of a plain ``torch.optim.LBFGS``
    (before it has state); any other optimizer as it is."""
    if type(optimizer) is not torch.optim.LBFGS or optimizer.state:
        return optimizer
    return LBFGS(optimizer.param_groups[0]["params"], **optimizer.defaults)


class LBFGS(torch.optim.LBFGS):
    """``torch.optim.LBFGS`` whose float64 steps compute the direction with fewer tensor ops
    (module docstring); bit for bit the same iterates and state."""

    def _two_loop(self, flat_grad, old_dirs, old_stps, ro, H_diag, al):
        """Torch's recursion: ``-H g`` from the stored pairs, ``al`` (0-dim tensors) filled in."""
        ro_f = torch.stack(ro).tolist() if ro else []  # (no pair yet when the first ones fail ys > 1e-10)
        al_f = [0.0] * len(old_dirs)
        q = flat_grad.neg()
        for i in range(len(old_dirs) - 1, -1, -1):
            al_f[i] = old_stps[i].dot(q).item() * ro_f[i]
            q.add_(old_dirs[i], alpha=-al_f[i])
        r = torch.mul(q, H_diag)
        for i in range(len(old_dirs)):
            be_i = old_dirs[i].dot(r).item() * ro_f[i]
            r.add_(old_stps[i], alpha=al_f[i] - be_i)
        al[: len(al_f)] = torch.tensor(al_f, dtype=flat_grad.dtype, device=flat_grad.device).unbind()
        return r

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]):  # type: ignore[override]
        if self._params[0].dtype != torch.float64:
            return super().step(closure)
        # From here on torch.optim.LBFGS.step (torch 2.x), but for the direction (_two_loop).
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = _to_scalar(group["lr"])
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        line_search_fn, history_size = group["line_search_fn"], group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        orig_loss = closure()
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        opt_cond = flat_grad.abs().max() <= tolerance_grad
        if opt_cond:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)
                if "al" not in state:
                    state["al"] = [None] * history_size
                d = self._two_loop(flat_grad, old_dirs, old_stps, ro, H_diag, state["al"])

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                if line_search_fn != "strong_wolfe":
                    raise RuntimeError("only 'strong_wolfe' is supported")
                x_init = self._clone_param()

                def obj_func(x, t, d):
                    return self._directional_evaluate(closure, x, t, d)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                self._add_grad(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                if n_iter != max_iter:
                    with torch.enable_grad():
                        loss = closure()
                    loss = float(loss)
                    flat_grad = self._gather_flat_grad()
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss
