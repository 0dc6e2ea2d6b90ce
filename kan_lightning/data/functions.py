"""Target functions for synthetic regression, and a safe parser for user formulas.

A target maps inputs ``x`` of shape ``(N, d)`` to outputs of shape ``(N, 1)``. Named targets live
in :data:`FUNCTIONS`; user formulas such as ``"exp(sin(pi*x0)+x1**2)"`` are turned into targets by
:func:`parse_formula`, which walks the Python AST and only ever calls whitelisted torch functions.
"""

from __future__ import annotations

import ast
import functools
import math
import numbers
import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

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


# ---------------------------------------------------------------------------------------------
# Formula parser

# Each compiled node is a callable x -> Tensor (0-d for constants), so torch broadcasting does the
# rest and no user text is ever evaluated by Python itself.
Node = Callable[[Tensor], Tensor]

_FUNCTIONS_1: dict[str, Callable[[Tensor], Tensor]] = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "tanh": torch.tanh,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "arcsin": torch.asin,
    "arccos": torch.acos,
    "arctan": torch.atan,
    "arcsinh": torch.asinh,
    "arccosh": torch.acosh,
    "arctanh": torch.atanh,
    # the usual math names beside numpy's
    "asin": torch.asin,
    "acos": torch.acos,
    "atan": torch.atan,
    "asinh": torch.asinh,
    "acosh": torch.acosh,
    "atanh": torch.atanh,
    "ln": torch.log,
    "sigmoid": torch.sigmoid,
    "sign": torch.sign,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "besselj0": torch.special.bessel_j0,
    "erf": torch.erf,
}
_FUNCTIONS_2: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "min": torch.minimum,
    "max": torch.maximum,
    "pow": torch.pow,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY_OPS: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    ast.Add: torch.add,
    ast.Sub: torch.sub,
    ast.Mult: torch.mul,
    ast.Div: torch.div,
    ast.Pow: torch.pow,
    ast.BitXor: torch.pow,  # "^" reads as power in a math formula
}
_UNARY_OPS: dict[type, Callable[[Tensor], Tensor]] = {
    ast.USub: torch.neg,
    ast.UAdd: lambda t: t,
}
# A formula's inputs are columns of one tensor: more than this is a typo, not a dataset.
MAX_FORMULA_VARIABLES = 10_000
_VARIABLE = re.compile(r"x(0|[1-9][0-9]*)")


class _Source:
    """The formula as parsed, with a map from parsed columns back to the user's columns.

    ``^`` becomes ``**`` before parsing so that it also gets the precedence of a power
    (Python would read ``x0^2+1`` as ``x0^(2+1)``); messages still quote the user's own text.
    """

    def __init__(self, formula: str) -> None:
        self.formula = formula
        flat = re.sub(r"\s", " ", formula)  # one line, same columns
        lead = len(flat) - len(flat.lstrip())
        parsed, origin = [], []
        for i, char in enumerate(flat.strip(), start=lead):
            parsed.append("**" if char == "^" else char)
            origin.extend([i] * len(parsed[-1]))
        origin.append(lead + len(flat.strip()))
        self.parsed = "".join(parsed)
        self.origin = origin

    def column(self, parsed_offset: int | None) -> int:
        """1-based column in the user's formula, like Python's own syntax errors."""
        offset = min(max(parsed_offset or 0, 0), len(self.origin) - 1)
        return self.origin[offset] + 1

    def where(self, node: ast.AST) -> str:
        return f"at column {self.column(getattr(node, 'col_offset', 0))}"

    def text(self, node: ast.AST) -> str:
        start = getattr(node, "col_offset", None)
        end = getattr(node, "end_col_offset", None)
        if start is None or end is None:
            return type(node).__name__
        return self.formula[self.column(start) - 1 : self.column(end) - 1]


def _allowed_names() -> str:
    return ", ".join(sorted([*_FUNCTIONS_1, *_FUNCTIONS_2]))


