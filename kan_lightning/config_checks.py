"""Check a composed training config before any work starts, and name the key of every mistake.

``validate_config(cfg)`` runs explicit checks (unknown keys, types, ranges, the data's shape
against the network's widths, function names and formulas) and raises :class:`ConfigError` with
a one-paragraph message that names the key path and the bad value, e.g.
``model.grid_size=0 must be an integer >= 1``. ``instantiate_node`` wraps
``hydra.utils.instantiate`` so that a constructor's own ``ValueError``/``TypeError`` (a check
this module does not know about) also comes back as a ``ConfigError`` naming the key.

Nothing here imports Lightning's Trainer machinery beyond the list of precisions; the checks are
cheap (no data is generated, no model is built).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import typing
from typing import Any, Iterator, Mapping

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
KAN_TARGETS = {"kan_lightning.nn.KAN", "kan_lightning.nn.network.KAN"}
MLP_TARGETS = {"kan_lightning.nn.MLP", "kan_lightning.nn.mlp.MLP"}
DATA_TARGETS = {"kan_lightning.data.SyntheticFunctionDataModule", "kan_lightning.data.datamodule.SyntheticFunctionDataModule"}
TEST_CKPT_CHOICES = ("best", "last")
# Lightning's (numpy's) seed bounds.
SEED_RANGE = (0, 2**32 - 1)
# What KANRegressor logs: <stage>/<name>; training values also as <name>_step/_epoch.
LOGGED_STAGES = ("train", "val", "test")
LOGGED_NAMES = ("loss", "mse", "rmse", "mae", "r2")
# The splines are evaluated in float32: grid ranges and domains stay well inside its range.
MAX_ABS_COORDINATE = 1e30
# The scheduler arguments that are periods (a zero divides by zero when the schedule steps).
SCHEDULER_PERIODS = ("T_max", "T_0", "step_size", "total_steps", "total_iters")
SCHEDULER_INTERVALS = ("epoch", "step")


class ConfigError(ValueError):
    """A mistake in the run configuration: the message names the key path and the bad value.

    ``kan-train`` prints it as ``error: <message>`` and exits with status 2 (no traceback)."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def _show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def fail(key: str, value: Any, requirement: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)} {requirement}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(key: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_int(value):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise fail(key, value, f"must be an integer{bound} (got a {_type_name(value)})")
    if minimum is not None and value < minimum:
        raise fail(key, value, f"must be an integer >= {minimum}")


def check_number(
    key: str,
    value: Any,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
    allow_none: bool = False,
) -> None:
    if value is None and allow_none:
        return
    bound = ""
    if minimum is not None:
        bound = f" {'>' if strict else '>='} {minimum:g}"
    if maximum is not None:
        bound += f"{' and' if bound else ''} <= {maximum:g}"
    if not _is_number(value):
        raise fail(key, value, f"must be a number{bound} (got a {_type_name(value)})")
    if not math.isfinite(value):
        raise fail(key, value, f"must be a finite number{bound}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise fail(key, value, f"must be a number{bound}")
    if maximum is not None and value > maximum:
        raise fail(key, value, f"must be a number{bound}")


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise fail(key, value, f"must be true or false (got a {_type_name(value)})")


def check_choice(key: str, value: Any, choices: typing.Sequence[Any]) -> None:
    if value not in choices:
        raise fail(key, value, f"is not one of {', '.join(_show(c) for c in choices)}")


def check_range_pair(key: str, value: Any) -> tuple[float, float]:
    """A ``[low, high]`` pair of finite numbers with ``low < high``."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value):
        raise fail(key, value, "must be a pair of numbers [low, high]")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise fail(key, value, "must be finite")
    if low >= high:
        what, example = ("is empty", (low, low + 1)) if low == high else ("is reversed", (high, low))
        raise fail(key, value, f"{what}: it needs low < high, e.g. {key}=[{example[0]:g},{example[1]:g}]")
    return low, high


def check_grid_range(value: Any, grid_size: Any, spline_order: Any) -> None:
    """A ``[low, high]`` whose knots (``spline_order`` more on each side) are distinct, finite
    float32 numbers."""
    low, high = check_range_pair("model.grid_range", value)
    if not (_is_int(grid_size) and _is_int(spline_order) and grid_size >= 1 and spline_order >= 0):
        return
    width = high - low
    step = width / grid_size
    outer = max(abs(low - spline_order * step), abs(high + spline_order * step))
    if not math.isfinite(width) or not outer <= MAX_ABS_COORDINATE:
        raise fail("model.grid_range", value, f"is too wide: its knots must stay within +-{MAX_ABS_COORDINATE:g} (float32)")
    if step <= 1e-6 * max(abs(low), abs(high)):
        raise fail("model.grid_range", value, f"is too narrow for model.grid_size={grid_size}: float32 cannot tell its knots apart")


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


def _accepted_keys(target: Any) -> tuple[list[str], bool]:
    """The keyword parameters of ``target`` and whether it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: cannot check
        return [], True
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def unknown_key_error(path: str, target_name: str, key: str, accepted: list[str], what: str | None = None) -> ConfigError:
    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.5)
    hint = f" (did you mean {path}.{close[0]}?)" if close else ""
    what = what or f"a parameter of {target_name}"
    return ConfigError(f"{path}.{key} is not {what}{hint}; accepted: {', '.join(accepted)}")


