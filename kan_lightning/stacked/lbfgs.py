"""L-BFGS for a stack of models: one ``torch.optim.LBFGS`` per model, evaluated together.

L-BFGS is not elementwise: its two-loop recursion, step length, strong-Wolfe line search and
stopping tests use the whole parameter vector, so one optimizer over the stacked tensors would
mix the models. Here each model keeps its own parameters (leaf tensors shaped as in its KAN)
and its own ``torch.optim.LBFGS`` (history, line search, stopping): the very optimizer a
separate run uses. Each optimizer's ``step`` runs in its own thread; its closure hands the
request to the stack and waits. When every running optimizer waits for an evaluation (or has
finished its step), the stack evaluates all the waiting models at once, at the points each
asked for (one batched forward and backward, the stacked tensors assembled from the per-model
leaves), and hands each its own loss and gradients. Models whose step has ended sit out the
remaining evaluations. Only one thread computes at a time (the others wait), so the result
does not depend on thread scheduling.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch
from torch import Tensor

from kan_lightning.nn.stacked import StackedKAN


class PerModelLBFGS:
    """``factory(params) -> LBFGS`` once per model of ``stack``, over that model's own leaves."""

    def __init__(self, stack: StackedKAN, factory: Callable[[list[Tensor]], torch.optim.Optimizer]) -> None:
        self.stack = stack
        self.names = [name for name, _ in stack.named_parameters()]
        self.leaves: list[list[Tensor]] = []
        self.pull()
        self.optimizers = [factory(leaves) for leaves in self.leaves]

    def pull(self) -> None:
        """Per-model leaves from the stack's parameters."""
        params = dict(self.stack.named_parameters())
        self.leaves = [
            [params[name].detach()[m].clone().requires_grad_(True) for name in self.names]
            for m in range(self.stack.num_models)
        ]

    @torch.no_grad()
    def push(self) -> None:
        """Copy the leaves into the stack's parameters (for checkpoints and grid updates)."""
        params = dict(self.stack.named_parameters())
        for j, name in enumerate(self.names):
            params[name].copy_(torch.stack([leaves[j] for leaves in self.leaves]))

    @torch.no_grad()
    def pull_in_place(self) -> None:
        """Copy the stack's parameters into the leaves in place (after a per-model grid update
        changed the coefficients: the optimizers keep their state, as in a separate run)."""
        params = dict(self.stack.named_parameters())
        for j, name in enumerate(self.names):
            for m, leaves in enumerate(self.leaves):
                leaves[j].copy_(params[name][m])

    def stacked_parameters(self) -> dict[str, Tensor]:
        """The stack's parameters assembled from the leaves (differentiable in them)."""
        return {name: torch.stack([leaves[j] for leaves in self.leaves]) for j, name in enumerate(self.names)}

    def step(self, evaluate: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]], active: Sequence[bool]) -> tuple[Tensor, Tensor]:
        """One ``LBFGS.step`` of every model marked ``active``. ``evaluate(params)`` runs the
        stack with the given parameters (:meth:`stacked_parameters`) and returns per-model losses
        ``(M,)`` and outputs. Returns the losses and outputs of each model's first evaluation
        (the step's starting point, what ``kan-train`` logs; NaN for inactive models)."""
        n_models = len(self.leaves)
        cond = threading.Condition()
        waiting: set[int] = set()
        finished = {m for m in range(n_models) if not active[m]}
        results: dict[int, Tensor] = {}
        errors: dict[int, BaseException] = {}
        first: list[tuple[Tensor, Tensor] | None] = [None] * n_models

        def closure_of(m: int):
            def closure() -> Tensor:
                with cond:
                    waiting.add(m)
                    cond.notify_all()
                    while m in waiting:
                        cond.wait()
                    return results.pop(m)

            return closure

        def run(m: int) -> None:
            try:
                self.optimizers[m].step(closure_of(m))
            except BaseException as err:  # noqa: BLE001 - handed to the caller below
                errors[m] = err
            finally:
                with cond:
                    finished.add(m)
                    cond.notify_all()

        threads = [threading.Thread(target=run, args=(m,), daemon=True) for m in range(n_models) if active[m]]
        for thread in threads:
            thread.start()
        while True:
            with cond:
                while len(waiting) + len(finished) < n_models:
                    cond.wait()
                if not waiting:
                    break
                evaluated = sorted(waiting)
                mask = torch.zeros(n_models, dtype=torch.bool)
                mask[evaluated] = True
                for m in evaluated:
                    for leaf in self.leaves[m]:
                        leaf.grad = None
                with torch.enable_grad():
                    losses, pred = evaluate(self.stacked_parameters())
                    torch.where(mask.to(losses.device), losses, 0.0).sum().backward()
                for m in evaluated:
                    if first[m] is None:
                        first[m] = (losses[m].detach(), pred[m].detach())
                    results[m] = losses[m].detach()
                    waiting.discard(m)
                cond.notify_all()
        for thread in threads:
            thread.join()
        if errors:
            raise next(iter(errors.values()))
        ref_loss, ref_pred = next(f for f in first if f is not None)
        loss = torch.stack([f[0] if f is not None else torch.full_like(ref_loss, float("nan")) for f in first])
        pred = torch.stack([f[1] if f is not None else torch.full_like(ref_pred, float("nan")) for f in first])
        return loss, pred
