"""The KAN's hyperparameters in one place, checked where they are made.

:class:`SplineConfig` holds what every :class:`~kan_lightning.nn.layer.KANLayer` reads;
:class:`KANConfig` adds the widths and the penalty weights of a whole
:class:`~kan_lightning.nn.network.KAN`. Building either checks every value (``ValueError``
``"<name> <requirement>, got <value>"``), so a config file can be checked before any model is
built (``kan_lightning.config_checks``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn

from .activations import ACTIVATIONS
from .kernels import CONTRACTIONS

BASES = ("fast", "reference")
EXTRAPOLATIONS = ("bases", "linear")
REGULARIZATION_TERMS = ("l1", "entropy", "coef_l1", "coef_entropy", "smoothness")
# The knots are float32 by default: grid ranges stay well inside its range and resolution.
MAX_ABS_COORDINATE = 1e30


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(name: str, value: Any, minimum: int) -> int:
    """An integer ``>= minimum`` (not a bool)."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_finite(name: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_grid_args(grid_size: int, spline_order: int, grid_range: Sequence[float]) -> tuple[float, float]:
    """Validate the spline hyperparameters; returns ``grid_range`` as a float pair whose knots
    (``spline_order`` more on each side) are distinct, finite float32 numbers."""
    check_count("grid_size", grid_size, 1)
    check_count("spline_order", spline_order, 0)
    try:
        lo, hi = (float(v) for v in grid_range)
    except (TypeError, ValueError):
        raise ValueError(f"grid_range must be a pair (low, high), got {grid_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"grid_range must be finite with low < high, got {grid_range!r}")
    if lo >= hi:
        raise ValueError(f"grid_range is {'empty' if lo == hi else 'reversed'}: it needs low < high, got {grid_range!r}")
    step = (hi - lo) / grid_size
    outer = max(abs(lo - spline_order * step), abs(hi + spline_order * step))
    if not math.isfinite(hi - lo) or not outer <= MAX_ABS_COORDINATE:
        raise ValueError(f"grid_range is too wide: its knots must stay within +-{MAX_ABS_COORDINATE:g} (float32), got {grid_range!r}")
    if step <= 1e-6 * max(abs(lo), abs(hi)):
        raise ValueError(f"grid_range is too narrow for grid_size={grid_size}: float32 cannot tell its knots apart, got {grid_range!r}")
    return lo, hi


def check_widths(layers_hidden: Sequence[int], name: str = "layers_hidden") -> list[int]:
    """Validate a list of layer widths (input first, output last)."""
    try:
        widths = [int(w) for w in layers_hidden]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of positive integers, got {layers_hidden!r}") from None
    if len(widths) < 2 or any(w < 1 for w in widths) or any(w != v for w, v in zip(widths, layers_hidden)):
        raise ValueError(f"{name} must list at least two positive integer widths, got {list(layers_hidden)!r}")
    return widths


def check_regularization(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate penalty weights by name; missing names get weight 0."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"regularization must be a mapping of penalty weights, got {weights!r}")
    for name in weights:
        if name not in REGULARIZATION_TERMS:
            close = difflib.get_close_matches(str(name), REGULARIZATION_TERMS, n=1, cutoff=0.5)
            hint = f" (did you mean regularization.{close[0]}?)" if close else ""
            raise ValueError(
                f"regularization.{name} is an unknown regularization term{hint}; known: {', '.join(REGULARIZATION_TERMS)}"
            )
    checked = {}
    for name in REGULARIZATION_TERMS:
        value = weights.get(name, 0.0)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"regularization.{name} must be a number, got {value!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"regularization.{name} must be a finite number >= 0, got {value!r}")
        checked[name] = value
    return checked


class Widths:
    """``in_features`` and ``out_features`` of a model with a ``layers_hidden`` list."""

    layers_hidden: list[int]

    @property
    def in_features(self) -> int:
        return self.layers_hidden[0]

    @property
    def out_features(self) -> int:
        return self.layers_hidden[-1]


@dataclass
class SplineConfig:
    """The spline options of a :class:`~kan_lightning.nn.layer.KANLayer`.

    Attributes:
        grid_size: number of grid intervals ``G`` on ``grid_range``.
        spline_order: B-spline order ``k`` (3 = cubic); each edge has ``G + k`` coefficients.
        scale_noise: spread of the random initial spline coefficients (divided by ``G``).
        scale_base: gain of the Xavier-uniform initial base weights.
        scale_spline: initial value of the per-edge spline scale.
        base_activation: ``b(x)`` of the base branch: a name (``"silu"``), class or module.
        grid_eps: in :meth:`update_grid`, weight of the uniform grid against the data
            quantiles (1 = uniform, 0 = fully adaptive).
        basis: ``"fast"`` (only the ``k + 1`` non-zero bases) or ``"reference"`` (full
            Cox-de Boor recursion; for tests and benchmarks).
        extrapolate: the splines past the ends of the grid range. ``"bases"``: the B-spline
            bases continue over the ``k`` outer knots and vanish beyond (as in pykan; far
            outside only the base branch is left). ``"linear"``: each spline continues along
            its tangent at the nearest end. The outermost coefficients are barely constrained
            by data inside the range, so with ``"bases"`` a fine grid fitted to the training
            data can swing far just outside it, where some test points land.
        contraction: how the fast spline branch contracts (``basis="fast"``): ``"auto"`` (by
            shape; ``"fused"`` for large small-grid problems where a C++ compiler is found),
            ``"dense"``, ``"local"`` or ``"fused"`` (compiled on first use; fastest at small
            grids once compiled; see :mod:`~kan_lightning.nn.fused`).
    """

    grid_size: int = 5
    spline_order: int = 3
    grid_range: Sequence[float] = (-1.0, 1.0)
    scale_noise: float = 0.1
    scale_base: float = 1.0
    scale_spline: float = 1.0
    base_activation: str | type | nn.Module = "silu"
    grid_eps: float = 0.02
    basis: str = "fast"
    extrapolate: str = "bases"
    contraction: str = "auto"

    def __post_init__(self) -> None:
        self.grid_range = check_grid_args(self.grid_size, self.spline_order, self.grid_range)
        for name in ("scale_noise", "scale_base", "scale_spline"):
            check_finite(name, getattr(self, name))
        activation = self.base_activation
        if isinstance(activation, str) and activation.lower() not in ACTIVATIONS:
            raise ValueError(f"base_activation is not a known activation (known: {', '.join(sorted(ACTIVATIONS))}), got {activation!r}")
        if not (_is_number(self.grid_eps) and 0.0 <= self.grid_eps <= 1.0):
            raise ValueError(f"grid_eps must be a number >= 0 and <= 1, got {self.grid_eps!r}")
        check_choice("basis", self.basis, BASES)
        check_choice("extrapolate", self.extrapolate, EXTRAPOLATIONS)
        check_choice("contraction", self.contraction, CONTRACTIONS)

    def layer_options(self) -> dict[str, Any]:
        """The keyword arguments of a ``KANLayer`` with these options."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SplineConfig)}


@dataclass
class KANConfig(SplineConfig):
    """Everything a :class:`~kan_lightning.nn.network.KAN` is built from, e.g.
    ``KANConfig(layers_hidden=[2, 5, 1], grid_size=10)``."""

    layers_hidden: Sequence[int] = field(default=(), kw_only=True)
    regularization: Mapping[str, float] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        self.layers_hidden = check_widths(self.layers_hidden)
        super().__post_init__()
        self.regularization = check_regularization(self.regularization or {})

    def as_dict(self) -> dict[str, Any]:
        """Plain keyword arguments that rebuild the model (``KAN(**config.as_dict())``); an
        activation given as a class or module is left out (it has no name to save)."""
        out = {"layers_hidden": list(self.layers_hidden)}
        out.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "layers_hidden")
        out["grid_range"] = [float(v) for v in self.grid_range]
        out["regularization"] = dict(self.regularization)
        if not isinstance(self.base_activation, str):
            del out["base_activation"]
        return out


def signature_of(config_class: type, *first: str) -> inspect.Signature:
    """A constructor signature: the required parameters ``first``, then ``config_class``'s
    fields with their defaults, so that ``inspect.signature`` (and the config's key checks) see
    every option, and ``signature.bind(*args, **kwargs)`` maps a call onto them."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, kind) for name in first]
    for f in dataclasses.fields(config_class):
        if f.name not in first:
            default = f.default if f.default is not dataclasses.MISSING else None
            params.append(inspect.Parameter(f.name, kind, default=default, annotation=f.type))
    return inspect.Signature(params)
