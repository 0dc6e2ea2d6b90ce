"""HybridKAN: a KAN encoder followed by self-attention (the guide's hybrid KAN + attention)."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from .config import Widths, check_count, check_widths
from .network import KAN


class HybridKAN(Widths, nn.Module):
    """``layers_hidden = [in, hidden..., out]``: a KAN ``[in, hidden..., tokens * embed_dim]``
    encodes each sample into ``tokens`` tokens of size ``embed_dim``; multi-head self-attention
    (with a residual connection and layer norm) mixes them; the mean token goes through a linear
    head to ``out``. Grid updates and regularization act on the KAN encoder.

    Extra keyword arguments are passed to the encoder :class:`KAN` (grid size, order, ...).
    """

    def __init__(
        self,
        layers_hidden: Sequence[int],
        tokens: int = 4,
        embed_dim: int = 8,
        num_heads: int = 2,
        dropout: float = 0.0,
        **kan_kwargs: Any,
    ) -> None:
        super().__init__()
        widths = check_widths(layers_hidden)
        for name, value in (("tokens", tokens), ("embed_dim", embed_dim), ("num_heads", num_heads)):
            check_count(name, value, 1)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.layers_hidden = widths
        self.tokens, self.embed_dim = tokens, embed_dim
        self.encoder = KAN([*widths[:-1], tokens * embed_dim], **kan_kwargs)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, widths[-1])
        self.attention_options = dict(tokens=tokens, embed_dim=embed_dim, num_heads=num_heads, dropout=dropout)

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model as it is now (the encoder's current grid)."""
        return {**self.encoder.config, "layers_hidden": self.layers_hidden, **self.attention_options}

    @property
    def regularization(self) -> dict[str, float]:
        return self.encoder.regularization

    @property
    def needs_edge_scales(self) -> bool:
        return self.encoder.needs_edge_scales

    def _attend(self, features: Tensor) -> Tensor:
        tokens = features.reshape(-1, self.tokens, self.embed_dim)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        pooled = self.norm(tokens + mixed).mean(dim=1)
        return self.head(pooled).reshape(*features.shape[:-1], self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self._attend(self.encoder(x))

    def forward_with_edge_scales(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features, scales = self.encoder.forward_with_edge_scales(x)
        return self._attend(features), scales

    def regularization_loss(self, edge_scales=None, **weights: float):
        return self.encoder.regularization_loss(edge_scales, **weights)

    def update_grid(self, x: Tensor, grid_eps: float | None = None, grid_size: int | None = None) -> None:
        self.encoder.update_grid(x, grid_eps, grid_size)
