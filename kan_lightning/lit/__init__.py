"""Lightning pieces: the regression module, KAN callbacks and schedules."""

from .callbacks import GridUpdate, LastCheckpoint
from .module import KANRegressor
from .schedulers import warmup_cosine

__all__ = ["GridUpdate",
    "LastCheckpoint", "KANRegressor", "warmup_cosine"]