def check_targets(container: Mapping[str, Any]) -> None:
    """Each ``_target_`` can be imported and accepts every key of its node."""
    for path, node in _target_nodes(dict(container), ""):
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


# ---------------------------------------------------------------------------------------------
# Sections


def check_model(model: Mapping[str, Any]) -> None:
    target = model.get("_target_")
    if target not in KAN_TARGETS | MLP_TARGETS:
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
    if target in MLP_TARGETS:
        return
    if "grid_size" in model:
        check_int("model.grid_size", model["grid_size"], 1)
    if "spline_order" in model:
        check_int("model.spline_order", model["spline_order"], 0)
    if "grid_range" in model:
        check_grid_range(model["grid_range"], model.get("grid_size", 5), model.get("spline_order", 3))
    for key in ("scale_noise", "scale_base", "scale_spline"):
        if key in model:
            check_number(f"model.{key}", model[key])
    if "grid_eps" in model:
        check_number("model.grid_eps", model["grid_eps"], 0.0, maximum=1.0)
    if "basis" in model:
        check_choice("model.basis", model["basis"], ("fast", "reference"))
    if "base_activation" in model and isinstance(model["base_activation"], str):
        from kan_lightning.nn.activations import ACTIVATIONS

        if model["base_activation"].lower() not in ACTIVATIONS:
            raise fail("model.base_activation", model["base_activation"], f"is not a known activation; known: {', '.join(sorted(ACTIVATIONS))}")
    regularization = model.get("regularization")
    if regularization is not None:
        if not isinstance(regularization, Mapping):
            raise fail("model.regularization", regularization, "must be a mapping of penalty weights")
        from kan_lightning.nn.network import REGULARIZATION_TERMS

        for name, weight in regularization.items():
            if name not in REGULARIZATION_TERMS:
                raise unknown_key_error("model.regularization", "", str(name), list(REGULARIZATION_TERMS), what="a regularization term")
            check_number(f"model.regularization.{name}", weight, 0.0)


def _data_target(data: Mapping[str, Any]):
    """The data's target function, or a ``ConfigError`` naming the key that breaks it."""
    from kan_lightning.data.functions import get_function, parse_formula, validate_domain

    formula, function = data.get("formula"), data.get("function")
    input_dim, domain = data.get("input_dim"), data.get("domain")
    if input_dim is not None:
        check_int("data.input_dim", input_dim, 1, allow_none=True)
    if formula is not None:
        if not isinstance(formula, str):
            raise fail("data.formula", formula, "must be a string such as 'exp(sin(pi*x0)+x1**2)'")
        try:
            target = parse_formula(formula, input_dim=input_dim)
        except ValueError as err:
            raise ConfigError(f"data.formula={formula!r} cannot be used: {err}") from None
    elif function is None:
        raise ConfigError("data.function and data.formula are both null: set one, e.g. data.function=polynomial or data.formula='x0*x1'")
    else:
        try:
            target = get_function(function)
        except ValueError as err:
            raise ConfigError(f"data.function={_show(function)}: {err}") from None
        if input_dim is not None and input_dim != target.input_dim:
            raise fail("data.input_dim", input_dim, f"does not match data.function={function!r}, which has input dimension {target.input_dim}")
    try:
        bounds = validate_domain(domain, target.input_dim)
    except ValueError as err:
        raise ConfigError(f"data.domain={_show(domain)} is not usable: {err}") from None
    for low, high in bounds or []:
        if max(abs(low), abs(high)) > MAX_ABS_COORDINATE or not math.isfinite(high - low):
            raise fail("data.domain", domain, f"is too wide: the inputs are float32, keep |bounds| <= {MAX_ABS_COORDINATE:g}")
    return target


