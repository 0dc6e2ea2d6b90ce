"""Shared fixtures: compose the project's Hydra configs the way the command line does."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import kan_lightning.resolvers  # noqa: F401  (the configs' kan_* resolvers, as every command registers them)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """A composed config with a Hydra runtime set, so ``${hydra:...}`` resolves in tests."""
    GlobalHydra.instance().clear()
    with initialize_config_module("kan_lightning.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides, config_name="train")`` -> a config writing into ``tmp_path``."""

    def make(*overrides: str, config_name: str = "train", output_dir: Path | None = None) -> DictConfig:
        return compose_config(config_name, list(overrides), output_dir or tmp_path)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    threads can slow these tests down many times over."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
