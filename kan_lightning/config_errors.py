"""Config mistakes as one-line errors that name the key: :class:`ConfigError`, the value checks
that word them (``model.grid_size=0 must be an integer >= 1``), and the rewording of a
constructor's own ``ValueError``/``TypeError`` into the same form (:func:`build` for checks
before anything is built, :func:`instantiate_node` for Hydra's ``instantiate``)."""

from __future__ import annotations

import difflib
import inspect
import math
import re
import typing
from typing import Any, Mapping

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


class ConfigError(ValueError):
    """A mistake in the run configuration: the message names the key path and the bad value.

    ``kan-train`` prints it as ``error: <message>`` and exits with status 2 (no traceback)."""


# ---------------------------------------------------------------------------------------------
# Value checks


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



# ---------------------------------------------------------------------------------------------
# Unknown keys


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


_REQUIREMENT = re.compile(r"([A-Za-z_]\w*)((?:\.\w+)*) ((?:must|is|has|leaves|needs|does)\b.*)")


def keyed_error(path: str, node: Mapping[str, Any], err: BaseException) -> ConfigError:
    """A constructor's ``ValueError`` in the config's words: ``"<key> <requirement>, got <v>"``
    becomes ``<path>.<key>=<value> <requirement>``; a message that names a key otherwise gets
    ``<path>.<key>=<value> cannot be used: ...``; every ``<key>=`` or ``<key>.`` it mentions
    gets the path."""
    message = _first_line(err)
    keys = sorted((str(k) for k in node if k not in INSTANTIATE_KEYS), key=len, reverse=True)
    lead = _REQUIREMENT.fullmatch(message)
    if lead and lead.group(1) in keys:
        key, sub, rest = lead.groups()
        value = node[key]
        for part in filter(None, sub.split(".")):
            value = value.get(part) if isinstance(value, Mapping) else None
        message = f"{key}{sub}={_show(value)} {rest.rsplit(', got ', 1)[0]}"
    elif not any(message.startswith(f"{key}=") for key in keys):
        key = _key_in_message(node, message)
        if key is None:
            return ConfigError(f"{path}: {message}")
        message = f"{key}={_show(node[key])} cannot be used: {message}"
    if keys:
        message = re.sub(rf"(?<![\w.])({'|'.join(map(re.escape, keys))})(?=[=.])", rf"{path}.\1", message)
    return ConfigError(message)


def build(path: str, node: Mapping[str, Any], factory: Any, **overrides: Any) -> Any:
    """``factory`` called with the node's keys (and ``overrides``), its ``ValueError`` or
    ``TypeError`` reworded by :func:`keyed_error` (for checks before anything is instantiated)."""
    kwargs = {str(k): v for k, v in node.items() if k not in INSTANTIATE_KEYS}
    try:
        return factory(**{**kwargs, **overrides})
    except (ValueError, TypeError) as err:
        raise keyed_error(path, node, err) from None


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
