"""The ``kan_*`` OmegaConf resolvers the YAML configs in ``conf/`` call; importing this module
registers them (``kan_lightning.resolvers`` also makes the launchers known to Hydra)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def kan_widths(input_dim: int, width: int, depth: int, output_dim: int) -> list[int]:
    """``layers_hidden`` from a hidden width and depth: ``[input_dim, width x depth, output_dim]``."""
    return [int(input_dim), *[int(width)] * int(depth), int(output_dim)]


def kan_grid_epochs(grids, per_grid: int) -> int:
    """``trainer.max_epochs`` for ``per_grid`` epochs on each grid of a grid-extension schedule."""
    if grids is None:
        raise ValueError("epochs per grid need grid extension: callbacks.grid_extension.grids is not set (use a grid-extension experiment)")
    return len(grids) * int(per_grid)


def kan_device_slots() -> int:
    from kan_lightning.devices import default_slots

    return default_slots()


def kan_sqlite(path: str) -> str:
    """An SQLite URL for ``path``, creating its folder (Optuna opens the file before any job
    has created the sweep directory)."""
    file = Path(path).absolute()
    file.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{file}"


def kan_slurm_gpus(accelerator, devices) -> int:
    from kan_lightning.slurm import gpus_per_node

    return gpus_per_node(accelerator, devices)


def kan_slurm_cpus(num_workers) -> int:
    from kan_lightning.slurm import cpus_per_task

    return cpus_per_task(num_workers)


def kan_slurm_mem_gb(tasks_per_node, per_task=2) -> int:
    from kan_lightning.slurm import mem_gb

    return mem_gb(tasks_per_node, per_task)


def kan_job_dir(sweep_dir: str, number: int, task_overrides, numbered: bool = False) -> str:
    from kan_lightning.run_names import job_dirname

    return job_dirname(str(sweep_dir), int(number), list(task_overrides), bool(numbered))


def kan_data_dtype(precision) -> str:
    """The dtype of a run's data and computations for ``trainer.precision``: float64 for a 64-bit
    trainer (the data config, the stacked trainer and the memory estimate read it here)."""
    return "float64" if str(precision).startswith("64") else "float32"


def kan_basename(path: str) -> str:
    """The last component of ``path``: a run's name from its directory."""
    return Path(str(path)).name


RESOLVERS = {
    "kan_widths": kan_widths,
    "kan_grid_epochs": kan_grid_epochs,
    "kan_device_slots": kan_device_slots,
    "kan_sqlite": kan_sqlite,
    "kan_slurm_gpus": kan_slurm_gpus,
    "kan_slurm_cpus": kan_slurm_cpus,
    "kan_slurm_mem_gb": kan_slurm_mem_gb,
    "kan_job_dir": kan_job_dir,
    "kan_basename": kan_basename,
    "kan_data_dtype": kan_data_dtype,
}


def register_resolvers() -> None:
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


register_resolvers()
