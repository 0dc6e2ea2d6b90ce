"""Shared fixtures: compose the project's Hydra configs the way the command line does."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
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


def equal_nested(a, b) -> bool:
    """Whether two nests of dicts, lists and tensors (state dicts, checkpoints) hold the same
    keys, dtypes and values bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_nested(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    threads can slow these tests down many times over."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Helpers for the nn tests


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (the grid is then exact in that dtype; building in
    float32 and calling ``.double()`` keeps float32-rounded knots)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def layer64(*args, **kwargs):
    """A ``KANLayer`` built in float64."""
    from kan_lightning.nn import KANLayer

    with default_dtype(torch.float64):
        return KANLayer(*args, **kwargs)


def kan64(*args, **kwargs):
    """A ``KAN`` built in float64."""
    from kan_lightning.nn import KAN

    with default_dtype(torch.float64):
        return KAN(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Helpers for the command-line tests


def ddp_and_single_runs(tmp_path: Path, overrides: list[str]) -> dict[str, dict]:
    """``kan-train`` with ``overrides`` as a 2-process DDP run on CPU and as a single process:
    each run's ``metrics.json``, by name ("ddp", "single")."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, extra in (("ddp", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]), ("single", [])):
        proc = subprocess.run(
            [sys.executable, "-m", "kan_lightning.commands.train", *overrides, *extra, f"hydra.run.dir={tmp_path / name}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    return runs
