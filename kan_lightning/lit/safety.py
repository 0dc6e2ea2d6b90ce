"""Training faults as clean stops: divergence and pre-emption.

- :class:`DivergenceGuard` stops training with :class:`TrainingDiverged` as soon as a training
  loss (or a weight) is NaN/Inf, naming the step. It raises from ``on_train_batch_end``, before
  validation and before any end-of-epoch checkpoint, so nothing diverged is ever saved:
  ``last.ckpt`` keeps the last good epoch. (Lightning's ``ModelCheckpoint`` saves on an exception
  only with ``save_on_exception=True``, which the configs leave off; ``LastCheckpoint`` only
  writes in ``on_train_epoch_end``, which an exception skips.)
- :class:`GracefulShutdown` turns SIGTERM/SIGINT during training into a stop at the next batch
  boundary: it writes ``last.ckpt`` atomically and raises :class:`TrainingInterrupted`, which
  ``kan_lightning.train`` records as status ``interrupted``. A second SIGINT aborts at once.
- :func:`raise_on_sigterm` makes SIGTERM outside the training loop (data generation, testing)
  raise :class:`TrainingInterrupted` the way SIGINT raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


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


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`TrainingInterrupted` (in the main thread only).
    Lightning chains this handler behind its own while it runs, and :class:`GracefulShutdown`
    replaces it during the training loop."""
    if not _in_main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN or Inf."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def _any_rank(trainer: L.Trainer, flag: bool) -> bool:
    """True on every rank when it is true on one (a collective when world_size > 1)."""
    if trainer.world_size > 1:
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
    return flag


def _last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    for callback in trainer.callbacks:
        path = getattr(callback, "path", None) if type(callback).__name__ in ("LastCheckpoint", "GracefulShutdown") else None
        if isinstance(path, Path):
            return path
    return None


def save_checkpoint_atomically(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file, then rename: a kill while writing leaves
    the previous file intact. Every rank must call it (rank 0 writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    trainer.save_checkpoint(tmp, weights_only=False)  # the full state, to resume from
    if trainer.is_global_zero:
        os.replace(tmp, path)


class DivergenceGuard(L.Callback):
    """Stop training with :class:`TrainingDiverged` when a training loss is NaN/Inf (or, with
    ``check_weights``, when a weight is), naming the optimizer step, the epoch and the batch.

    The check runs in ``on_train_batch_end``, before validation and before any checkpoint of
    that epoch is written, so the last checkpoint on disk stays the last good one.
    """

    def __init__(self, check_weights: bool = True) -> None:
        self.check_weights = bool(check_weights)
        self.checkpoint: str | None = None
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = float(loss.detach().float().reshape(-1)[0]) if isinstance(loss, torch.Tensor) and loss.numel() else None
        bad_loss = value is not None and not math.isfinite(value)
        bad_weights = non_finite_parameters(pl_module) if self.check_weights and not bad_loss else []
        if not _any_rank(trainer, bad_loss or bool(bad_weights)):
            return
        step, epoch = self._step, trainer.current_epoch
        if bad_loss:
            what = f"the training loss is {value}"
        elif bad_weights:
            shown = ", ".join(bad_weights[:3]) + (", ..." if len(bad_weights) > 3 else "")
            what = f"the weights became non-finite ({shown}) after the optimizer step"
        else:
            what = "another rank's training loss or weights became non-finite"
        kept = self._kept_checkpoint(trainer)
        lr = self._learning_rate(trainer)
        message = (
            f"training diverged at step {step} (epoch {epoch}, batch {batch_idx}): {what}. "
            f"Training stopped before anything of this epoch was saved; {kept}. "
            f"Try a smaller optimizer.lr{f' (now {lr:g})' if lr is not None else ''}, gradient clipping "
            "(trainer.gradient_clip_val=1.0), data.normalize_targets=true, or a larger "
            "model.grid_range if the inputs leave the grid."
        )
        raise TrainingDiverged(message, step=step, epoch=epoch, batch_idx=batch_idx, value=value, checkpoint=self.checkpoint)

    def _kept_checkpoint(self, trainer: L.Trainer) -> str:
        self.checkpoint = None
        path = _last_checkpoint_path(trainer)
        if path is None or not path.is_file():
            return "no checkpoint had been written yet"
        self.checkpoint = str(path)
        try:
            from kan_lightning.lit.checkpoint import config_targets, read_checkpoint

            # this run's own checkpoint: the targets of its own config are trusted
            saved = read_checkpoint(path, config_targets(getattr(trainer.lightning_module, "run_config", None)))
            return f"the last good checkpoint is {path} (epoch {saved.get('epoch')}, step {saved.get('global_step')})"
        except (OSError, ValueError):
            return f"the last checkpoint is {path}"

    @staticmethod
    def _learning_rate(trainer: L.Trainer) -> float | None:
        try:
            return float(trainer.optimizers[0].param_groups[0]["lr"])
        except (IndexError, KeyError, TypeError, ValueError):
            return None


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
        if self._previous or not _in_main_thread():
            return
        self.received = None
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        if not _in_main_thread():
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
        if not last_batch and _any_rank(trainer, self.received is not None):
            self._stop(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if _any_rank(trainer, self.received is not None):
            self._stop(trainer, pl_module)

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signum = self.received if self.received is not None else signal.SIGTERM
        step, epoch = trainer.global_step, trainer.current_epoch
        checkpoint = None
        if not _any_rank(trainer, bool(non_finite_parameters(pl_module))):
            save_checkpoint_atomically(trainer, self.path)
            checkpoint = str(self.path)
        self._restore()
        name = signal.Signals(signum).name
        rank_zero_info(f"{name} received: stopped at step {step} (epoch {epoch}); checkpoint: {checkpoint or 'not saved (non-finite weights)'}")
        raise TrainingInterrupted(signum, step=step, epoch=epoch, checkpoint=checkpoint)
