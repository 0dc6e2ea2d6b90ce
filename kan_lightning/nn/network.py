"""KAN: a stack of KANLayers with grid update/extension and regularization."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from . import pruning
from . import regularization as reg
from .config import REGULARIZATION_TERMS, KANConfig, Widths, check_regularization, signature_of  # noqa: F401 (re-exported)
from .intervals import layer_bounds
from .layer import KANLayer


# how update_grid sizes the hidden layers' grids: the activations' range plus a margin, or
# interval bounds over the whole input box
HIDDEN_RANGES = ("margin", "interval")
# Interval bounds add up the edges' ranges layer after layer and grow far looser than where the
# activations go with depth (the special functions: 0.3-1.4 data spans past the data at depth
# 2, up to 10^4 at depth 6, where a 10^16-wide grid made a refit NaN). A hidden grid covers its
# bound only up to this many spans of the layer's data past the data on each side.
INTERVAL_MAX_SPANS = 2.0


class KAN(Widths, nn.Module):
    """A Kolmogorov-Arnold network, e.g. ``KAN([2, 20, 20, 1], grid_size=5, spline_order=3)``.

    The keyword arguments are the fields of :class:`~kan_lightning.nn.config.KANConfig`: the
    spline options are passed to each :class:`KANLayer`; ``regularization`` holds the default
    penalty weights (``l1``, ``entropy``, ``coef_l1``, ``coef_entropy``, ``smoothness``) used by
    :meth:`regularization_loss`; schedules may change them in place.
    """

    __signature__ = signature_of(KANConfig, "layers_hidden")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.hparams = KANConfig(**self.__signature__.bind(*args, **kwargs).arguments)
        self.layers_hidden = self.hparams.layers_hidden
        self.regularization = self.hparams.regularization
        self.layers = nn.ModuleList(
            KANLayer(w_in, w_out, **self.hparams.layer_options())
            for w_in, w_out in zip(self.layers_hidden[:-1], self.layers_hidden[1:])
        )

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model as it is now (``KAN(**model.config)``): the
        current grid size and penalty weights; an activation given as a class or module is left
        out."""
        return {**self.hparams.as_dict(), "grid_size": self.grid_size, "regularization": dict(self.regularization)}

    @property
    def grid_size(self) -> int:
        return self.layers[0].grid_size

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_with_edge_scales(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output and, per layer, every edge's mean ``|phi|`` over the batch ``(out, in)``.

        Costs one ``(N, out, in)`` tensor per layer: use it only when activation
        regularization is on.
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        scales = []
        for layer in self.layers:
            phi = layer.edge_activations(x)
            scales.append(phi.abs().mean(0))
            x = phi.sum(-1)
        return x.reshape(*shape[:-1], x.shape[-1]), scales

    def activations(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer, its inputs ``(N, in)`` and every edge's value ``(N, out, in)`` on them."""
        out = []
        x = x.reshape(-1, self.in_features)
        for layer in self.layers:
            phi = layer.edge_activations(x)
            out.append((x, phi))
            x = phi.sum(-1)
        return out

    @property
    def needs_edge_scales(self) -> bool:
        """Whether the current weights include activation-based terms."""
        return bool(self.regularization["l1"] or self.regularization["entropy"])

    def regularization_loss(
        self, edge_scales: Sequence[Tensor] | None = None, **weights: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of the penalties whose weight is non-zero, and each term unweighted.

        Weights default to ``self.regularization``; keyword arguments override them.
        ``l1`` and ``entropy`` need the ``edge_scales`` of :meth:`forward_with_edge_scales`.
        """
        weights = check_regularization({**self.regularization, **weights})
        if (weights["l1"] or weights["entropy"]) and edge_scales is None:
            raise ValueError("activation l1/entropy need edge_scales from forward_with_edge_scales()")
        compute = {
            "l1": lambda: reg.activation_l1(edge_scales),
            "entropy": lambda: reg.activation_entropy(edge_scales),
            "coef_l1": lambda: reg.coefficient_l1(self.layers),
            "coef_entropy": lambda: reg.coefficient_entropy(self.layers),
            "smoothness": lambda: reg.smoothness(self.layers),
        }
        terms = {name: compute[name]() for name, weight in weights.items() if weight}
        total = self.layers[0].spline_weight.new_zeros(())
        for name, value in terms.items():
            total = total + weights[name] * value
        return total, terms

    @torch.no_grad()
    def update_grid(
        self, x: Tensor, grid_eps: float | None = None, grid_size: int | None = None, *,
        keep_input_range: bool = False, margin: float = 0.0, hidden_range: str = "margin",
        smoothness: float = 0.0,
    ) -> None:
        """Adapt every layer's grid to the distribution of its inputs on ``x``, in order
        (optionally with ``grid_size`` intervals). ``keep_input_range``: the first layer's grid
        keeps covering its current range (e.g. the domain the inputs were scaled to). The
        other grids span, with ``hidden_range="margin"``, their inputs' range widened by
        ``margin`` intervals per side (:meth:`KANLayer.update_grid`); with ``"interval"``,
        interval bounds of their inputs over the first grid's whole range (the box of network
        inputs the first layer covers, propagated through the refitted layers before them,
        :mod:`.intervals`), so that no input from that box can leave a hidden grid, up to
        :data:`INTERVAL_MAX_SPANS` spans of the layer's inputs on ``x`` past them.
        ``smoothness``: the penalized refit of :meth:`KANLayer.update_grid`."""
        if hidden_range not in HIDDEN_RANGES:
            raise ValueError(f"hidden_range must be one of {HIDDEN_RANGES}, got {hidden_range!r}")
        x = x.reshape(-1, self.in_features)
        box = None
        for i, layer in enumerate(self.layers):
            if i == 0 or hidden_range == "margin":
                layer.update_grid(
                    x, grid_eps, grid_size, keep_range=keep_input_range and i == 0, margin=margin, smoothness=smoothness
                )
            else:
                box = _capped(box, x)
                layer.update_grid(x, grid_eps, grid_size, bounds=box, smoothness=smoothness)
            if hidden_range == "interval":
                if i == 0:
                    interior = layer.grid_interior()
                    box = (interior[:, 0], interior[:, -1])
                box = layer_bounds(layer, *box)
            x = layer(x)

    @torch.no_grad()
    def extend_grid(
        self,
        new_grid_size: int,
        x: Tensor | None = None,
        keep_input_range: bool = False,
        margin: float = 0.0,
        hidden_range: str = "margin",
        smoothness: float = 0.0,
    ) -> None:
        """Refine every layer's grid to ``new_grid_size`` intervals, keeping the functions.

        Without ``x`` each grid keeps its range and the splines are preserved there (exactly
        when the new grid contains the old knots). With ``x`` (pykan's ``refine``) each layer's
        new grid is fitted to its inputs on ``x``, which also preserves the functions where
        hidden activations have left the grid range; ``keep_input_range``, ``margin`` and
        ``hidden_range`` and ``smoothness`` as in :meth:`update_grid`.
        """
        if x is not None:
            self.update_grid(
                x, grid_size=new_grid_size, keep_input_range=keep_input_range, margin=margin,
                hidden_range=hidden_range, smoothness=smoothness,
            )
            return
        for layer in self.layers:
            layer.extend_grid(new_grid_size)

    # -- pruning ----------------------------------------------------------------------------

    def edge_scores(self, x: Tensor) -> list[Tensor]:
        """Per layer, each edge's mean ``|phi|`` on ``x`` (``(out, in)``; masked edges: 0)."""
        return pruning.edge_scores(self, x)

    def prune(self, x: Tensor, threshold: float = 1e-2) -> "KAN":
        """A new, smaller KAN without the hidden nodes whose incoming or outgoing score on ``x``
        is at most ``threshold`` (KAN paper: a node's score is the max mean ``|phi|`` of its
        edges on each side). Inputs and outputs are kept; this model is unchanged.
        See :mod:`kan_lightning.nn.pruning`."""
        return pruning.prune(self, x, threshold)

    def prune_edges(self, threshold: float = 1e-2, x: Tensor | None = None) -> int:
        """Mask the edges whose mean ``|phi|`` (on ``x``, or on the grid range without data) is
        at most ``threshold``, in place; returns how many edges were newly masked."""
        return pruning.prune_edges(self, threshold, x)


def _capped(box: tuple[Tensor, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``box`` limited to :data:`INTERVAL_MAX_SPANS` spans of ``x`` ``(N, in)`` past its range (a
    NaN or infinite bound, from overflow, becomes that limit)."""
    lo, hi = x.amin(0), x.amax(0)
    reach = INTERVAL_MAX_SPANS * (hi - lo)
    return torch.fmax(box[0].to(lo), lo - reach), torch.fmin(box[1].to(hi), hi + reach)

