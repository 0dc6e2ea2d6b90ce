"""KAN: a stack of KANLayers with grid update/extension and regularization."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import regularization as reg
from .intervals import layer_bounds
from .layer import KANLayer


def check_widths(layers_hidden: Sequence[int], name: str = "layers_hidden") -> list[int]:
    """Validate a list of layer widths (input first, output last)."""
    try:
        widths = [int(w) for w in layers_hidden]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of positive integers, got {layers_hidden!r}") from None
    if len(widths) < 2 or any(w < 1 for w in widths) or any(w != v for w, v in zip(widths, layers_hidden)):
        raise ValueError(f"{name} must list at least two positive integer widths, got {list(layers_hidden)!r}")
    return widths


# how update_grid sizes the hidden layers' grids: the activations' range plus a margin, or
# interval bounds over the whole input box
HIDDEN_RANGES = ("margin", "interval")

REGULARIZATION_TERMS = ("l1", "entropy", "coef_l1", "coef_entropy", "smoothness")


def check_regularization(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate penalty weights by name; missing names get weight 0."""
    unknown = sorted(set(weights) - set(REGULARIZATION_TERMS))
    if unknown:
        raise ValueError(f"unknown regularization term(s) {unknown}; known: {', '.join(REGULARIZATION_TERMS)}")
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


class KAN(nn.Module):
    """A Kolmogorov-Arnold network, e.g. ``KAN([2, 20, 20, 1], grid_size=5, spline_order=3)``.

    The spline keyword arguments are passed to each :class:`KANLayer`. ``regularization`` holds
    the default penalty weights (``l1``, ``entropy``, ``coef_l1``, ``coef_entropy``,
    ``smoothness``) used by :meth:`regularization_loss`; schedules may change them in place.
    """

    def __init__(
        self,
        layers_hidden: Sequence[int],
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: Sequence[float] = (-1.0, 1.0),
        scale_noise: float = 0.1,
        scale_base: float = 1.0,
        scale_spline: float = 1.0,
        base_activation: str | type | nn.Module = "silu",
        grid_eps: float = 0.02,
        basis: str = "fast",
        extrapolate: str = "bases",
        regularization: Mapping[str, float] | None = None,
        contraction: str = "auto",
    ) -> None:
        super().__init__()
        widths = check_widths(layers_hidden)
        self.regularization = check_regularization(regularization or {})
        self.layers_hidden = widths
        self.layers = nn.ModuleList(
            KANLayer(
                w_in,
                w_out,
                grid_size=grid_size,
                spline_order=spline_order,
                grid_range=tuple(grid_range),
                scale_noise=scale_noise,
                scale_base=scale_base,
                scale_spline=scale_spline,
                base_activation=base_activation,
                grid_eps=grid_eps,
                basis=basis,
                extrapolate=extrapolate,
                contraction=contraction,
            )
            for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        activation = base_activation if isinstance(base_activation, str) else None
        self.config: dict[str, Any] = dict(
            layers_hidden=widths,
            grid_size=grid_size,
            spline_order=spline_order,
            grid_range=[float(v) for v in grid_range],
            scale_noise=scale_noise,
            scale_base=scale_base,
            scale_spline=scale_spline,
            grid_eps=grid_eps,
            basis=basis,
            extrapolate=extrapolate,
            regularization=self.regularization,
            contraction=contraction,
            **({"base_activation": activation} if activation else {}),
        )

    @property
    def in_features(self) -> int:
        return self.layers_hidden[0]

    @property
    def out_features(self) -> int:
        return self.layers_hidden[-1]

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
        self,
        x: Tensor,
        grid_eps: float | None = None,
        grid_size: int | None = None,
        keep_input_range: bool = False,
        margin: float = 0.0,
        hidden_range: str = "margin",
    ) -> None:
        """Adapt every layer's grid to the distribution of its inputs on ``x``, in order
        (optionally with ``grid_size`` intervals). ``keep_input_range``: the first layer's grid
        keeps covering its current range (e.g. the domain the inputs were scaled to). The
        other grids span, with ``hidden_range="margin"``, their inputs' range widened by
        ``margin`` intervals per side (:meth:`KANLayer.update_grid`); with ``"interval"``,
        interval bounds of their inputs over the first grid's whole range (the box of network
        inputs the first layer covers, propagated through the refitted layers before them,
        :mod:`.intervals`), so that no input from that box can leave a hidden grid."""
        if hidden_range not in HIDDEN_RANGES:
            raise ValueError(f"hidden_range must be one of {HIDDEN_RANGES}, got {hidden_range!r}")
        x = x.reshape(-1, self.in_features)
        box = None
        for i, layer in enumerate(self.layers):
            if i == 0 or hidden_range == "margin":
                layer.update_grid(x, grid_eps, grid_size, keep_range=keep_input_range and i == 0, margin=margin)
            else:
                layer.update_grid(x, grid_eps, grid_size, bounds=box)
            if hidden_range == "interval":
                if i == 0:
                    interior = layer.grid_interior()
                    box = (interior[:, 0], interior[:, -1])
                box = layer_bounds(layer, *box)
            x = layer(x)
        self.config["grid_size"] = self.grid_size

    @torch.no_grad()
    def extend_grid(
        self,
        new_grid_size: int,
        x: Tensor | None = None,
        keep_input_range: bool = False,
        margin: float = 0.0,
        hidden_range: str = "margin",
    ) -> None:
        """Refine every layer's grid to ``new_grid_size`` intervals, keeping the functions.

        Without ``x`` each grid keeps its range and the splines are preserved there (exactly
        when the new grid contains the old knots). With ``x`` (pykan's ``refine``) each layer's
        new grid is fitted to its inputs on ``x``, which also preserves the functions where
        hidden activations have left the grid range; ``keep_input_range``, ``margin`` and
        ``hidden_range`` as in :meth:`update_grid`.
        """
        if x is not None:
            self.update_grid(
                x, grid_size=new_grid_size, keep_input_range=keep_input_range, margin=margin, hidden_range=hidden_range
            )
            return
        for layer in self.layers:
            layer.extend_grid(new_grid_size)
        self.config["grid_size"] = new_grid_size

    # -- pruning ----------------------------------------------------------------------------

    def edge_scores(self, x: Tensor) -> list[Tensor]:
        """Per layer, each edge's mean ``|phi|`` on ``x`` (``(out, in)``; masked edges: 0)."""
        from .pruning import edge_scores

        return edge_scores(self, x)

    def prune(self, x: Tensor, threshold: float = 1e-2) -> "KAN":
        """A new, smaller KAN without the hidden nodes whose incoming or outgoing score on ``x``
        is at most ``threshold`` (KAN paper: a node's score is the max mean ``|phi|`` of its
        edges on each side). Inputs and outputs are kept; this model is unchanged.
        See :mod:`kan_lightning.nn.pruning`."""
        from .pruning import prune

        return prune(self, x, threshold)

    def prune_edges(self, threshold: float = 1e-2, x: Tensor | None = None) -> int:
        """Mask the edges whose mean ``|phi|`` (on ``x``, or on the grid range without data) is
        at most ``threshold``, in place; returns how many edges were newly masked."""
        from .pruning import prune_edges

        return prune_edges(self, threshold, x)
