"""RegularizationSchedule: move a penalty weight along a schedule over the epochs."""

from __future__ import annotations

import math

import lightning as L

from .common import network


SCHEDULE_SHAPES = ("linear", "cosine", "geometric")


class RegularizationSchedule(L.Callback):
    """Move one penalty weight ``model.regularization[term]`` from ``start`` to ``end``
    (the guide's progressive sparsification), set at the start of every training epoch and
    logged as ``reg_weight/<term>``.

    The weight is ``start`` up to ``start_epoch``, ``end`` from ``end_epoch`` on (default: the
    last epoch), and in between follows ``shape``: ``linear``, ``cosine`` (half a cosine, flat at
    both ends) or ``geometric`` (linear in log space; needs both weights > 0). With
    ``start_epoch == end_epoch`` it is a step (e.g. switching regularization off for fine-tuning).
    """

    def __init__(
        self,
        term: str = "l1",
        start: float = 1e-3,
        end: float = 1e-1,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        shape: str = "linear",
    ) -> None:
        from kan_lightning.nn.network import REGULARIZATION_TERMS

        if term not in REGULARIZATION_TERMS:
            raise ValueError(f"unknown regularization term {term!r}; known: {', '.join(REGULARIZATION_TERMS)}")
        if shape not in SCHEDULE_SHAPES:
            raise ValueError(f"shape must be one of {SCHEDULE_SHAPES}, got {shape!r}")
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < 0:
            raise ValueError(f"start and end must be finite and >= 0, got {start!r}, {end!r}")
        if shape == "geometric" and (start <= 0 or end <= 0):
            raise ValueError("shape='geometric' needs start > 0 and end > 0")
        if start_epoch < 0 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(f"need 0 <= start_epoch <= end_epoch, got {start_epoch}, {end_epoch}")
        self.term = term
        self.start = start
        self.end = end
        self.start_epoch = int(start_epoch)
        self.end_epoch = None if end_epoch is None else int(end_epoch)
        self.shape = shape

    def value(self, epoch: int, end_epoch: int | None = None) -> float:
        """The weight in ``epoch`` (``end_epoch`` replaces a missing ``self.end_epoch``)."""
        last = self.end_epoch if self.end_epoch is not None else end_epoch
        if last is None:
            raise ValueError("RegularizationSchedule needs end_epoch (or a trainer with max_epochs)")
        last = max(last, self.start_epoch)
        if epoch >= last:
            return self.end
        if epoch <= self.start_epoch:
            return self.start
        progress = (epoch - self.start_epoch) / (last - self.start_epoch)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * progress
        if self.shape == "cosine":
            return self.start + (self.end - self.start) * 0.5 * (1 - math.cos(math.pi * progress))
        return self.start * (self.end / self.start) ** progress

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        model = network(pl_module)
        if not isinstance(getattr(model, "regularization", None), dict):
            return
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else None
        model.regularization[self.term] = self.value(trainer.current_epoch, last)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        model = network(pl_module)
        if isinstance(getattr(model, "regularization", None), dict):
            pl_module.log(f"reg_weight/{self.term}", model.regularization[self.term], on_step=False, on_epoch=True)
