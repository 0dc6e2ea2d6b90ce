"""DDP inside a Hydra multirun: each job starts, and ends, its own ranks.

Lightning starts DDP ranks > 0 by re-running the command line; in a multirun job that command
line is the whole sweep. ``ddp_children_run_this_job`` makes it this job's single run while the
ranks live, and ``own_process_group`` ends the job's process group when the job ends.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

# Set by Lightning in the launching process when it starts DDP ranks.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def ddp_children_run_this_job() -> Iterator[None]:
    """Lightning starts DDP ranks > 0 by re-running the command line with ``hydra.run.dir`` set
    to ``HydraConfig.run.dir``. In a multirun job that command line is the whole sweep, so each
    child would start a second sweep in a new directory: make it this job's single run, in this
    job's directory, for the duration of the ``with`` block. Lightning also leaves the rank
    variables in this process's environment, which would make the next job believe its ranks
    were started from outside: they are restored afterwards."""
    if not is_multirun() or os.environ.get("LOCAL_RANK"):
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, run_dir = sys.argv, hydra_cfg.run.dir
    saved_env = {name: os.environ.get(name) for name in DDP_ENV}
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def own_process_group() -> Iterator[None]:
    """End this run's DDP process group on leaving: the next job of a multirun, in this same
    process, must start its own with its own child processes, not reuse one whose peers have
    exited."""
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
