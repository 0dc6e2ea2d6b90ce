"""GracefulShutdown: SIGTERM/SIGINT during training become a checkpoint and a clean stop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from kan_lightning.lit.faults import TrainingInterrupted, in_main_thread

from .common import any_rank, non_finite_parameters, save_checkpoint_atomically


class GracefulShutdown(L.Callback):
    """On SIGTERM or SIGINT during training, finish the current batch, save
    ``<dirpath>/<filename>`` atomically and raise :class:`TrainingInterrupted`.

    A stop requested during the last batch of an epoch waits for the epoch's end (after its
    validation), so the checkpoint is the usual end-of-epoch one; otherwise the checkpoint is
    a mid-epoch one (as ``ModelCheckpoint(every_n_train_steps=...)`` writes), which resumes
    exactly with the datamodule's resumable train loader: same weights, optimizer state, batch
    order and grid updates, so validation/test metrics and every later epoch match an
    uninterrupted run bit for bit. Only the training-set epoch means (``train/*`` logged
    ``on_epoch``) of the interrupted epoch itself cover just its resumed part (Lightning does
    not checkpoint its running epoch aggregates). A second SIGINT aborts at once
    (``KeyboardInterrupt``). The handlers are installed for the training loop only
    (``on_train_start`` .. ``on_train_end``/``teardown``), replacing Lightning's SIGTERM notifier
    so that Lightning does not stop in the middle of a validation run.

    Args:
        dirpath: the checkpoint directory (the run's ``checkpoints/``).
        filename: the checkpoint's file name; ``last.ckpt`` is what ``ckpt_path=last`` resumes.
        signals: names of the signals to handle.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt", signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGINT")) -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename
        try:
            self.signals = [signal.Signals[name] if isinstance(name, str) else signal.Signals(name) for name in signals]
        except (KeyError, ValueError):
            raise ValueError(f"signals must be signal names such as 'SIGTERM', got {list(signals)!r}") from None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    # -- handlers -------------------------------------------------------------------------------

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def _install(self) -> None:
        if self._previous or not in_main_thread():
            return
        self.received = None
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        if not in_main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore()

    # -- stopping -------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if not last_batch and any_rank(trainer, self.received is not None):
            self._stop(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if any_rank(trainer, self.received is not None):
            self._stop(trainer, pl_module)

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signum = self.received if self.received is not None else signal.SIGTERM
        step, epoch = trainer.global_step, trainer.current_epoch
        checkpoint = None
        if not any_rank(trainer, bool(non_finite_parameters(pl_module))):
            save_checkpoint_atomically(trainer, self.path)
            checkpoint = str(self.path)
        self._restore()
        name = signal.Signals(signum).name
        rank_zero_info(f"{name} received: stopped at step {step} (epoch {epoch}); checkpoint: {checkpoint or 'not saved (non-finite weights)'}")
        raise TrainingInterrupted(signum, step=step, epoch=epoch, checkpoint=checkpoint)
