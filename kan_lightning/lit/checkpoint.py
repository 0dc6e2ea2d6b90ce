"""Read checkpoints safely and rebuild the network they hold.

A checkpoint is data. It is unpickled with ``weights_only=True`` (tensors and plain containers
only), every ``_target_`` it stores anywhere must be one of this package's own (``ALLOWED_TARGETS``,
checked recursively, and even those are never imported from the file: models and data modules
are rebuilt from this package's registries and plain values), and the file paths that callback
states store must lie inside the checkpoint directory they name, so that resuming never reads,
replaces or deletes a file elsewhere.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from kan_lightning.nn import KAN, MLP, HybridKAN

# Only these classes are rebuilt from a checkpoint: nothing named inside a file gets imported.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "kan_lightning.nn.network.KAN": KAN,
    "kan_lightning.nn.mlp.MLP": MLP,
    "kan_lightning.nn.hybrid.HybridKAN": HybridKAN,
}


# Every ``_target_`` this package's configs use: the only ones a stored run config may name.
ALLOWED_TARGETS = frozenset(
    {
        *(f"kan_lightning.nn.{name}" for name in ("KAN", "MLP", "HybridKAN")),
        "kan_lightning.nn.network.KAN",
        "kan_lightning.nn.mlp.MLP",
        "kan_lightning.nn.hybrid.HybridKAN",
        "kan_lightning.data.SyntheticFunctionDataModule",
        "kan_lightning.data.datamodule.SyntheticFunctionDataModule",
        *(
            f"kan_lightning.lit.callbacks.{name}"
            for name in (
                "DivergenceGuard",
                "GracefulShutdown",
                "GradientStats",
                "GridExtension",
                "GridUpdate",
                "LastCheckpoint",
                "MultiStart",
                "Pruning",
                "RegularizationSchedule",
            )
        ),
        "kan_lightning.lit.edge_plots.EdgePlots",
        # where run configs written before the callbacks package named the two safeguards
        "kan_lightning.lit.safety.DivergenceGuard",
        "kan_lightning.lit.safety.GracefulShutdown",
        "kan_lightning.lit.schedulers.warmup_cosine",
        "lightning.pytorch.Trainer",
        *(
            f"lightning.pytorch.callbacks.{name}"
            for name in ("EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "RichProgressBar", "TQDMProgressBar")
        ),
        "kan_lightning.logs.progress_bar",
        *(f"lightning.pytorch.loggers.{name}" for name in ("CSVLogger", "MLFlowLogger", "TensorBoardLogger", "WandbLogger")),
        "lightning.pytorch.profilers.SimpleProfiler",
        "lightning.pytorch.plugins.environments.SLURMEnvironment",
        *(f"torch.optim.{name}" for name in ("Adam", "AdamW", "LBFGS", "SGD")),
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
    }
)
# Keys of callback states that hold file paths (Lightning's ModelCheckpoint).
_PATH_KEYS = ("best_model_path", "last_model_path", "kth_best_model_path")


def read_checkpoint(path: str | Path, trusted_targets: Iterable[str] = ()) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs while unpickling), turning
    a missing, truncated or foreign file into an error that names it, and refuse one that
    names a ``_target_`` outside ``ALLOWED_TARGETS`` (and ``trusted_targets``: those of the
    caller's own config) or stores paths outside its checkpoint directory."""
    path = Path(path)
    checkpoint = load_plain(path, "checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a kan-lightning checkpoint (no state_dict)")
    check_stored_targets(checkpoint, path, trusted_targets)
    check_stored_paths(checkpoint, path)
    return checkpoint


