"""Which jobs of a sweep can train together as one stacked model (:mod:`kan_lightning.stacked.training`).

Jobs stack when their configs are equal except for what each job may keep for itself (its seed,
its data's function, noise, domain and seed, its paths and names: ``PER_JOB_KEYS``), and when
everything they use is supported stacked: a :class:`~kan_lightning.nn.KAN` without penalties or
linear extrapolation, an optimizer that updates every parameter element on its own gradient alone
(Adam, SGD, ...: ``ELEMENTWISE_OPTIMIZERS``) or L-BFGS (one per model), no scheduler, the default
callbacks and grid extension at fixed epochs or steps (no polish, no multi-start), TensorBoard, CSV or no logger, one CPU or GPU, 32- or 64-bit precision, a fresh run. :func:`why_not_stackable` names
what keeps a job out; such jobs run one by one as usual.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

# config keys (dotted prefixes) a job of a stack may set for itself
PER_JOB_KEYS = (
    "seed",
    "data.seed",
    "data.function",
    "data.formula",
    "data.noise_level",
    "data.domain",
    "data.sampling",
    "data.input_dim",
    "paths",
    "task_name",
    "tags",
    "extras",
    "overwrite",
    "optimized_metric",
    "hydra",
)

# Each parameter element's update depends on its own gradient (and state) only, so M models in
# one tensor move exactly as M separate models would.
ELEMENTWISE_OPTIMIZERS = {
    f"torch.optim.{name}" for name in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam")
}
# L-BFGS works on the whole parameter vector: one optimizer per model (kan_lightning.stacked.lbfgs)
PER_MODEL_OPTIMIZERS = {"torch.optim.LBFGS"}

# callbacks the stacked loop reproduces (by config name and target)
SUPPORTED_CALLBACKS = {
    "model_checkpoint": "lightning.pytorch.callbacks.ModelCheckpoint",
    "last_checkpoint": "kan_lightning.lit.callbacks.LastCheckpoint",
    "divergence_guard": "kan_lightning.lit.callbacks.DivergenceGuard",
    "graceful_shutdown": "kan_lightning.lit.callbacks.GracefulShutdown",
    "lr_monitor": "lightning.pytorch.callbacks.LearningRateMonitor",
    "grid_update": "kan_lightning.lit.callbacks.GridUpdate",
    "progress_bar": "kan_lightning.logs.progress_bar",
    "grid_extension": "kan_lightning.lit.callbacks.GridExtension",
    "multi_start": "kan_lightning.lit.callbacks.MultiStart",  # with restarts 0 (it does nothing)
}

# trainer keys and the values under which the stacked loop does what the Trainer does
# (None: any value)
TRAINER_KEYS: dict[str, Any] = {
    "_target_": None,
    "default_root_dir": None,
    "accelerator": ("cpu", "gpu", "cuda", "auto"),
    "devices": (1, "1", "auto"),
    "num_nodes": (1,),
    "min_epochs": None,
    "max_epochs": None,
    "precision": ("32-true", "32", 32, "64-true", "64", 64),
    "gradient_clip_val": (None, 0, 0.0),
    "check_val_every_n_epoch": None,
    "log_every_n_steps": None,
    "deterministic": None,
    "enable_model_summary": None,
    "enable_progress_bar": None,
    "num_sanity_val_steps": None,
    "benchmark": None,
}

LOGGERS = {"lightning.pytorch.loggers.TensorBoardLogger", "lightning.pytorch.loggers.CSVLogger"}
MONITORED = ("val/loss", "val/mse", "val/rmse", "val/mae", "val/r2")


def _get(container: Mapping[str, Any], dotted: str) -> Any:
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def why_not_stackable(cfg: Mapping[str, Any]) -> str | None:
    """Why the job of (resolved, plain) config ``cfg`` must run alone, or ``None`` when it can
    train stacked."""
    model = cfg.get("model") or {}
    if model.get("_target_") != "kan_lightning.nn.KAN":
        return f"model._target_={model.get('_target_')!r} (only kan_lightning.nn.KAN stacks)"
    if model.get("extrapolate", "bases") != "bases":
        return f"model.extrapolate={model.get('extrapolate')!r}"
    penalties = {k: v for k, v in (model.get("regularization") or {}).items() if v}
    if penalties:
        return f"model.regularization={penalties} (penalties)"
    optimizer = (cfg.get("optimizer") or {}).get("_target_")
    supported = ELEMENTWISE_OPTIMIZERS | PER_MODEL_OPTIMIZERS
    if optimizer not in supported:
        return f"optimizer._target_={optimizer!r} (stacked: {', '.join(sorted(o.rsplit('.', 1)[1] for o in supported))})"
    if (cfg.get("scheduler") or {}).get("factory"):
        return "scheduler.factory is set"
    for key, value in (cfg.get("trainer") or {}).items():
        if key not in TRAINER_KEYS:
            return f"trainer.{key}={value!r}"
        allowed = TRAINER_KEYS[key]
        if allowed is not None and value not in allowed:
            return f"trainer.{key}={value!r}"
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return f"trainer.max_epochs={epochs!r} (stacked: a number of epochs >= 1)"
    every = (cfg.get("trainer") or {}).get("check_val_every_n_epoch", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        return f"trainer.check_val_every_n_epoch={every!r} (stacked: a number of epochs >= 1)"
    callbacks = {k: v for k, v in (cfg.get("callbacks") or {}).items() if v}
    for name, node in callbacks.items():
        target = node.get("_target_") if isinstance(node, Mapping) else None
        if SUPPORTED_CALLBACKS.get(name) != target:
            return f"callbacks.{name} ({target})"
    extension = callbacks.get("grid_extension")
    if extension and extension.get("patience") is not None:
        # each model would switch at its own validation: the stack would no longer share a shape
        return f"callbacks.grid_extension.patience={extension.get('patience')!r} (stacked: at_epochs, at_steps or the default split)"
    if extension and extension.get("stage_patience") is not None:
        # each model would end its fit at its own stage
        return f"callbacks.grid_extension.stage_patience={extension.get('stage_patience')!r} (stacked: null)"
    if extension and extension.get("polish_iterations"):
        # the Levenberg-Marquardt polish solves one model's normal equations at a time
        return f"callbacks.grid_extension.polish_iterations={extension.get('polish_iterations')!r} (stacked: 0)"
    restarts = (callbacks.get("multi_start") or {}).get("restarts")
    if restarts:
        # the candidates train one model at a time before the fit: the stacked loop has no such phase
        return f"callbacks.multi_start.restarts={restarts!r} (stacked: 0)"
    checkpoint = callbacks.get("model_checkpoint")
    if checkpoint:
        if checkpoint.get("monitor") not in MONITORED or checkpoint.get("mode", "min") not in ("min", "max"):
            return f"callbacks.model_checkpoint.monitor={checkpoint.get('monitor')!r}"
        if checkpoint.get("save_top_k", 1) != 1 or checkpoint.get("every_n_epochs") not in (None, 1):
            return "callbacks.model_checkpoint keeps more than the best epoch"
    for name, node in (cfg.get("logger") or {}).items():
        if node and (node.get("_target_") if isinstance(node, Mapping) else None) not in LOGGERS:
            return f"logger.{name} ({node.get('_target_') if isinstance(node, Mapping) else node})"
    data = cfg.get("data") or {}
    if data.get("_target_") != "kan_lightning.data.SyntheticFunctionDataModule":
        return f"data._target_={data.get('_target_')!r}"
    if cfg.get("ckpt_path") is not None:
        return f"ckpt_path={cfg.get('ckpt_path')!r} (resuming)"
    if not cfg.get("train", True):
        return "train=false"
    if (cfg.get("device_pool") or {}).get("enabled"):
        return "device_pool.enabled=true"
    return None


def group_key(cfg: Mapping[str, Any]) -> str:
    """Equal for configs that may share a stack: ``cfg`` without ``PER_JOB_KEYS``, and with the
    job's own output directory written as ``<output_dir>`` where paths derive from it."""
    output_dir = str(_get(cfg, "paths.output_dir") or "")

    def strip(node: Any, prefix: str) -> Any:
        if isinstance(node, str) and output_dir:
            return node.replace(output_dir, "<output_dir>")
        if isinstance(node, (list, tuple)):
            return [strip(v, prefix) for v in node]
        if not isinstance(node, Mapping):
            return node
        out = {}
        for key, value in node.items():
            path = f"{prefix}{key}"
            if any(path == k or path.startswith(k + ".") for k in PER_JOB_KEYS):
                continue
            out[key] = strip(value, path + ".")
        return out

    return json.dumps(strip(cfg, ""), sort_keys=True, default=str)


def plan(configs: Sequence[Mapping[str, Any]], max_models: int | None = None) -> tuple[list[list[int]], dict[int, str]]:
    """Groups of job indices that train stacked (each at most ``max_models`` long), and the
    jobs that run alone with the reason (a group of one runs alone too)."""
    alone: dict[int, str] = {}
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        reason = why_not_stackable(cfg)
        if reason:
            alone[i] = reason
        else:
            groups.setdefault(group_key(cfg), []).append(i)
    stacks = []
    for members in groups.values():
        size = max_models or len(members)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            if len(chunk) == 1:
                alone[chunk[0]] = "no other job of the sweep has its shape and settings"
            else:
                stacks.append(chunk)
    return stacks, alone
