"""Names that say what varies: the swept keys of a multirun and a job's directory name.

A multirun job is named by its swept overrides, ``grid_size=5,l1=0.001``, so its directory
(``sweeps/<task>/<time>/grid_size=5,l1=0.001/``) and its TensorBoard run read as what changed.
The swept keys come from the sweep's ``multirun.yaml`` (written by Hydra before any job starts):
the command-line overrides with several values, plus the parameters of a sweeper such as
Optuna. Only Hydra's parser and YAML are used: this module is imported while configs resolve.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

import yaml

MULTIRUN_FILE = "multirun.yaml"
# Overrides that never name a job: where it runs or what it resumes from.
NOT_IN_NAMES = ("hydra", "paths", "ckpt_path", "task_name")
# Longer names are cut and end with the job number, so they stay unique and legal.
MAX_NAME_CHARS = 120


def _parse(overrides: Iterable[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def override_key(override: str) -> str:
    """The key of an override as written, without ``+``, ``++`` or ``~``: ``model.grid_size``."""
    return str(override).split("=", 1)[0].lstrip("+~")


def _sweep_spec(sweep_dir: str | Path) -> tuple[list[str], list[str]] | None:
    """The multirun's command-line overrides and its sweeper's parameter keys, or ``None``."""
    path = Path(sweep_dir) / MULTIRUN_FILE
    try:
        hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError):
        return None
    task = list((hydra_cfg.get("overrides") or {}).get("task") or [])
    params = list(((hydra_cfg.get("sweeper") or {}).get("params") or {}).keys())
    return task, params


def swept_keys(sweep_dir: str | Path | None, task_overrides: Sequence[str]) -> list[str]:
    """The keys a multirun sweeps over, in command-line order; with no sweep spec to read
    (a single run), every key overridden in ``task_overrides``."""
    spec = _sweep_spec(sweep_dir) if sweep_dir else None
    if spec is None:
        return list(dict.fromkeys(override_key(o) for o in task_overrides))
    task, params = spec
    try:
        swept = [o.key_or_group for o in _parse(task) if o.is_sweep_override()]
    except Exception:  # an override Hydra accepted but we cannot re-read: name by all of them
        swept = [override_key(o) for o in task]
    return list(dict.fromkeys([*swept, *params]))


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last component (``model.regularization.l1`` -> ``l1``), or the full key where
    two keys would share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _clean(value: str) -> str:
    value = value.strip().strip("'\"")
    return re.sub(r"[/\\\s]+", "_", value)


def job_name(task_overrides: Sequence[str], keys: Sequence[str], number: int | str) -> str:
    """``grid_size=5,l1=0.001``: the job's values of ``keys`` under short names, or the job
    ``number`` when none of them is set."""
    values = {override_key(o): o.split("=", 1)[1] if "=" in o else "" for o in task_overrides}
    keys = [k for k in keys if k in values and k.split(".", 1)[0] not in NOT_IN_NAMES]
    short = short_keys(keys)
    name = ",".join(f"{short[k]}={_clean(values[k])}" for k in keys)
    if not name:
        return str(number)
    if len(name) > MAX_NAME_CHARS:
        name = f"{name[:MAX_NAME_CHARS]}...{number}"
    return name


def names_may_repeat(sweep_dir: str | Path | None) -> bool:
    """Whether two jobs of the multirun could get the same name: a swept key that never names a
    job (``ckpt_path=last,<file>``) or a value listed twice (``max_epochs=100,2,2``)."""
    spec = _sweep_spec(sweep_dir) if sweep_dir else None
    if spec is None:
        return False
    try:
        sweeps = [o for o in _parse(spec[0]) if o.is_sweep_override()]
    except Exception:  # an override we cannot re-read: assume the worst
        return True
    for override in sweeps:
        values = list(override.sweep_string_iterator())
        if override.key_or_group.split(".", 1)[0] in NOT_IN_NAMES or len(values) != len(set(values)):
            return True
    return False


def job_dirname(sweep_dir: str, number: int, task_overrides: Sequence[str], numbered: bool = False) -> str:
    """A multirun job's directory name (the ``kan_job_dir`` resolver of ``hydra.sweep.subdir``);
    ``numbered`` puts the job number first, for sweepers that may repeat a combination (so does
    a sweep whose names may repeat), keeping every job's directory its own."""
    task = [str(o) for o in task_overrides]
    name = job_name(task, swept_keys(sweep_dir, task), number)
    if (numbered or names_may_repeat(sweep_dir)) and name != str(number):
        name = f"{number}_{name}"
    return name
