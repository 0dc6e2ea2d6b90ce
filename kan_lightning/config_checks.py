"""Check a composed training config before any work starts, and name the key of every mistake.

``validate_config(cfg)`` raises :class:`~kan_lightning.config_errors.ConfigError` with a
one-line message naming the key path and the bad value, e.g. ``model.grid_size=0 must be an
integer >= 1``. The values of the model and the data are checked by their own constructors:
the KAN's :class:`~kan_lightning.nn.config.KANConfig` and the data module are built (no data is
generated, no network is built) and their errors reworded to name the key. What is checked here
needs the whole config or is not a constructor's: unknown keys, widths (which may say ``auto``)
against the data, splits large enough for R^2, monitors against the logged metrics, optimizer,
scheduler, trainer and top-level values, seeds.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Iterator, Mapping

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kan_lightning.config_errors import (  # noqa: F401 (ConfigError, fail, config_error, instantiate_node: used from here)
    INSTANTIATE_KEYS,
    ConfigError,
    _accepted_keys,
    _first_line,
    _is_int,
    _is_number,
    _show,
    _type_name,
    build,
    check_bool,
    check_choice,
    check_int,
    check_number,
    config_error,
    fail,
    instantiate_node,
    unknown_key_error,
)
KAN_TARGETS = {"kan_lightning.nn.KAN", "kan_lightning.nn.network.KAN"}
MLP_TARGETS = {"kan_lightning.nn.MLP", "kan_lightning.nn.mlp.MLP"}
HYBRID_TARGETS = {"kan_lightning.nn.HybridKAN", "kan_lightning.nn.hybrid.HybridKAN"}
# models whose layers_hidden runs from the data's input dimension to its output dimension
WIDTH_TARGETS = KAN_TARGETS | MLP_TARGETS | HYBRID_TARGETS
DATA_TARGETS = {"kan_lightning.data.SyntheticFunctionDataModule", "kan_lightning.data.datamodule.SyntheticFunctionDataModule"}
TEST_CKPT_CHOICES = ("best", "last")
# Lightning's (numpy's) seed bounds.
SEED_RANGE = (0, 2**32 - 1)
# What KANRegressor logs: <stage>/<name>; training values also as <name>_step/_epoch.
LOGGED_STAGES = ("train", "val", "test")
LOGGED_NAMES = ("loss", "mse", "rmse", "mae", "r2")
# The scheduler arguments that are periods (a zero divides by zero when the schedule steps).
SCHEDULER_PERIODS = ("T_max", "T_0", "step_size", "total_steps", "total_iters")
SCHEDULER_INTERVALS = ("epoch", "step")


# a first or last entry of model.layers_hidden that takes the data's dimension
AUTO_WIDTH = "auto"


def _is_auto(width: Any) -> bool:
    return width is None or width == AUTO_WIDTH


def data_widths(widths: list, input_dim: int, output_dim: int) -> list:
    """``widths`` with an ``auto`` (or null) first/last entry set to the data's input/output
    dimension; explicit widths are kept, so a mismatch still gets :func:`layers_mismatch`."""
    widths = list(widths)
    if widths and _is_auto(widths[0]):
        widths[0] = input_dim
    if len(widths) > 1 and _is_auto(widths[-1]):
        widths[-1] = output_dim
    return widths


def layers_mismatch(widths: list[int], input_dim: int, output_dim: int) -> ConfigError:
    """The message for a width list that does not fit the data's dimensions."""
    middle = ",".join(map(str, widths[1:-1]))
    example = f"[{input_dim},{middle},{output_dim}]" if middle else f"[{input_dim},{output_dim}]"
    return ConfigError(
        f"model.layers_hidden={widths} does not fit the data: its first width must be the input "
        f"dimension {input_dim} and its last the output dimension {output_dim} "
        f"(e.g. model.layers_hidden={example})"
    )


# ---------------------------------------------------------------------------------------------
# Unknown keys: every ``_target_`` must accept the keys its node gives it


