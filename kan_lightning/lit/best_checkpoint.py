"""Keep a restored ``ModelCheckpoint`` consistent with the files that exist.

A resumed run restores each ``ModelCheckpoint``'s record of its top-k files and of the best one
from the checkpoint it resumes. If one of those files has gone since (rotated away after that
checkpoint was written, or deleted by hand), Lightning would still test "the best" from it
(``FileNotFoundError``) and rank new epochs against its score.
"""

from __future__ import annotations

import math
import os

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


def forget_missing_files(callback: ModelCheckpoint) -> list[str]:
    """Drop the files that no longer exist from ``callback``'s top-k record and recompute its
    best and k-th best from the rest (none left: the next validation saves a new best).
    Returns the paths forgotten."""
    named = [*callback.best_k_models, callback.best_model_path, callback.last_model_path]
    missing = sorted({path for path in named if path and not os.path.isfile(path)})
    if not missing:
        return []
    kept = {path: score for path, score in callback.best_k_models.items() if path not in missing}
    callback.best_k_models = kept
    if callback.last_model_path in missing:
        callback.last_model_path = ""
    minimize = callback.mode == "min"
    if kept:
        best = (min if minimize else max)(kept, key=kept.get)
        callback.best_model_path, callback.best_model_score = best, kept[best]
    else:
        callback.best_model_path, callback.best_model_score = "", None
    if kept and len(kept) >= callback.save_top_k > 0:
        kth = (max if minimize else min)(kept, key=kept.get)
        callback.kth_best_model_path, callback.kth_value = kth, kept[kth]
    else:  # fewer than k files: the next ones are saved without displacing any
        callback.kth_best_model_path, callback.kth_value = "", torch.tensor(math.inf if minimize else -math.inf)
    rank_zero_warn(f"checkpoint files named by the resumed state no longer exist and are forgotten: {missing}")
    return missing
