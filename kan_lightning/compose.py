"""The package's Hydra configs composed from Python, as ``kan-train`` composes them from its
command line (used by the Python API, so that both read the same ``conf/`` files)."""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from typing import Iterator, Sequence

import kan_lightning.resolvers  # noqa: F401  (the configs use its resolvers)
from hydra import compose, initialize_config_module
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig

CONFIG_MODULE = "kan_lightning.conf"


@contextmanager
def _package_configs() -> Iterator[ConfigLoader]:
    """Hydra initialized on this package's configs; whatever Hydra state there was before (a
    running Hydra app, say) is put back on leaving."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            yield GlobalHydra.instance().config_loader()
    finally:
        restore_gh_from_backup(backup)


@functools.lru_cache(maxsize=None)  # the package's files do not change while it runs
def group_options(group: str) -> tuple[str, ...]:
    """The configs of a group, e.g. ``optimizer`` -> ``("adam", "adamw", "lbfgs", "sgd")``."""
    with _package_configs() as loader:
        return tuple(sorted(loader.get_group_options(group)))


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The composed config (without Hydra's own node) for command-line ``overrides``: a copy,
    the caller's to change."""
    return copy.deepcopy(_composed(tuple(overrides), config_name))


@functools.lru_cache(maxsize=64)  # composing reads every file of the config tree
def _composed(overrides: tuple[str, ...], config_name: str) -> DictConfig:
    with _package_configs():
        return compose(config_name, overrides=list(overrides))
