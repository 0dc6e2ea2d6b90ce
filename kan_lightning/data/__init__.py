"""Synthetic regression data: target functions, a safe formula parser and a LightningDataModule."""

from kan_lightning.data import paper_benchmarks  # registers feynman_* and special_* targets
from kan_lightning.data.datamodule import SyntheticFunctionDataModule, make_dataset
from kan_lightning.data.functions import (
    FUNCTIONS,
    TargetFunction,
    get_function,
    parse_formula,
    resolve_target,
    validate_domain,
)

__all__ = [
    "FUNCTIONS",
    "SyntheticFunctionDataModule",
    "TargetFunction",
    "get_function",
    "make_dataset",
    "parse_formula",
    "resolve_target",
    "validate_domain",
]
