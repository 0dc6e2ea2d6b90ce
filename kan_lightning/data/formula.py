"""A safe parser for user formulas such as ``"exp(sin(pi*x0)+x1**2)"``: it walks the Python AST
and turns whitelisted pieces into torch closures, so no user text is ever evaluated by Python.
:func:`~kan_lightning.data.functions.parse_formula` makes a target function from it."""

from __future__ import annotations

import ast
import functools
import math
import re
from typing import Callable

import torch
from torch import Tensor

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
        real = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if not real or not math.isfinite(float(node.value)):
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
def compile_formula(formula: str) -> tuple[Node, int]:
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
