"""Kolmogorov-Arnold Networks on PyTorch Lightning and Hydra.

The plain-Python way in (the usage guide's names)::

    from kan_lightning import KAN, KANTrainer, create_dataset

Names are imported lazily, so ``import kan_lightning.nn`` stays free of Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KAN": "kan_lightning.nn",
    "KANLayer": "kan_lightning.nn",
    "MLP": "kan_lightning.nn",
    "KANTrainer": "kan_lightning.api",
    "KANEnsemble": "kan_lightning.ensemble",
    "NormalizedModel": "kan_lightning.data.normalization",
    "create_dataset": "kan_lightning.data.arrays",
    "cross_validate": "kan_lightning.ensemble",
    "load_model": "kan_lightning.api",
    "transfer_weights": "kan_lightning.transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kan_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
