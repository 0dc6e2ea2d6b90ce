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
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became NaN/Inf at optimizer step ``step``."""

    def __init__(
        self,
        message: str,
        step: int | None = None,
        epoch: int | None = None,
        batch_idx: int | None = None,
        value: float | None = None,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.batch_idx = batch_idx
        self.value = value
        self.checkpoint = checkpoint


class TrainingInterrupted(BaseException):
    """A signal stopped the run (a ``BaseException``, like ``KeyboardInterrupt``: code that
    catches ``Exception`` lets it through, and a Hydra multirun stops instead of starting the
    next job). ``checkpoint`` is where the state was saved, if it was."""

    def __init__(
        self, signum: int, step: int | None = None, epoch: int | None = None, checkpoint: str | None = None
    ) -> None:
        self.signum = int(signum)
        self.record: dict[str, Any] | None = None  # the run record, once train() wrote it
        self.step = step
        self.epoch = epoch
        self.checkpoint = checkpoint
        where = f" at step {step} (epoch {epoch})" if step is not None else ""
        saved = f"; checkpoint saved to {checkpoint}" if checkpoint else ""
        super().__init__(f"interrupted by {self.signal_name}{where}{saved}")

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


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
