"""The hyperparameters and final metrics of a run, given alike to every logger.

``run_hparams`` flattens the config to ``key: scalar`` (dotted keys as on the command line):
the swept keys first, then ``tags``, the config-group choices (``model: kan``...), the seed and
every setting of ``model``, ``data``, ``optimizer``, ``scheduler``, ``trainer`` and
``callbacks``. ``log_run`` gives them to every logger (TensorBoard and CSV ``hparams.yaml``,
MLflow params, W&B config) with the values not logged while training (``run/num_parameters``,
``run/wall_time_s``, the checkpoint monitor's best value). For TensorBoard it also declares the
HPARAMS experiment, whose metric columns point at the run's own scalar tags (``test/rmse``,
``val/rmse``...) under readable names, key metrics first: no duplicate ``hp/*`` scalars.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from kan_lightning.analysis.labels import label

# The metric columns HPARAMS shows first.
KEY_METRICS = ("test/rmse", "val/rmse", "test/r2", "run/num_parameters", "run/wall_time_s")
SECTIONS = ("model", "data", "optimizer", "scheduler", "trainer", "callbacks")
# Leaves that say where files go or which class runs, not how the run trains.
SKIPPED_LEAVES = ("_target_", "_partial_", "dirpath", "default_root_dir", "save_dir")
STAGES = ("test/", "val/", "train/")

Scalar = bool | int | float | str


def _scalar(value: Any) -> Scalar:
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else json.dumps(value, default=str)


def hydra_context() -> tuple[dict[str, str], list[str], int | None]:
    """From Hydra's runtime, when there is one: the config-group choices (without Hydra's own),
    the swept keys (a single run: the overridden keys) and the multirun job number."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kan_lightning.run_names import swept_keys

    if not HydraConfig.initialized():
        return {}, [], None
    hydra_cfg = HydraConfig.get()
    choices = {g: str(c) for g, c in (hydra_cfg.runtime.get("choices") or {}).items() if not g.startswith("hydra/")}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    task = [str(o) for o in hydra_cfg.overrides.task]
    swept = swept_keys(hydra_cfg.sweep.dir if multirun else None, task)
    return choices, swept, (int(hydra_cfg.job.num) if multirun else None)


def run_hparams(cfg: DictConfig, swept: Sequence[str] = (), choices: Mapping[str, str] | None = None) -> dict[str, Scalar]:
    """The run's hyperparameters as ``{dotted key: bool | int | float | str}``, swept keys first
    (lists and ``null`` become text)."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    flat: dict[str, Scalar] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                if key not in SKIPPED_LEAVES:
                    walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = _scalar(node)

    rest: dict[str, Scalar] = {"tags": ",".join(str(t) for t in cfg.get("tags") or [])}
    rest.update({group: choice for group, choice in (choices or {}).items()})
    rest["seed"] = _scalar(cfg.get("seed"))
    for section in SECTIONS:
        walk(section, OmegaConf.to_container(resolved[section]) if section in resolved else None)
        if flat.get(section) == "null":
            del flat[section]
    rest.update(flat)

    first: dict[str, Scalar] = {}
    for key in swept:
        if key in rest:
            first[key] = rest[key]
        else:  # a key outside the logged sections, e.g. Optuna's search.width
            node = OmegaConf.select(resolved, key, default=None)
            first[key] = _scalar(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node)
    return {**first, **{k: v for k, v in rest.items() if k not in first}}


def final_values(record: Mapping[str, Any]) -> dict[str, float]:
    """Values only known at the end of a run, as scalar tags: parameter count, wall time and
    the best value of the checkpoint monitor (``val/loss_best``)."""
    values = {"run/num_parameters": record.get("num_parameters"), "run/wall_time_s": record.get("wall_time_s")}
    best = record.get("best") or {}
    if best.get("monitor") and best.get("value") is not None:
        values[f"{best['monitor']}_best"] = best["value"]
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def metric_tags(metrics: Mapping[str, float], extra: Sequence[str] = ()) -> list[str]:
    """The scalar tags of the final metrics, key metrics first, then test, val, train. A value
    logged per step and per epoch appears as ``<name>_epoch``; ``<name>_step`` is left out."""
    names = [k for k in [*metrics, *extra] if not k.endswith("_step")]
    tags = [k for k in names if f"{k}_epoch" not in names and k.startswith((*STAGES, "run/"))]
    key = [t for t in KEY_METRICS if t in tags]
    by_stage = sorted((t for t in tags if t not in key), key=lambda t: next((i for i, s in enumerate((*STAGES, "run/")) if t.startswith(s))))
    return key + by_stage


def _summary(tag: str, data: Any) -> Any:
    """A summary holding hparams plugin data, as TensorBoard's hparams API builds them."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def _data_type(value: Scalar) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING


def write_tensorboard_hparams(
    writer: Any, hparams: Mapping[str, Scalar], tags: Sequence[str], swept: Sequence[str], trial_id: str, start_time: float, status: str = "success"
) -> None:
    """Write into ``writer`` (a ``torch.utils.tensorboard.SummaryWriter``) the HPARAMS
    experiment and this run's session. The swept keys are marked as differing, which
    TensorBoard lists first; the metrics name existing scalar tags, in the order given."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    experiment = api_pb2.Experiment(
        time_created_secs=start_time,
        hparam_infos=[
            api_pb2.HParamInfo(name=name, display_name=label(name), type=_data_type(value), differs=name in swept)
            for name, value in hparams.items()
        ],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=label(tag)) for tag in tags],
    )
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if status == "success" else api_pb2.STATUS_FAILURE, end_time_secs=time.time()
    )
    file_writer = writer._get_file_writer()
    for summary in (
        _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        hp.hparams_pb(dict(hparams), trial_id=trial_id, start_time_secs=start_time),
        _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ):
        file_writer.add_summary(summary)
    file_writer.flush()


def log_run(loggers: Sequence[Any], cfg: DictConfig, record: Mapping[str, Any], step: int, output_dir: str | Path) -> dict[str, Scalar]:
    """Give every logger the run's hyperparameters and final values (see the module doc);
    returns the hyperparameters."""
    from lightning.pytorch.loggers import TensorBoardLogger

    choices, swept, _ = hydra_context()
    hparams = run_hparams(cfg, swept, choices)
    values = final_values(record)
    tags = metric_tags(record.get("metrics") or {}, list(values))
    trial_id = "/".join(Path(output_dir).parts[-2:])
    start = time.time() - float(record.get("wall_time_s") or 0.0)
    for logger in loggers:
        logger.log_hyperparams(dict(hparams))
        if values:
            logger.log_metrics(values, step=step)
        if isinstance(logger, TensorBoardLogger):
            write_tensorboard_hparams(logger.experiment, hparams, tags, swept, trial_id, start)
            # Lightning writes hparams.yaml once, at the start: write it again with the values
            (Path(logger.log_dir) / "hparams.yaml").unlink(missing_ok=True)
            logger.save()
        logger.finalize("success")
    return hparams
