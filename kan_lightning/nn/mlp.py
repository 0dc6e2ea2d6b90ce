"""The MLP baseline, built from the same ``layers_hidden`` list as a KAN."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .activations import make_activation
from .config import Widths, check_widths


class MLP(Widths, nn.Module):
    """``Linear -> activation`` blocks for every hidden width, and a final ``Linear``."""

    def __init__(self, layers_hidden: Sequence[int], activation: str = "silu", bias: bool = True) -> None:
        super().__init__()
        widths = check_widths(layers_hidden)
        self.layers_hidden = widths
        self.config = dict(layers_hidden=widths, activation=activation, bias=bias)
        blocks: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            blocks.append(nn.Linear(w_in, w_out, bias=bias))
            if i < len(widths) - 2:
                blocks.append(make_activation(activation))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MLP expects inputs of shape (..., {self.in_features}), got {tuple(x.shape)}")
        return self.net(x)
