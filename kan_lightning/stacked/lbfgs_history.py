"""The L-BFGS curvature pairs of a stack of models, and all their search directions in one go.

Each model's pairs sit in a ring of ``history_size`` slots of one ``(M, 2 * history_size, n)``
buffer (steps ``s`` then gradient changes ``y``), with their products ``s_i . y_j`` and
``y_i . y_j`` per slot pair (a column and row per new pair). Torch's two-loop recursion runs ~4
tiny ops per stored pair and model; here the two-loop's result comes from its closed form
(Byrd, Nocedal, Schnabel 1994), batched over the models with histories of different lengths
(the products kept oldest first, shifted when the oldest pair leaves): with the pairs oldest first, ``R = triu(S Y^T)`` (its diagonal the ``ys``), ``R a = -S g``,
``R^T c = ys * a + H (Y g + Y Y^T a)``, the direction is ``-H g - H Y^T a + S^T c`` (``a`` is the
two-loop's ``al``). Each model's ``S g`` and ``Y g`` are put oldest first by a gather; unused slots
get coefficients 0. The same algebra, so it
agrees with torch to rounding: a few batched matmuls and two batched triangular solves per round,
whatever the number of models.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from kan_lightning.stacked.lbfgs_steps import ModelState


class StackedHistory:
    """The pairs of ``n_models`` models of ``n`` parameters, ``size`` (history_size) each."""

    def __init__(self, n_models: int, n: int, size: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if size < 1:
            raise ValueError(f"history_size must be >= 1, got {size}")
        self.size = size
        self.pairs = torch.zeros(n_models, 2 * size, n, dtype=dtype, device=device)  # s rows, then y rows
        # s_i . y_j for i <= j (R of the compact form; the solves read no more) and y_i . y_j,
        # pairs oldest first
        self.sy = torch.zeros(n_models, size, size, dtype=dtype, device=device)
        self.yy = torch.zeros(n_models, size, size, dtype=dtype, device=device)
        self._models = torch.arange(n_models, device=device)
        self._slots = torch.arange(size, device=device)

    def direction(self, g: Tensor, s: Tensor, y: Tensor, ys: Tensor, added: Sequence[tuple[int, int, bool]], states: Sequence[ModelState]) -> Tensor:
        """``-H g`` per model ``(M, n)`` for the gradients ``g`` after storing the pairs ``added``
        (``(model, slot, dropped the oldest)``: rows of ``s``, ``y``, ``ys``); ``states`` give each
        model's pair count, oldest slot and ``H``. Rows of models not iterating are computed and
        not used."""
        h = self.size
        count = torch.tensor([st.count for st in states], device=g.device)
        head = torch.tensor([st.head for st in states], device=g.device)
        H = torch.tensor([st.H_diag for st in states], dtype=g.dtype, device=g.device)
        if added:
            models, slots, dropped = (torch.tensor(v, device=g.device) for v in zip(*added))
            self.pairs[models, slots] = s[models]
            self.pairs[models, h + slots] = y[models]
        # s_i . y, y_i . y | -S g, -Y g (rows times the pairs transposed: the faster kernel)
        both = torch.bmm(torch.stack([y, g.neg()], dim=1), self.pairs.mT).view(-1, 2, 2, h)
        order = (head.unsqueeze(1) + self._slots) % h  # (M, h) slots oldest first
        both = both.gather(3, order.view(-1, 1, 1, h).expand(-1, 2, 2, -1))
        if added:
            full = models[dropped]
            if len(full):  # the oldest leaves
                for products in (self.sy, self.yy):
                    products[full, :-1, :-1] = products[full, 1:, 1:]  # (indexing copies)
            last, rows, with_y = count[models].unsqueeze(1) - 1, self._slots.unsqueeze(0), both[models, 0]
            self.sy[models.unsqueeze(1), rows, last] = with_y[:, 0]
            self.yy[models.unsqueeze(1), rows, last] = with_y[:, 1]
            self.yy[models.unsqueeze(1), last, rows] = with_y[:, 1]
            self.sy[models, last.squeeze(1), last.squeeze(1)] = ys[models]  # the very value torch's ro is 1 / of
        with_g, yy, r = both[:, 1], self.yy, self.sy
        # a history not full holds its pairs in the first slots, oldest first: the unused ones
        # (stale but finite) get -S g = -Y g = 0 and R's diagonal 1, so a = 0 there; c there is dropped
        valid = self._slots < count.unsqueeze(1) if min(st.count for st in states) < h else None
        if valid is not None:
            with_g = torch.where(valid.unsqueeze(1), with_g, 0)
            r = r.clone()
            r.diagonal(dim1=1, dim2=2).masked_fill_(~valid, 1.0)
        al = torch.linalg.solve_triangular(r, with_g[:, 0].unsqueeze(2), upper=True)
        yq = torch.baddbmm(with_g[:, 1].unsqueeze(2), yy, al, alpha=-1)  # Y q with q = -g - Y^T al
        Hc = H.view(-1, 1, 1)
        c = torch.linalg.solve_triangular(r.mT, r.diagonal(dim1=1, dim2=2).unsqueeze(2) * al - Hc * yq, upper=False)
        if valid is not None:
            c = torch.where(valid.unsqueeze(2), c, 0)
        coef = y.new_zeros(len(y), 2 * h).scatter_(1, torch.cat([order, order + h], 1), torch.cat([c, al * -Hc], 1).squeeze(2))
        # H q + S^T c = -H g - H Y^T al + S^T c
        return torch.baddbmm((g * -H.unsqueeze(1)).unsqueeze(1), coef.unsqueeze(1), self.pairs).squeeze(1)
