"""The weights of each model's best validation epoch (what ``ModelCheckpoint`` keeps)."""

from __future__ import annotations

from typing import Sequence

import torch

from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN


class BestWeights:
    """Per model, the weights of its best epoch so far. While the stack keeps its shapes they
    live in one stacked copy (one masked copy per improvement, whatever the number of models);
    before a grid extension changes the shapes, the models whose best is in that copy are taken
    out as plain KANs (:meth:`before_reshape`), so every model keeps a best of its own grid."""

    def __init__(self, n_models: int) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.uniform: list[list[bool]] = [[] for _ in range(n_models)]
        self.in_state = [False] * n_models
        self.models: list[KAN | None] = [None] * n_models

    @torch.no_grad()
    def update(self, stack: StackedKAN, better: Sequence[bool]) -> None:
        """Take the current weights of the models marked in ``better``."""
        if not any(better):
            return
        current = stack.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in current.items()}
        else:
            sel = torch.tensor(list(better), device=next(iter(current.values())).device)
            for k, v in current.items():
                self.state[k][sel] = v.detach()[sel]
        for m, flag in enumerate(better):
            if flag:
                self.in_state[m], self.models[m] = True, None
                self.uniform[m] = [layer.uniform_grids[m] for layer in stack.layers]

    def before_reshape(self, stack: StackedKAN) -> None:
        """Call before ``stack``'s shapes change: the bests in the stacked copy become plain KANs."""
        if self.state is not None:
            for m, inside in enumerate(self.in_state):
                if inside:
                    self.models[m] = stack.model(m, self.state, self.uniform[m])
        self.state, self.in_state = None, [False] * len(self.in_state)

    def model(self, stack: StackedKAN, m: int) -> KAN | None:
        """Model ``m``'s best weights as a plain KAN (``None``: it has no best epoch)."""
        if self.in_state[m]:
            return stack.model(m, self.state, self.uniform[m])
        return self.models[m]
