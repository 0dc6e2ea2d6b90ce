"""L-BFGS for a stack of models: one L-BFGS per model, driven in rounds, batched across models.

L-BFGS is not elementwise: its two-loop recursion, step length, strong-Wolfe line search and
stopping tests use the whole parameter vector, so one optimizer over the stacked tensors would
mix the models. Here each model keeps its own flat parameter vector (a row of one ``(M, n)``
tensor, the parameters in the stack's order) and its own L-BFGS with the settings of the
configured ``torch.optim.LBFGS``: its decisions and scalars in a generator of plain Python
(:func:`~kan_lightning.stacked.lbfgs_steps.lbfgs_step`, torch's algorithm), its vectors in rows
of the driver's ``(M, ...)`` tensors. Each round first starts the iterations that the models
asked for, together (the curvature pairs and directions of all models in a few batched ops,
:class:`~kan_lightning.stacked.lbfgs_history.StackedHistory`), then evaluates the points of every
model still in its step in one batched forward and backward; the scalars the models branch on
(losses, ``g . d``, maxima, sums) come back in one ``.tolist()`` per phase. Models whose step has
ended sit out the remaining rounds. No threads: the rounds run one after the other in this one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from kan_lightning.nn.stacked import StackedKAN
from kan_lightning.stacked.lbfgs_history import StackedHistory
from kan_lightning.stacked.lbfgs_steps import ITERATE, ModelState, lbfgs_step

# (points (M, n), which rows count (M,) bool) -> losses (M,), gradients (M, n), anything
Evaluate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Any]]


class BatchedLBFGS:
    """One ``torch.optim.LBFGS`` (settings: its param group ``group``) per row of ``x`` (``(M, n)``,
    moved in place)."""

    def __init__(self, x: Tensor, group: dict[str, Any]) -> None:
        self.x, self.group = x, group
        n_models, n = x.shape
        self.states = [ModelState(group["history_size"]) for _ in range(n_models)]
        self.history = StackedHistory(n_models, n, group["history_size"], x.dtype, x.device)
        self.d = torch.zeros_like(x)
        self.prev_grad = torch.zeros_like(x)

    @torch.no_grad()
    def step(self, evaluate: Evaluate, active: Sequence[bool]) -> tuple[Tensor, Any, Tensor]:
        """One L-BFGS step of every model marked ``active``; returns the losses, the rest of
        ``evaluate``'s answer and the rows that counted at the first evaluation (the step's
        starting point, what torch's ``step`` returns)."""
        steps = {m: lbfgs_step(self.states[m], self.group) for m in range(len(self.states)) if active[m]}
        if not steps:
            raise ValueError("no model is active")
        requests = {m: next(gen) for m, gen in steps.items()}
        rounds: list[Tensor] = []  # each evaluation's gradients: the handles the models keep
        moves: dict[int, float] = {}
        first = None

        def answer(models: list[int], replies: dict[int, tuple]) -> None:
            for m in models:
                try:
                    requests[m] = steps[m].send(replies[m])
                except StopIteration as stop:
                    del requests[m]
                    moves[m] = stop.value[1]

        while requests:
            iterating = [m for m, request in requests.items() if request[0] == ITERATE]
            if iterating:
                answer(iterating, self._iterate({m: requests[m] for m in iterating}, rounds))
                continue
            models = list(requests)
            mask = torch.zeros(len(self.states), dtype=torch.bool, device=self.x.device)
            mask[models] = True
            points = self.x.clone()
            along = {m: requests[m][1] for m in models if requests[m][1] is not None}
            if along:
                index, t = self._rows(along)
                points[index] = self.x[index] + self.d[index] * t
            losses, grads, extra = evaluate(points, mask)
            if first is None:
                first = (losses, extra, mask)
            loss, gtd, gmax = torch.stack([losses, (grads * self.d).sum(1), grads.abs().amax(1)]).tolist()
            rounds.append(grads)
            answer(models, {m: (loss[m], gtd[m], gmax[m], (len(rounds) - 1, m)) for m in models})
        self._move(moves)
        return first

    def _rows(self, values: dict[int, float]) -> tuple[Tensor, Tensor]:
        index = torch.tensor(list(values), device=self.x.device)
        return index, torch.tensor(list(values.values()), dtype=self.x.dtype, device=self.x.device).unsqueeze(1)

    def _move(self, moves: dict[int, float]) -> None:
        """``x += t d`` for the models with a move (the same sum as their evaluated point)."""
        moves = {m: t for m, t in moves.items() if t}
        if moves:
            index, t = self._rows(moves)
            self.x[index] = self.x[index] + self.d[index] * t

    def _iterate(self, requests: dict[int, tuple], rounds: list[Tensor]) -> dict[int, tuple]:
        """Start an iteration of each requesting model: its move, the curvature pair of its last
        iteration, the new direction. Replies ``(g . d, max |d|, |g|_1)``."""
        self._move({m: request[1] for m, request in requests.items()})
        models = list(requests)
        g = torch.zeros_like(self.x)
        g[models] = torch.stack([rounds[r][row] for r, row in (requests[m][3] for m in models)])
        t = torch.tensor([st.t for st in self.states], dtype=self.x.dtype, device=self.x.device)
        s, y = self.d * t.unsqueeze(1), g - self.prev_grad
        ys = (y * s).sum(1)
        ys_list, yy, g_sum = torch.stack([ys, (y * y).sum(1), g.abs().sum(1)]).tolist()
        added = []
        for m in models:
            state = self.states[m]
            if requests[m][2]:
                state.restart()
            else:
                kept = state.keeps_pair(ys_list[m], yy[m])
                if kept is not None:
                    added.append((m, *kept))
        d = self.history.direction(g, s, y, ys, added, self.states)
        self.d[models] = d[models]
        self.prev_grad[models] = g[models]
        gtd, d_norm = torch.stack([(g * self.d).sum(1), self.d.abs().amax(1)]).tolist()
        return {m: (gtd[m], d_norm[m], g_sum[m]) for m in models}