def load_plain(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``; every failure is a ``ValueError`` naming the file
    (``FileNotFoundError`` for a missing one)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {what} {str(path)!r}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to load (the unpickler raises many kinds) is a bad file
        reason = _reason(err)
        if any(word in reason for word in ("GLOBAL", "Unsupported global", "Unsupported class")):
            raise ValueError(
                f"refused to load {what} {str(path)!r}: it holds objects other than tensors and "
                f"plain containers, which are never unpickled here (weights_only=True): {reason}"
            ) from None
        raise ValueError(f"cannot read {what} {str(path)!r} (corrupt or truncated?): {reason}") from None


def _stored_targets(node: Any, key_path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{key_path}.{key}" if key_path else str(key)
            if key == "_target_":
                yield child, value
            else:
                yield from _stored_targets(value, child)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _stored_targets(value, f"{key_path}[{i}]")


def config_targets(config: Any) -> set[str]:
    """The ``_target_`` strings of a config (the caller's own, trusted, e.g. when resuming)."""
    return {t for _, t in _stored_targets(config, "") if isinstance(t, str)}


def check_stored_targets(record: Any, path: str | Path, trusted: Iterable[str] = (), allowed: Iterable[str] = ALLOWED_TARGETS) -> None:
    """Refuse a stored record naming, anywhere, a ``_target_`` that is not one of this package's
    (``allowed``) or ``trusted``."""
    allowed = set(allowed) | set(trusted)
    for key_path, target in _stored_targets(record, ""):
        if not isinstance(target, str) or target not in allowed:
            raise ValueError(
                f"refused to load {str(path)!r}: {key_path}={target!r} is not one of kan-lightning's own "
                "targets (a stored config is data: nothing it names is imported or called)"
            )


def _inside(child: str, parent: str) -> bool:
    child_abs, parent_abs = os.path.realpath(child), os.path.realpath(parent)
    return os.path.commonpath([child_abs, parent_abs]) == parent_abs


def check_stored_paths(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose callback states (Lightning's ``ModelCheckpoint``: best, last
    and top-k files, which resuming may load or delete) point outside the directory they name."""
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, dict) or "dirpath" not in state:
            continue
        dirpath = state["dirpath"]
        stored = [(f"callbacks[{name!r}].{k}", state.get(k)) for k in _PATH_KEYS]
        stored += [(f"callbacks[{name!r}].best_k_models", k) for k in state.get("best_k_models") or {}]
        for key_path, value in stored:
            if value in (None, ""):
                continue
            if not isinstance(value, str) or not isinstance(dirpath, str) or not _inside(value, dirpath):
                raise ValueError(
                    f"refused to load {str(path)!r}: {key_path}={value!r} lies outside its checkpoint "
                    f"directory {dirpath!r} (stored paths are never followed)"
                )


def build_from_plain(cls: type, config: Any, where: str, path: str | Path = "checkpoint") -> Any:
    """``cls(**config)`` for a stored config of plain values only, with an error naming the
    stored key a constructor refuses."""
    if not isinstance(config, dict):
        raise ValueError(f"refused to load {str(path)!r}: {where} is not a mapping of plain values")
    _check_plain(config, where, path)
    accepted = inspect.signature(cls).parameters
    any_keyword = any(p.kind == p.VAR_KEYWORD for p in accepted.values())  # passed on, checked there
    for key in config:
        if key not in accepted and not any_keyword:
            raise ValueError(f"refused to load {str(path)!r}: {where}.{key} is not a parameter of {cls.__name__}")
    try:
        return cls(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot rebuild {cls.__name__} from {where} of {str(path)!r}: {err}") from None


def _check_plain(value: Any, where: str, path: str | Path) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{where}.{k}", path)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", path)
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise ValueError(f"refused to load {str(path)!r}: {where} holds a {type(value).__name__}, not a plain value")


def _reason(err: BaseException) -> str:
    """One line of a loading error: torch's weights-only failures span a page, and their
    reason is the first line after ``WeightsUnpickler error:``."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    elif text.startswith("Weights only load failed"):  # the reason follows torch's advice paragraph
        text = text.split("\n\n", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def check_state_matches(checkpoint: dict[str, Any], module: nn.Module, path: str | Path) -> None:
    """Refuse, naming a differing entry, a checkpoint whose state has other tensors than
    ``module`` (another model type or depth). Shapes are not compared: a KAN layer takes the
    grid size of a saved (extended) grid, and the pruning callback rebuilds pruned widths."""
    saved = checkpoint.get("state_dict") or {}
    current = module.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        detail = f"it lacks {missing[:3]}" if missing else f"it has {unexpected[:3]}, which this model lacks"
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this model ({detail}): resume with the model config it was trained with"
        )


def model_from_checkpoint(checkpoint: dict[str, Any] | str | Path) -> nn.Module:
    """The trained network stored in a checkpoint written by :class:`KANRegressor`, in the
    dtype it was saved in (a float64 run's network stays float64: no digit lost to float32)."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    meta = checkpoint.get("kan_lightning")
    if not isinstance(meta, dict) or meta.get("model_class") not in MODEL_CLASSES:
        found = meta.get("model_class") if isinstance(meta, dict) else None
        raise ValueError(f"checkpoint holds no known kan-lightning model (model_class={found!r})")
    model = build_from_plain(MODEL_CLASSES[meta["model_class"]], meta.get("model_config"), "kan_lightning.model_config")
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    load_weights(model, state)
    return model


def load_weights(model: nn.Module, state: dict[str, Any]) -> None:
    """``state`` into ``model``, which first takes the dtype the weights were saved in:
    ``load_state_dict`` alone would round a float64 network's weights to a float32 model's."""
    first = next(iter(model.state_dict()), None)
    saved = state.get(first)
    if torch.is_tensor(saved) and saved.is_floating_point():
        model.to(saved.dtype)
    model.load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# The data of a checkpoint's run (kan-eval, kan-symbolic)

SPLITS = ("train", "val", "test")


def datamodule_from_checkpoint(checkpoint: dict[str, Any], data_overrides: dict | None = None):
    """The data of the run that wrote ``checkpoint`` (its config, seed and normalization),
    with ``data_overrides`` merged over its config.

    The stored config is data: its ``_target_`` must name this package's data module, which is
    then built from the plain values alone (nothing named in the file is imported or called)."""
    from omegaconf import OmegaConf

    from kan_lightning.config_checks import DATA_TARGETS
    from kan_lightning.data import SyntheticFunctionDataModule

    meta = checkpoint.get("kan_lightning")
    run_config = meta.get("run_config") if isinstance(meta, dict) else None
    if not isinstance(run_config, dict) or not isinstance(run_config.get("data"), dict):
        raise ValueError(
            "checkpoint has no run config to rebuild its data from (kan-train's checkpoints have one; "
            "a KANTrainer.save file does not: evaluate it in Python with load_model)"
        )
    data_cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(run_config["data"]), data_overrides or {}), resolve=True)
    check_stored_targets({"run_config": {"data": data_cfg}}, "checkpoint")
    target = data_cfg.pop("_target_", None)
    if target not in DATA_TARGETS:
        raise ValueError(f"run_config.data._target_={target!r} is not kan-lightning's data module; cannot rebuild the data")
    for key in [k for k in data_cfg if k.startswith("_") and k.endswith("_")]:
        del data_cfg[key]
    check_stored_targets({"run_config": {"data": data_cfg}}, "checkpoint", allowed=())  # plain values: no nested targets
    datamodule = build_from_plain(SyntheticFunctionDataModule, data_cfg, "run_config.data")
    datamodule.setup("test")
    state = checkpoint.get(type(datamodule).__qualname__)
    if state and not data_overrides:
        datamodule.load_state_dict(state)  # the exact normalization used in training
    return datamodule


# ---------------------------------------------------------------------------------------------
# The Python API's model file (``KANTrainer.save``, ``load_model``): a checkpoint as kan-train
# writes it (``state_dict`` and the ``kan_lightning`` block, read by kan-eval, kan-symbolic and
# ``model_from_checkpoint``), plus plain keys for the usage guide's loading recipe
# (``KAN(**record["model_config"]).load_state_dict(record["model_state_dict"])``) and the
# trainer's normalization, history and optimizer settings.

MODEL_FILE_FORMAT = "kan_lightning.api.model"
# 1: the plain keys only, ``model_class`` a class name ("KAN"); 2: inside a kan-train checkpoint
MODEL_FILE_VERSION = 2
# The data module whose state holds a kan-train run's normalization.
RUN_DATA_STATE = "SyntheticFunctionDataModule"


def model_class_key(model: nn.Module) -> str:
    """``model``'s name in ``MODEL_CLASSES``; a ``TypeError`` for a network that cannot be
    rebuilt from a file (another class, or a KAN whose activation is not named)."""
    key = next((k for k, cls in MODEL_CLASSES.items() if type(model) is cls), None)
    if key is None:
        names = ", ".join(cls.__name__ for cls in MODEL_CLASSES.values())
        raise TypeError(f"save supports {names} models, got {type(model).__qualname__}")
    if isinstance(model, KAN) and "base_activation" not in model.config:
        raise TypeError(
            f"cannot save a KAN whose base_activation is {type(model.layers[0].base_activation).__name__}: "
            "give it by name (e.g. base_activation='silu')"
        )
    return key


def model_file_record(module: nn.Module, **plain: Any) -> dict[str, Any]:
    """The checkpoint of ``module`` (a ``KANRegressor``) as kan-train writes it, with the plain
    keys of the model file and ``plain`` (tensors are stored once: the two views share them)."""
    key = model_class_key(module.model)
    checkpoint: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    return {
        **checkpoint,
        "format": MODEL_FILE_FORMAT,
        "version": MODEL_FILE_VERSION,
        "model_class": key,
        "model_config": checkpoint["kan_lightning"]["model_config"],
        "model_state_dict": state,
        **plain,
    }


def read_model_file(path: str | Path) -> dict[str, Any]:
    """A model file or a kan-train checkpoint, read with ``weights_only=True`` and refused
    (naming the file) when empty, corrupt, foreign, or naming a ``_target_`` outside
    ``ALLOWED_TARGETS``. A checkpoint comes back with the model file's keys filled in."""
    path = Path(path)
    record = load_plain(path, "model file")
    check_stored_targets(record, path)
    if isinstance(record, dict) and "format" not in record and isinstance(record.get("kan_lightning"), dict):
        meta = record["kan_lightning"]
        state = {k[len("model.") :]: v for k, v in (record.get("state_dict") or {}).items() if k.startswith("model.")}
        data_state = record.get(RUN_DATA_STATE)
        normalization = data_state.get("normalization") if isinstance(data_state, dict) else None
        record = {**record, "format": MODEL_FILE_FORMAT, "model_class": meta.get("model_class"),
                  "model_config": meta.get("model_config"), "model_state_dict": state, "normalization": normalization}
    if not isinstance(record, dict) or record.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a model saved by KANTrainer.save")
    version = record.get("version", 0)
    if not isinstance(version, int) or version > MODEL_FILE_VERSION:
        raise ValueError(f"{str(path)!r} has format version {version!r}, newer than this package reads")
    record["path"] = str(path)
    return record


def model_from_file(record: dict[str, Any]) -> nn.Module:
    """The network of a record of :func:`read_model_file`, rebuilt from this package's classes,
    in the dtype it was saved in."""
    path = record.get("path", "model file")
    name = record.get("model_class")
    cls = None
    if isinstance(name, str):  # version 1 named the class alone
        cls = MODEL_CLASSES.get(name) or next((c for c in MODEL_CLASSES.values() if c.__name__ == name), None)
    if cls is None:
        known = ", ".join(c.__name__ for c in MODEL_CLASSES.values())
        raise ValueError(f"{str(path)!r}: unknown model_class {name!r}; known: {known}")
    model = build_from_plain(cls, record.get("model_config"), "model_config", path)
    state = record.get("model_state_dict")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{str(path)!r}: model_state_dict is not a mapping of tensors")
    try:
        load_weights(model, state)
    except RuntimeError as err:
        raise ValueError(f"{str(path)!r}: its weights do not fit its model_config: {str(err).splitlines()[0]}") from None
    return model


def restore_network(module: nn.Module, path: str | Path) -> None:
    """The network of checkpoint ``path`` into ``module`` (a ``KANRegressor``): its weights into
    ``module.model`` when they fit it, else the network as saved (e.g. from before a pruning
    callback replaced it)."""
    checkpoint = read_checkpoint(path)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        module.model.load_state_dict(state)
    except RuntimeError:
        param = next(module.model.parameters())
        module.model = model_from_checkpoint(checkpoint).to(device=param.device, dtype=param.dtype)
