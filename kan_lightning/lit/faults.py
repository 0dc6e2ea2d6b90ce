"""The exceptions that end a run early, raised by the safeguard callbacks and recorded by
``kan_lightning.commands.train`` (:mod:`kan_lightning.lit.safety` tells the whole story)."""

from __future__ import annotations

import signal
import threading
from typing import Any


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
