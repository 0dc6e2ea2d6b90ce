"""Training-time KAN operations and safeguards as Lightning callbacks, one per module.

Configs name them here (``kan_lightning.lit.callbacks.GridExtension``)."""

from .divergence_guard import DivergenceGuard
from .gradient_stats import GradientStats
from .graceful_shutdown import GracefulShutdown
from .grid_extension import GridExtension
from .grid_update import GridUpdate
from .history import History
from .last_checkpoint import LastCheckpoint
from .multi_start import MultiStart
from .pruning import Pruning
from .regularization_schedule import RegularizationSchedule

__all__ = [
    "DivergenceGuard",
    "GracefulShutdown",
    "GradientStats",
    "GridExtension",
    "GridUpdate",
    "History",
    "LastCheckpoint",
    "MultiStart",
    "Pruning",
    "RegularizationSchedule",
]
