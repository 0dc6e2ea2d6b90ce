"""Activation functions by name, so configs can say ``base_activation: silu``."""

from __future__ import annotations

from typing import Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def make_activation(activation: str | type | nn.Module) -> nn.Module:
    """An activation module from a name, a module class or a module instance."""
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return ACTIVATIONS[activation.lower()]()
    raise ValueError(f"unknown activation {activation!r}; known: {', '.join(sorted(ACTIVATIONS))}")
