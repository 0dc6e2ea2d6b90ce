"""Lightning pieces: the regression module, KAN callbacks and schedules."""

from .callbacks import (
    GradientStats,
    GridExtension,
    GridUpdate,
    History,
    LastCheckpoint,
    Pruning,
    RegularizationSchedule,
)
from .module import KANRegressor
from .schedulers import warmup_cosine
from .stats import activation_stats, analyze_gradients

__all__ = [
    "GradientStats",
    "GridExtension",
    "GridUpdate",
    "History",
    "KANRegressor",
    "LastCheckpoint",
    "Pruning",
    "RegularizationSchedule",
    "activation_stats",
    "analyze_gradients",
    "warmup_cosine",
]
