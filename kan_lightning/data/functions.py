"""Target functions for synthetic regression: named ones and user formulas.

A target maps inputs ``x`` of shape ``(N, d)`` to outputs of shape ``(N, 1)``. Named targets live
in :data:`FUNCTIONS`; user formulas such as ``"exp(sin(pi*x0)+x1**2)"`` are turned into targets by
:func:`parse_formula`, through the safe parser of :mod:`kan_lightning.data.formula`, which only
ever calls whitelisted torch functions.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

from kan_lightning.data.formula import compile_formula
from kan_lightning.nn.config import MAX_ABS_COORDINATE  # the inputs are float32 too

Domain = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class TargetFunction:
    """A scalar function of ``input_dim`` variables, sampled on the box ``domain``."""

    name: str
    fn: Callable[[Tensor], Tensor]
    input_dim: int
    domain: Domain
    description: str

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"target {self.name!r} expects inputs of shape (N, {self.input_dim}), "
                f"got {tuple(x.shape)}"
            )
        return self.fn(x)


# ---------------------------------------------------------------------------------------------
# Domains


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_pair(pair: object) -> tuple[float, float]:
    try:
        values = list(pair)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"domain entry {pair!r} is not a pair [low, high]") from None
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ValueError(f"domain entry {values!r} is not a pair of numbers [low, high]")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"domain entry {values!r} must be finite")
    if low >= high:
        raise ValueError(f"domain entry {values!r} needs low < high")
    if max(abs(low), abs(high)) > MAX_ABS_COORDINATE or not math.isfinite(high - low):
        raise ValueError(f"domain entry {values!r} is too wide: the inputs are float32, keep |bounds| <= {MAX_ABS_COORDINATE:g}")
    return low, high


def validate_domain(domain: object, input_dim: int) -> Domain:
    """Return the domain as ``input_dim`` (low, high) pairs.

    ``None`` means [-1, 1] in every dimension; a single pair is used for every dimension; a list
    of pairs must have one pair per dimension.
    """
    if domain is None:
        return ((-1.0, 1.0),) * input_dim
    if isinstance(domain, (str, bytes)):
        raise ValueError(f"domain {domain!r} must be a pair or a list of pairs, not a string")
    try:
        entries = list(domain)  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"domain {domain!r} must be a pair or a list of pairs") from None
    if len(entries) == 2 and all(_is_number(v) for v in entries):
        return (_check_pair(entries),) * input_dim
    if len(entries) != input_dim:
        raise ValueError(
            f"domain {_plain(entries)!r} has {len(entries)} pairs but the input dimension is "
            f"{input_dim}"
        )
    return tuple(_check_pair(entry) for entry in entries)


def _plain(value: object) -> object:
    """Nested lists of plain values, so that messages read well for OmegaConf containers too."""
    if isinstance(value, (str, bytes)) or _is_number(value):
        return value
    try:
        return [_plain(v) for v in value]  # type: ignore[union-attr]
    except TypeError:
        return value


# ---------------------------------------------------------------------------------------------
# Built-in targets


def _column(y: Tensor) -> Tensor:
    return y.reshape(-1, 1)


def _polynomial(x: Tensor) -> Tensor:
    return _column(x[:, 0] ** 3 + 2 * x[:, 1] ** 2 - x[:, 0] * x[:, 1])


def _trigonometric(x: Tensor) -> Tensor:
    return _column(torch.sin(x[:, 0]) * torch.cos(x[:, 1]))


def _exponential(x: Tensor) -> Tensor:
    return _column(torch.exp(-x[:, 0] ** 2 - x[:, 1] ** 2))


def _discontinuous(x: Tensor) -> Tensor:
    return _column(torch.sign(x[:, 0]) * torch.abs(x[:, 1]))


def _high_frequency(x: Tensor) -> Tensor:
    return _column(torch.sin(10 * x[:, 0]) * torch.sin(10 * x[:, 1]))


def _guide_example(x: Tensor) -> Tensor:
    return _column(torch.sin(x[:, 0]) * torch.exp(-x[:, 1] ** 2))


def _paper_exp_sin(x: Tensor) -> Tensor:
    return _column(torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2))


def _product(x: Tensor) -> Tensor:
    return _column(x[:, 0] * x[:, 1])


def _high_dim_mean_sin2(x: Tensor) -> Tensor:
    return _column(torch.exp(torch.sin(math.pi * x / 2).pow(2).mean(dim=1)))


def _bessel(x: Tensor) -> Tensor:
    return _column(torch.special.bessel_j0(20 * x[:, 0]))


def _register(
    name: str, fn: Callable[[Tensor], Tensor], input_dim: int, low: float, high: float, desc: str
) -> TargetFunction:
    return TargetFunction(name, fn, input_dim, ((low, high),) * input_dim, desc)


FUNCTIONS: dict[str, TargetFunction] = {
    t.name: t
    for t in [
        _register("polynomial", _polynomial, 2, -2, 2, "x0^3 + 2 x1^2 - x0 x1"),
        _register("trigonometric", _trigonometric, 2, -2, 2, "sin(x0) cos(x1)"),
        _register("exponential", _exponential, 2, -2, 2, "exp(-x0^2 - x1^2)"),
        _register("discontinuous", _discontinuous, 2, -2, 2, "sign(x0) |x1|"),
        _register("high_frequency", _high_frequency, 2, -2, 2, "sin(10 x0) sin(10 x1)"),
        _register("guide_example", _guide_example, 2, -2, 2, "sin(x0) exp(-x1^2)"),
        _register("paper_exp_sin", _paper_exp_sin, 2, -1, 1, "exp(sin(pi x0) + x1^2)"),
        _register("product", _product, 2, -1, 1, "x0 x1"),
        _register(
            "high_dim_100", _high_dim_mean_sin2, 100, -1, 1, "exp(mean_i sin^2(pi x_i / 2)), 100-D"
        ),
        _register("bessel", _bessel, 1, -1, 1, "Bessel J0(20 x0)"),
    ]
}


def get_function(name: str) -> TargetFunction:
    """Look up a built-in target by name."""
    try:
        return FUNCTIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(FUNCTIONS))
        raise ValueError(f"unknown function {name!r}; known functions: {known}") from None


def parse_formula(
    formula: str,
    input_dim: int | None = None,
    domain: object = None,
    name: str = "formula",
) -> TargetFunction:
    """Compile a formula such as ``"exp(sin(pi*x0)+x1**2)"`` into a :class:`TargetFunction`.

    Variables are ``x0, x1, ...``; the input dimension defaults to one more than the highest
    variable index. Only numbers, ``pi``, ``e``, ``+ - * / ** ^``, unary signs and whitelisted
    functions called by bare name are accepted; anything else raises ``ValueError`` naming the
    offending piece and its (1-based) column.
    """
    try:
        root, needed = compile_formula(formula)
    except TypeError:  # unhashable: not a string
        raise ValueError(f"formula must be a string, got {formula!r}") from None
    except ValueError as err:
        raise ValueError(f"formula={formula!r} cannot be used: {err}") from None
    if input_dim is None:
        if needed == 0:
            raise ValueError(
                f"formula {formula!r} uses no variables; give input_dim to use a constant"
            )
        input_dim = needed
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}")
    if input_dim < needed:
        raise ValueError(
            f"input_dim={input_dim} is too small for formula {formula!r}, which uses "
            f"x{needed - 1} (needs input_dim >= {needed})"
        )

    def fn(x: Tensor) -> Tensor:
        # A constant formula yields a 0-d tensor; broadcast it to one value per row.
        out = root(x)
        return torch.broadcast_to(out, (x.shape[0],)).reshape(-1, 1).clone()

    return TargetFunction(name, fn, input_dim, validate_domain(domain, input_dim), formula)


def resolve_target(
    function: str | None = None,
    formula: str | None = None,
    input_dim: int | None = None,
    domain: object = None,
) -> TargetFunction:
    """Build the target from exactly one of a registered ``function`` name or a ``formula``."""
    if function is None and formula is None:
        raise ValueError("function and formula are both null: give exactly one, e.g. function=polynomial or formula='x0*x1'")
    if (function is None) == (formula is None):
        raise ValueError(
            f"give exactly one of function or formula, got function={function!r}, "
            f"formula={formula!r}"
        )
    if formula is not None:
        return parse_formula(formula, input_dim=input_dim, domain=domain)
    target = get_function(function)  # type: ignore[arg-type]
    if input_dim is not None and input_dim != target.input_dim:
        raise ValueError(
            f"input_dim={input_dim!r} does not match function {function!r}, which has "
            f"input_dim {target.input_dim}"
        )
    if domain is None:
        return target
    return replace(target, domain=validate_domain(domain, target.input_dim))


def domain_bounds(domain: Sequence[Sequence[float]]) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of a domain as float32 tensors of shape (d,)."""
    low = torch.tensor([float(a) for a, _ in domain], dtype=torch.float32)
    high = torch.tensor([float(b) for _, b in domain], dtype=torch.float32)
    return low, high
