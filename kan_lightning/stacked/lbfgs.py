"""L-BFGS for a stack of models: one L-BFGS per model, driven in rounds, evaluated together.

L-BFGS is not elementwise: its two-loop recursion, step length, strong-Wolfe line search and
stopping tests use the whole parameter vector, so one optimizer over the stacked tensors would
mix the models. Here each model keeps its own flat parameter vector (a row of one ``(M, n)``
tensor, the parameters in the stack's order) and its own L-BFGS state
(:class:`~kan_lightning.stacked.lbfgs_steps.LBFGSHistory`: history, step length, counters) with
the settings of the configured ``torch.optim.LBFGS``. A step of each model is a generator
(:func:`~kan_lightning.stacked.lbfgs_steps.lbfgs_step`, torch's algorithm) that yields the points
it wants evaluated. Each round collects the points of every model still in its step, evaluates
them in one batched forward and backward (the stacked tensors cut from the ``(M, n)`` points)
and sends each model its own loss and gradient; models whose step has ended sit out the
remaining rounds. No threads: the rounds run one after the other in this one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from kan_lightning.nn.stacked import StackedKAN
from kan_lightning.stacked.lbfgs_steps import LBFGSHistory, lbfgs_step


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
        n_models, n = self.flat.shape
        self.states = [LBFGSHistory(n, self.group["history_size"], self.flat.dtype, self.flat.device) for _ in range(n_models)]

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
        n_models = self.flat.shape[0]
        steps = {m: lbfgs_step(self.states[m], self.flat[m], self.group) for m in range(n_models) if active[m]}
        with torch.no_grad():
            requests = {m: next(gen) for m, gen in steps.items()}
        first_loss: Tensor | None = None
        first_pred: Tensor | None = None
        while requests:
            points = self.flat.clone()
            evaluated = list(requests)
            index = torch.tensor(evaluated, device=points.device)
            points[index] = torch.stack([requests[m] for m in evaluated])
            points.requires_grad_(True)
            mask = torch.zeros(n_models, dtype=torch.bool, device=points.device)
            mask[index] = True
            with torch.enable_grad():
                losses, pred = evaluate(self._split(points))
                torch.where(mask, losses, 0.0).sum().backward()
            losses, pred = losses.detach(), pred.detach()
            grads = points.grad if points.grad is not None else torch.zeros_like(points)
            if first_loss is None:
                first_loss = torch.full_like(losses, float("nan"))
                first_pred = torch.full_like(pred, float("nan"))
                first_loss[index], first_pred[index] = losses[index], pred[index]
            requests = {}
            with torch.no_grad():
                for m in evaluated:
                    try:
                        requests[m] = steps[m].send((losses[m], grads[m]))
                    except StopIteration:
                        pass
        if first_loss is None:
            raise ValueError("no model is active")
        return first_loss, first_pred
