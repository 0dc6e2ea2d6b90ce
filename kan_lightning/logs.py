"""Console and ``train.log`` output that serves batch jobs as well as terminals.

- ``route_library_logs``: Lightning's records (and Python warnings) go through the root logger
  that Hydra configured, so they reach ``<run dir>/train.log`` as well as the console.
- ``quiet_library_noise``: drop hints that do not apply to this project (Lightning's
  litlogger/litmodels tips, the ``srun`` hint, a pytree deprecation inside Lightning).
- ``progress_bar``: the rich progress bar in a terminal; elsewhere (a sweep's log, a SLURM
  ``.out`` file) :class:`ProgressLog`, one line every ``every_n_epochs`` epochs.
- ``print_config``: the resolved config as a rich tree (and ``config_tree.log``).
- ``summary_line``: one line at the end of a run: status, test RMSE and R^2, run directory.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger(__name__)

LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
# Lightning's rank-zero messages are emitted by these loggers.
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
TIP_PREFIX = "💡 Tip:"
NOISY_WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
# Shown in the progress lines, when logged.
PROGRESS_KEYS = ("train/loss", "train/objective", "val/loss", "val/rmse", "val/r2")


def _drop_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(TIP_PREFIX)


def quiet_library_noise() -> None:
    """Silence hints that never apply here (idempotent)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _drop_tips not in logger.filters:
            logger.addFilter(_drop_tips)
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def route_library_logs() -> None:
    """When the root logger has handlers (Hydra's console and ``train.log``), let Lightning's
    loggers and Python warnings propagate to them instead of Lightning's own console handler."""
    if not logging.getLogger().handlers:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


class ProgressLog(ProgressBar):
    """A progress "bar" for logs: one line every ``every_n_epochs`` epochs (and after the last)
    with the epoch, elapsed time and the latest losses, through :mod:`logging`."""

    def __init__(self, every_n_epochs: int = 10) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self._enabled = True
        self._start = time.time()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.time()

    def line(self, trainer) -> str:
        metrics = trainer.callback_metrics
        shown = [f"{k}={float(metrics[k]):.4g}" for k in PROGRESS_KEYS if k in metrics and metrics[k].numel() == 1]
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        elapsed = time.time() - self._start
        return f"epoch {trainer.current_epoch + 1}/{total} step {trainer.global_step} ({elapsed:.0f} s) " + " ".join(shown)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # after validation, so the line carries the epoch's val metrics
        if not self._enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs == 0 or last:
            log.info(self.line(trainer))


def progress_bar(every_n_epochs: int = 10, interactive: bool | None = None) -> ProgressBar:
    """:class:`RichProgressBar` when stdout is a terminal (or ``interactive``), else
    :class:`ProgressLog`."""
    if interactive is None:
        interactive = sys.stdout.isatty()
    return RichProgressBar() if interactive else ProgressLog(every_n_epochs)


def print_config(cfg: Any, output_dir: str | Path | None = None) -> str:
    """Print the resolved config as a rich tree, one branch per top-level section, and write
    the same text to ``<output_dir>/config_tree.log``; returns the text."""
    from omegaconf import OmegaConf
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, node in cfg.items():
        text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
        tree.add(str(key)).add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    console = Console(file=sys.stdout)
    console.print(tree)
    recorder = Console(record=True, width=100, file=io.StringIO())
    recorder.print(tree)
    text = recorder.export_text()
    if output_dir is not None:
        path = Path(output_dir) / "config_tree.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def summary_line(record: Mapping[str, Any], output_dir: str | Path) -> str:
    """``completed: test RMSE 0.0123, test R^2 0.9991 (52 s) -> outputs/train/<time>``."""
    metrics = record.get("metrics") or {}
    text = f"{record.get('status', 'unknown')}: test RMSE {_number(metrics.get('test/rmse'))}, test R^2 {_number(metrics.get('test/r2'))}"
    if record.get("wall_time_s") is not None:
        text += f" ({record['wall_time_s']:.0f} s)"
    if record.get("error"):
        text += f", {record['error']}"
    return f"{text} -> {output_dir}"


def start_logs(cfg: Any, output_dir: str | Path) -> None:
    """At the start of a run: quiet the noise, route library logs to ``train.log`` and print
    the config when ``extras.print_config`` asks (``null``: single runs only). Rank 0 prints."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from kan_lightning.lit.hparams import hydra_context

    quiet_library_noise()
    route_library_logs()
    wanted = (cfg.get("extras") or {}).get("print_config")
    if wanted is None:
        wanted = hydra_context()[2] is None  # no job number: not a multirun job
    if wanted and getattr(rank_zero_only, "rank", 0) == 0:
        print_config(cfg, output_dir)


@contextmanager
def quiet_lightning(enabled: bool = True) -> Iterator[None]:
    """Within the block, silence Lightning's info messages and its advice warnings (few
    workers, logging interval...), not real warnings of this package (the Python API's
    ``verbose=False``)."""
    if not enabled:
        yield
        return
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    loggers = [logging.getLogger(n) for n in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            for message in (r".*does not have many workers.*", r".*Total length of .* across ranks is zero.*", r".*isinstance\(treespec, LeafSpec\).*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
