"""Training faults as clean stops: divergence and pre-emption.

- :class:`~kan_lightning.lit.callbacks.DivergenceGuard` stops training with :class:`TrainingDiverged` as soon as a training
  loss (or a weight) is NaN/Inf, naming the step. It raises from ``on_train_batch_end``, before
  validation and before any end-of-epoch checkpoint, so nothing diverged is ever saved:
  ``last.ckpt`` keeps the last good epoch. (Lightning's ``ModelCheckpoint`` saves on an exception
  only with ``save_on_exception=True``, which the configs leave off; ``LastCheckpoint`` only
  writes in ``on_train_epoch_end``, which an exception skips.)
- :class:`~kan_lightning.lit.callbacks.GracefulShutdown` turns SIGTERM/SIGINT during training into a stop at the next batch
  boundary: it writes ``last.ckpt`` atomically and raises :class:`TrainingInterrupted`, which
  ``kan_lightning.commands.train`` records as status ``interrupted``. A second SIGINT aborts at once.
- :func:`raise_on_sigterm` makes SIGTERM outside the training loop (data generation, testing)
  raise :class:`TrainingInterrupted` the way SIGINT raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterator

from kan_lightning.lit.faults import TrainingDiverged, TrainingInterrupted, in_main_thread

__all__ = ["TrainingDiverged", "TrainingInterrupted", "in_main_thread", "raise_on_sigterm"]


@contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`TrainingInterrupted` (in the main thread only).
    Lightning chains this handler behind its own while it runs, and :class:`GracefulShutdown`
    replaces it during the training loop."""
    if not in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def __getattr__(name: str) -> Any:
    # The two callbacks live in kan_lightning.lit.callbacks; run configs written before still
    # name them here.
    if name in ("DivergenceGuard", "GracefulShutdown"):
        from kan_lightning.lit import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