def check_data(data: Mapping[str, Any]) -> int | None:
    """Returns the input dimension of the data (``None`` for a data module this does not know)."""
    if data.get("_target_") not in DATA_TARGETS:
        return None
    target = _data_target(data)
    n_samples = data.get("n_samples", 5000)
    check_int("data.n_samples", n_samples, 1)
    split = data.get("split", [0.8, 0.1, 0.1])
    if not isinstance(split, (list, tuple)) or len(split) != 3 or not all(_is_number(v) for v in split):
        raise fail("data.split", split, "must be three fractions [train, val, test], e.g. [0.8,0.1,0.1]")
    if any(v < 0 or not math.isfinite(v) for v in split):
        raise fail("data.split", split, "has a negative or non-finite fraction")
    if abs(sum(split) - 1.0) > 1e-6:
        raise fail("data.split", split, f"must sum to 1 (it sums to {sum(split):g})")
    if split[0] == 0:
        raise fail("data.split", split, "leaves no training data")
    from kan_lightning.data.datamodule import SAMPLING_MODES, split_sizes

    for part, fraction, size in zip(("train", "val", "test"), split, split_sizes(n_samples, tuple(split))):
        if fraction > 0 and size < 2:
            raise fail(
                "data.n_samples", n_samples,
                f"is too small for data.split={_show(split)}: the {part} part would hold {size} sample(s), "
                "and its R^2 needs at least 2",
            )
    batch_size = data.get("batch_size", 256)
    if batch_size != "full":
        if not _is_int(batch_size) or batch_size < 1:
            raise fail("data.batch_size", batch_size, "must be a positive integer or 'full'")
    check_number("data.noise_level", data.get("noise_level", 0.0), 0.0)
    check_int("data.num_workers", data.get("num_workers", 0), 0)
    check_choice("data.sampling", data.get("sampling", "uniform"), SAMPLING_MODES)
    check_int("data.seed", data.get("seed", 0))
    for key in ("normalize_inputs", "normalize_targets"):
        if key in data:
            check_bool(f"data.{key}", data[key])
    return target.input_dim


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    model = container.get("model") or {}
    check_model(model)
    input_dim = check_data(container.get("data") or {})
    if input_dim is not None and model.get("_target_") in KAN_TARGETS | MLP_TARGETS:
        widths = data_widths(model["layers_hidden"], input_dim, 1)
        if widths[0] != input_dim or widths[-1] != 1:
            raise layers_mismatch(widths, input_dim, 1)
    check_optimizer(container.get("optimizer"))
    check_scheduler(container.get("scheduler"))
    check_trainer(container.get("trainer"))
    check_monitors(container)


# ---------------------------------------------------------------------------------------------
# Constructor errors -> ConfigError


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def _key_in_message(node: Mapping[str, Any], message: str) -> str | None:
    for key in sorted((str(k) for k in node if k not in INSTANTIATE_KEYS), key=len, reverse=True):
        if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message):
            return key
    return None


def config_error(path: str, node: Any, err: BaseException) -> ConfigError:
    """A constructor's error, reworded to name the config key it most likely comes from."""
    message = _first_line(err) if not isinstance(err, ConfigError) else str(err)
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    plain = plain if isinstance(plain, Mapping) else {}
    unexpected = _UNEXPECTED.search(message)
    if unexpected and "_target_" in plain:
        try:
            accepted, _ = _accepted_keys(get_object(plain["_target_"]))
        except Exception:
            accepted = []
        return unknown_key_error(path, plain["_target_"], unexpected.group(1), accepted)
    key = _key_in_message(plain, message)
    if key is not None:
        return ConfigError(f"{path}.{key}={_show(plain[key])}: {message}")
    return ConfigError(f"{path}: {message}")


def instantiate_node(node: Any, path: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; a ``ValueError`` or ``TypeError`` from the
    constructor (and Lightning's ``MisconfigurationException``) becomes a ``ConfigError`` naming
    ``path`` and, when the message mentions one, the key."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    expected = (ValueError, TypeError, MisconfigurationException)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, expected):
            raise config_error(path, node, cause) from cause
        if isinstance(cause, (ImportError, AttributeError)) or cause is None:
            target = node.get("_target_") if isinstance(node, (Mapping, DictConfig)) else None
            reason = _first_line(cause or err)
            raise ConfigError(f"{path}._target_={target!r} cannot be imported: {reason}") from err
        raise
    except expected as err:
        raise config_error(path, node, err) from err