class PerModelLBFGS:
    """One L-BFGS per model of ``stack`` with the settings of ``factory(params)`` (a
    ``torch.optim.LBFGS``, kept as :attr:`optimizer` for its settings and name)."""

    def __init__(self, stack: StackedKAN, factory: Callable[[list[Tensor]], torch.optim.Optimizer]) -> None:
        self.stack = stack
        self.names = [name for name, _ in stack.named_parameters()]
        self.pull()
        self.optimizer = factory([torch.zeros(0, dtype=self.flat.dtype, device=self.flat.device)])
        if not isinstance(self.optimizer, torch.optim.LBFGS):
            raise TypeError(f"per-model L-BFGS needs torch.optim.LBFGS, got {type(self.optimizer).__name__}")
        self.group = self.optimizer.param_groups[0]
        self.driver = BatchedLBFGS(self.flat, self.group)
        self.states = self.driver.states

    def _params(self) -> list[Tensor]:
        params = dict(self.stack.named_parameters())
        return [params[name] for name in self.names]

    def _split(self, flat: Tensor) -> dict[str, Tensor]:
        """The stack's parameters cut from ``(M, n)`` rows (contiguous, as the stacked ones)."""
        params = self._params()
        pieces = flat.split([p[0].numel() for p in params], dim=1)
        return {name: piece.reshape(p.shape).contiguous() for name, piece, p in zip(self.names, pieces, params)}

    def pull(self) -> None:
        """The models' flat parameters from the stack's parameters."""
        self.flat = torch.cat([p.detach().flatten(1) for p in self._params()], dim=1)

    @torch.no_grad()
    def push(self) -> None:
        """Copy the flat parameters into the stack's (for checkpoints and grid updates)."""
        for p, value in zip(self._params(), self._split(self.flat).values()):
            p.copy_(value)

    @torch.no_grad()
    def pull_in_place(self) -> None:
        """Copy the stack's parameters into the flat ones in place (after a per-model grid update
        changed the coefficients: the L-BFGS states are kept, as in a separate run)."""
        self.flat.copy_(torch.cat([p.detach().flatten(1) for p in self._params()], dim=1))

    def stacked_parameters(self) -> dict[str, Tensor]:
        """The stack's parameters at the current flat parameters."""
        return self._split(self.flat)

    def step(self, evaluate: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]], active: Sequence[bool]) -> tuple[Tensor, Tensor]:
        """One L-BFGS step of every model marked ``active``. ``evaluate(params)`` runs the stack
        with the given parameters (:meth:`stacked_parameters`) and returns per-model losses
        ``(M,)`` and outputs. Returns the losses and outputs of each model's first evaluation
        (the step's starting point, what ``kan-train`` logs; NaN for inactive models)."""

        def run(points: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            points.requires_grad_(True)
            with torch.enable_grad():
                losses, pred = evaluate(self._split(points))
                torch.where(mask, losses, 0.0).sum().backward()
            grads = points.grad if points.grad is not None else torch.zeros_like(points)
            return losses.detach(), grads, pred.detach()

        losses, pred, mask = self.driver.step(run, active)
        nan = float("nan")
        return torch.where(mask, losses, nan), torch.where(mask.view(-1, *[1] * (pred.dim() - 1)), pred, nan)