def _target_nodes(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def check_targets(container: Mapping[str, Any]) -> int:
    """Each ``_target_`` can be imported and accepts every key of its node; returns how many
    ``_target_`` nodes there are."""
    nodes = list(_target_nodes(dict(container), ""))
    for path, node in nodes:
        target_name = node["_target_"]
        try:
            target = get_object(target_name)
        except Exception as err:  # ImportError, AttributeError, Hydra's own wrappers
            raise ConfigError(f"{path}._target_={target_name!r} cannot be imported: {_first_line(err)}") from None
        accepted, any_keyword = _accepted_keys(target)
        if any_keyword:
            continue
        for key in node:
            if key not in INSTANTIATE_KEYS and key not in accepted:
                raise unknown_key_error(path, target_name, str(key), accepted)
    return len(nodes)


# ---------------------------------------------------------------------------------------------
# Sections


def check_model(model: Mapping[str, Any]) -> None:
    """The widths (which may say ``auto``); a KAN's other options are checked by building its
    :class:`~kan_lightning.nn.config.KANConfig`."""
    target = model.get("_target_")
    if target not in WIDTH_TARGETS:
        return
    widths = model.get("layers_hidden")
    if (
        not isinstance(widths, (list, tuple))
        or len(widths) < 2
        or not all(_is_int(w) and w >= 1 for w in data_widths(widths, 1, 1))
    ):
        raise fail(
            "model.layers_hidden", widths,
            "must list at least two positive integer widths (input first, output last; those two may be "
            "auto: the data's dimensions), e.g. [2,5,1] or [auto,5,auto]",
        )
    if target in KAN_TARGETS:
        from kan_lightning.nn.config import KANConfig

        build("model", model, KANConfig, layers_hidden=data_widths(widths, 1, 1))


def check_data(data: Mapping[str, Any]) -> int | None:
    """Builds the data module (its constructor checks every value; no data is generated yet)
    and checks that every split can hold an R^2. Returns the input dimension of the data
    (``None`` for a data module this does not know)."""
    if data.get("_target_") not in DATA_TARGETS:
        return None
    if data.get("formula") is None and data.get("function") is None:
        raise ConfigError("data.function and data.formula are both null: set one, e.g. data.function=polynomial or data.formula='x0*x1'")
    check_int("data.seed", data.get("seed", 0))
    from kan_lightning.data.datamodule import SyntheticFunctionDataModule
    from kan_lightning.data.sampling import split_sizes

    module = build("data", data, SyntheticFunctionDataModule)
    n_samples, split = data.get("n_samples", 5000), data.get("split", [0.8, 0.1, 0.1])
    for part, fraction, size in zip(("train", "val", "test"), split, split_sizes(n_samples, tuple(split))):
        if fraction > 0 and size < 2:
            raise fail(
                "data.n_samples", n_samples,
                f"is too small for data.split={_show(split)}: the {part} part would hold {size} sample(s), "
                "and its R^2 needs at least 2",
            )
    return module.target.input_dim


def check_optimizer(optimizer: Mapping[str, Any] | None) -> None:
    if not optimizer:
        return
    if "lr" in optimizer:
        check_number("optimizer.lr", optimizer["lr"], 0.0, strict=True)
    for key in ("weight_decay", "momentum", "eps", "dampening"):
        if key in optimizer:
            check_number(f"optimizer.{key}", optimizer[key], 0.0)
    if "betas" in optimizer:
        betas = optimizer["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise fail("optimizer.betas", betas, "must be a pair of numbers in [0, 1), e.g. [0.9,0.999]")
    for key in ("max_iter", "history_size"):
        if key in optimizer:
            check_int(f"optimizer.{key}", optimizer[key], 1)


def check_scheduler(scheduler: Mapping[str, Any] | None) -> None:
    if not scheduler:
        return
    if "interval" in scheduler:
        check_choice("scheduler.interval", scheduler["interval"], SCHEDULER_INTERVALS)
    factory = scheduler.get("factory")
    if isinstance(factory, Mapping):
        for key in SCHEDULER_PERIODS:
            if key in factory:
                check_int(f"scheduler.factory.{key}", factory[key], 1)


def check_callbacks(callbacks: Mapping[str, Any] | None) -> None:
    """Settings for a callback that is not in the callbacks list (a preset's or ``fit=lm``'s
    ``callbacks.multi_start`` under ``callbacks=default``) would be dropped without a word."""
    for name, node in (callbacks or {}).items():
        if isinstance(node, Mapping) and node and "_target_" not in node:
            raise ConfigError(
                f"callbacks.{name} sets {', '.join(map(str, node))} of a callback that is not in the callbacks list: "
                f"add it, e.g. 'callbacks=[default,{name}]', or drop the settings"
            )


def logged_metrics(model: Mapping[str, Any]) -> list[str]:
    """The names KANRegressor logs for this model (what a monitor may watch)."""
    names = [f"{stage}/{name}" for stage in LOGGED_STAGES for name in LOGGED_NAMES]
    names += ["train/loss_step", "train/loss_epoch", "train/objective", "train/objective_step", "train/objective_epoch"]
    regularization = model.get("regularization") if isinstance(model, Mapping) else None
    if isinstance(regularization, Mapping):
        names += [f"reg/{term}{suffix}" for term in regularization for suffix in ("", "_step", "_epoch")]
    return names


def check_monitors(container: Mapping[str, Any]) -> None:
    """Every monitor names a metric the module logs, and a ``val/`` one has validation data."""
    known = logged_metrics(container.get("model") or {})
    monitors = [(f"callbacks.{name}.monitor", node.get("monitor")) for name, node in (container.get("callbacks") or {}).items() if isinstance(node, Mapping)]
    scheduler = container.get("scheduler") or {}
    if isinstance(scheduler, Mapping) and scheduler.get("factory"):
        monitors.append(("scheduler.monitor", scheduler.get("monitor")))
    split = (container.get("data") or {}).get("split")
    no_val = isinstance(split, (list, tuple)) and len(split) == 3 and split[1] == 0
    for key, monitor in monitors:
        if monitor is None:
            continue
        if not isinstance(monitor, str) or monitor not in known:
            close = difflib.get_close_matches(str(monitor), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            stages = "|".join(LOGGED_STAGES[:2])
            raise fail(key, monitor, f"is not a metric the module logs{hint}; use {{{stages}}}/{{{','.join(LOGGED_NAMES)}}}")
        if no_val and monitor.startswith("val/"):
            raise fail(key, monitor, f"needs validation data, but data.split={_show(split)} has no validation part")
    optimized = container.get("optimized_metric")
    if optimized is not None and optimized not in known:
        raise fail("optimized_metric", optimized, "is not a metric the module logs, e.g. val/rmse or test/rmse")


def _precisions() -> list[Any]:
    from lightning.fabric.connector import _PRECISION_INPUT

    def flat(t: Any) -> list[Any]:
        out: list[Any] = []
        for arg in typing.get_args(t):
            out += flat(arg) if typing.get_args(arg) else [arg]
        return out

    return flat(_PRECISION_INPUT)


def check_trainer(trainer: Mapping[str, Any] | None) -> None:
    if not trainer:
        return
    max_steps = trainer.get("max_steps", -1)
    check_int("trainer.max_steps", max_steps, -1)
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and not (max_epochs == -1 and max_steps > 0):
        check_int("trainer.max_epochs", max_epochs, 1)
    check_int("trainer.min_epochs", trainer.get("min_epochs"), 0, allow_none=True)
    if "precision" in trainer and trainer["precision"] is not None:
        allowed = _precisions()
        if trainer["precision"] not in allowed:
            shown = ", ".join(dict.fromkeys(str(p) for p in allowed if isinstance(p, str)))
            raise fail("trainer.precision", trainer["precision"], f"is not a known precision; use one of {shown}")
    check_number("trainer.gradient_clip_val", trainer.get("gradient_clip_val"), 0.0, allow_none=True)
    check_int("trainer.check_val_every_n_epoch", trainer.get("check_val_every_n_epoch"), 1, allow_none=True)
    check_int("trainer.log_every_n_steps", trainer.get("log_every_n_steps"), 1, allow_none=True)
    check_int("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches"), 1, allow_none=True)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = trainer.get(key)
        if value is None:
            continue
        if _is_int(value):
            check_int(f"trainer.{key}", value, 0)
        else:
            check_number(f"trainer.{key}", value, 0.0, maximum=1.0)
    deterministic = trainer.get("deterministic")
    if deterministic is not None and deterministic not in (True, False, "warn"):
        raise fail("trainer.deterministic", deterministic, "must be true, false or 'warn'")


def check_top_level(cfg: Mapping[str, Any]) -> None:
    seed = cfg.get("seed", 0)
    if not _is_int(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        got = f" (got a {_type_name(seed)})" if not _is_int(seed) else ""
        raise fail("seed", seed, f"must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]} (Lightning's seed bounds){got}")
    for key in ("train", "test"):
        if key in cfg:
            check_bool(key, cfg[key])
    if "test_ckpt" in cfg:
        check_choice("test_ckpt", cfg["test_ckpt"], TEST_CKPT_CHOICES)
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not isinstance(ckpt, str):
        raise fail("ckpt_path", ckpt, "must be a file path or 'last'")


# ---------------------------------------------------------------------------------------------
# Entry points


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data with interpolations resolved; a missing ``???`` value or a broken
    interpolation becomes a ``ConfigError`` naming its key."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        msg = getattr(err, "msg", None) or _first_line(err)
        if "Missing mandatory value" in msg:
            raise ConfigError(f"{key} is required but has no value (???): set it, e.g. {key}=...") from None
        raise ConfigError(f"{key}: {_first_line(err)}") from None
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first mistake found in a training config."""
    container = resolved_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    check_top_level(container)
    check_targets(container)
    check_callbacks(container.get("callbacks"))
    model = container.get("model") or {}
    check_model(model)
    input_dim = check_data(container.get("data") or {})
    if input_dim is not None and model.get("_target_") in WIDTH_TARGETS:
        widths = data_widths(model["layers_hidden"], input_dim, 1)
        if widths[0] != input_dim or widths[-1] != 1:
            raise layers_mismatch(widths, input_dim, 1)
    check_optimizer(container.get("optimizer"))
    check_scheduler(container.get("scheduler"))
    check_trainer(container.get("trainer"))
    check_monitors(container)