class _Compiler:
    """Turns a whitelisted expression AST into a tree of torch closures."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.max_index = -1

    def _reject(self, what: str, node: ast.AST, hint: str = "") -> ValueError:
        piece = self.source.text(node)
        return ValueError(f"{what} {piece!r} is not allowed {self.source.where(node)}{hint}")

    def compile(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            raise self._reject("attribute access", node)
        if isinstance(node, ast.Subscript):
            raise self._reject("subscript", node)
        raise self._reject(f"expression ({type(node).__name__})", node)

    def _constant(self, node: ast.Constant) -> Node:
        if not _is_number(node.value) or not math.isfinite(float(node.value)):
            raise self._reject("constant", node, "; only finite real numbers")
        value = float(node.value)
        return lambda x: _scalar(value, x)

    def _name(self, node: ast.Name) -> Node:
        if node.id in _CONSTANTS:
            value = _CONSTANTS[node.id]
            return lambda x: _scalar(value, x)
        match = _VARIABLE.fullmatch(node.id)
        if match is None:
            raise ValueError(
                f"unknown name {node.id!r} {self.source.where(node)}; use variables x0, x1, ... "
                "and constants pi, e"
            )
        index = int(match.group(1))
        if index >= MAX_FORMULA_VARIABLES:
            raise ValueError(
                f"variable {node.id!r} {self.source.where(node)} is out of range: formulas use "
                f"x0 ... x{MAX_FORMULA_VARIABLES - 1}"
            )
        self.max_index = max(self.max_index, index)
        return lambda x: x[:, index]

    def _binary(self, node: ast.BinOp) -> Node:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise self._reject(f"operator {type(node.op).__name__} in", node)
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda x: op(left(x), right(x))

    def _unary(self, node: ast.UnaryOp) -> Node:
        op = _UNARY_OPS.get(type(node.op))
        if op is None:
            raise self._reject(f"operator {type(node.op).__name__} in", node)
        operand = self.compile(node.operand)
        return lambda x: op(operand(x))

    def _call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name):
            hint = f"; call functions by bare name: {_allowed_names()}"
            raise self._reject("call of", node.func, hint)
        if node.keywords:
            raise self._reject("keyword argument", node.keywords[0])
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self._reject("starred argument", arg)
        name = node.func.id
        if name in _FUNCTIONS_1:
            return self._call_with(node, name, 1, _FUNCTIONS_1[name])
        if name in _FUNCTIONS_2:
            return self._call_with(node, name, 2, _FUNCTIONS_2[name])
        raise ValueError(
            f"unknown function {name!r} {self.source.where(node)}; allowed functions: "
            f"{_allowed_names()}"
        )

    def _call_with(self, node: ast.Call, name: str, arity: int, fn: Callable) -> Node:
        if len(node.args) != arity:
            raise ValueError(
                f"function {name!r} takes {arity} argument(s), got {len(node.args)} "
                f"{self.source.where(node)}"
            )
        args = [self.compile(arg) for arg in node.args]
        return lambda x: fn(*(arg(x) for arg in args))


def _scalar(value: float, x: Tensor) -> Tensor:
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.tensor(value, dtype=dtype, device=x.device)


@functools.lru_cache(maxsize=64)
def _compile(formula: str) -> tuple[Node, int]:
    """The torch closure for ``formula`` and how many variables it needs (parsed once: a run
    checks its config, then builds its data from the same formula)."""
    if not isinstance(formula, str):
        raise ValueError(f"formula must be a string, got {formula!r}")
    source = _Source(formula)
    try:
        tree = ast.parse(source.parsed, mode="eval").body
        compiler = _Compiler(source)
        root = compiler.compile(tree)
    except SyntaxError as err:
        column = source.column((err.offset or 1) - 1)
        raise ValueError(
            f"invalid syntax in formula {formula!r} at column {column}: {err.msg}"
        ) from None
    except (RecursionError, MemoryError):
        raise ValueError(f"formula {formula[:40]!r}... is nested too deeply") from None
    return root, compiler.max_index + 1


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
        root, needed = _compile(formula)
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
