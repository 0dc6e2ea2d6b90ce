"""MultiStart: at the start of fit, try several initializations briefly and keep the best."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from kan_lightning.lit.lean_lbfgs import lean_optimizer
from kan_lightning.lit.module import objective

from .common import integer, network, rebuild_optimizers, split_tensors


def candidate_seed(base: int, index: int) -> int:
    """The torch seed of initialization ``index`` (1, 2, ...) of a run seeded ``base``: mixed, so
    that run ``s``'s candidates are not the first draws of runs ``s + 1``, ``s + 2``..."""
    return int(np.random.SeedSequence([int(base), int(index)]).generate_state(1)[0])


def fresh_parameters(model: torch.nn.Module, seed: int) -> list[torch.Tensor]:
    """The parameters of a new ``type(model)(**model.config)`` built under torch seed ``seed``
    (the global random state is left as it was): a new draw of the model's own initialization."""
    with torch.random.fork_rng(devices=[]):  # (built on the CPU: only its generator is used)
        torch.default_generator.manual_seed(seed)
        fresh = type(model)(**model.config)
    return [p.detach() for p in fresh.parameters()]


def fit_candidate(pl_module, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """``steps`` full-batch steps of the run's optimizer (``pl_module.optimizer_factory``, e.g.
    LBFGS with its history and line search) on ``net``; returns the training objective after."""
    optimizer = lean_optimizer(pl_module.optimizer_factory(net.parameters()))

    def closure():
        optimizer.zero_grad()
        loss = objective(net, x, y)[0]
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(steps):
            optimizer.step(closure)
    with torch.no_grad():
        return float(objective(net, x, y)[0])


class MultiStart(L.Callback):
    """Escape bad initializations: at the start of fit, draw ``restarts`` more initializations of
    the network's parameters, train each (and the network's own) for ``steps`` full-batch steps of
    the run's optimizer on the whole training set, and start the fit from the initialization that
    reached the lowest training objective. The fit then runs from that initialization (not from
    the candidate's trained state) as without this callback: the step schedule stays the configured
    one, the optimizer starts fresh, and when the network's own initialization wins nothing changes
    at all. KAN [2, 1, 1] seed 1 of ``paper_grid_extension`` starts at a
    stationary point that neither LBFGS nor Levenberg-Marquardt leaves (README "Results").

    A callback of its own rather than a grid-extension option: a bad start is a property of any
    fit, not of the grid schedule, and the candidates train before any callback acts.

    Selection is on the training objective, not on validation: what is being escaped is an
    optimization failure, which the training loss shows by orders of magnitude after a few steps;
    the validation split stays unused by the choice (``GridExtension(keep_best=True)`` already
    selects on it) and runs without one can use this too.

    Draws are deterministic: candidate ``i`` is the model built anew (``type(model)(**model.config)``)
    under torch seed :func:`candidate_seed` ``(seed, i)``, ``seed`` defaulting to
    ``torch.initial_seed()`` (the run's ``seed``); only the parameters are taken (grids, masks and
    buffers stay). Candidates train on copies; under DDP every rank computes the same and rank 0's
    choice is broadcast. Skipped when the fit resumes (``global_step > 0`` or a restored choice).
    :meth:`report` (``metrics.json`` ``callbacks.<name>``) gives each candidate's seed and
    objective and the choice.

    Args:
        restarts: initializations tried besides the network's own; 0: off (the callback does nothing).
        steps: optimizer steps per candidate (LBFGS: each up to ``max_iter`` evaluations).
        seed: base seed of the draws; ``None``: ``torch.initial_seed()`` at the start of fit.
    """

    def __init__(self, restarts: int = 0, steps: int = 20, seed: int | None = None) -> None:
        self.restarts = integer("restarts", restarts, 0)
        self.steps = integer("steps", steps, 1)
        self.seed = None if seed is None else integer("seed", seed, 0)
        self.record: dict | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.restarts or self.record is not None or trainer.global_step > 0:
            return
        model = network(pl_module)
        if not isinstance(getattr(model, "config", None), dict):
            raise TypeError(f"MultiStart needs a model that rebuilds from model.config (a KAN), got {type(model).__name__}")
        x, y = split_tensors(trainer, model, "MultiStart")
        base = torch.initial_seed() if self.seed is None else self.seed
        seeds = [None] + [candidate_seed(base, i) for i in range(1, self.restarts + 1)]
        starts, losses = [], []
        for seed in seeds:
            start = [p.detach().clone() for p in model.parameters()] if seed is None else fresh_parameters(model, seed)
            starts.append(start)
            net = copy.deepcopy(model)
            with torch.no_grad():
                for p, value in zip(net.parameters(), start):
                    p.copy_(value)
            losses.append(fit_candidate(pl_module, net, x, y, self.steps))
        finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
        chosen = min(finite, key=lambda i: losses[i]) if finite else 0
        if trainer.world_size > 1:
            chosen = trainer.strategy.broadcast(chosen, src=0)
        if chosen:
            with torch.no_grad():
                for p, value in zip(model.parameters(), starts[chosen]):
                    p.copy_(value)
            rebuild_optimizers(pl_module)  # (no step taken yet; the optimizers start empty anyway)
        self.record = {"restarts": self.restarts, "steps": self.steps, "seeds": seeds, "objective": losses, "chosen": chosen}
        shown = ", ".join(f"{'own' if s is None else i}: {v:.4g}" for i, (s, v) in enumerate(zip(seeds, losses)))
        rank_zero_info(
            f"MultiStart: training objective after {self.steps} steps from {len(seeds)} initializations "
            f"({shown}); starting from {'its own' if not chosen else f'initialization {chosen}'}"
        )

    def report(self) -> dict:
        """``{restarts, steps, seeds, objective, chosen}`` (``seeds[0]`` ``None``: the network's own
        initialization; ``chosen``: the index started from); ``{"restarts": 0}`` when off."""
        return dict(self.record) if self.record is not None else {"restarts": self.restarts}

    def state_dict(self) -> dict:
        return {"record": self.record}

    def load_state_dict(self, state_dict: dict) -> None:
        self.record = state_dict.get("record")
