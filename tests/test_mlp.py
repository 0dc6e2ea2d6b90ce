"""The MLP baseline."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from kan_lightning.nn import MLP


def test_shapes_and_structure() -> None:
    mlp = MLP([2, 8, 1])
    assert mlp.in_features == 2 and mlp.out_features == 1
    assert mlp(torch.randn(16, 2)).shape == (16, 1)
    assert mlp(torch.randn(3, 5, 2)).shape == (3, 5, 1)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 8), (8, 1)]
    assert isinstance(mlp.net[1], nn.SiLU)
    assert not isinstance(mlp.net[-1], nn.SiLU)  # no activation after the last layer
    assert mlp.config["layers_hidden"] == [2, 8, 1]


@pytest.mark.parametrize("widths", [[2, 8, 1], [3, 16, 16, 2], [5, 1]])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count(widths: list[int], bias: bool) -> None:
    mlp = MLP(widths, bias=bias)
    expected = sum(a * b + (b if bias else 0) for a, b in zip(widths[:-1], widths[1:]))
    assert sum(p.numel() for p in mlp.parameters()) == expected


def test_activation_choice_and_gradients() -> None:
    mlp = MLP([2, 4, 4, 1], activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in mlp.modules()) == 2
    x = torch.randn(8, 2)
    mlp(x).sum().backward()
    assert all(p.grad is not None for p in mlp.parameters())


def test_wrong_width_raises() -> None:
    mlp = MLP([2, 8, 1])
    with pytest.raises(ValueError, match=re.escape("(10, 3)")) as info:
        mlp(torch.randn(10, 3))
    assert "2" in str(info.value)


@pytest.mark.parametrize("widths", [[2], [], [2, 0, 1], [2, -1], [2, 2.5, 1]])
def test_bad_widths_raise(widths) -> None:
    with pytest.raises(ValueError):
        MLP(widths)


def test_unknown_activation_raises() -> None:
    with pytest.raises(ValueError, match="swishy"):
        MLP([2, 3, 1], activation="swishy")
