"""Matplotlib figures of a KAN: every edge function of a layer, and the network diagram of the
KAN paper (nodes per layer, each edge drawn as a small plot of its function, faded by its
importance).

Figures are plain :class:`matplotlib.figure.Figure` objects on the Agg canvas: no pyplot, no
global backend switch, never a window. Save them with :func:`save_figure` or turn them into an
RGB array (for TensorBoard) with :func:`figure_to_array`. Only ``kan_lightning.nn``-style
models are read (``model.layers``, ``layer.edge_activations``, ``layer.mask``).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

EdgeKey = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Helpers


def new_figure(figsize: tuple[float, float] = (6.0, 4.0), dpi: int = 100, **kwargs) -> Figure:
    """A figure on its own Agg canvas."""
    fig = Figure(figsize=figsize, dpi=dpi, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an ``(H, W, 3)`` uint8 RGB array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path, dpi: int | None = None) -> Path:
    """Write ``fig`` (PNG, PDF, SVG... by the suffix), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi or fig.dpi, facecolor="white")
    return path


def _layer_inputs(layer: torch.nn.Module, x: Tensor | np.ndarray) -> Tensor:
    param = layer.spline_weight
    return torch.as_tensor(x).to(device=param.device, dtype=param.dtype).reshape(-1, layer.in_features)


@torch.no_grad()
def _dense_curves(layer: torch.nn.Module, x_in: Tensor, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Each input's range sampled densely ``(n, in)`` and every edge on it ``(n, out, in)``."""
    lo, hi = x_in.min(0).values, x_in.max(0).values
    hi = torch.where(hi > lo, hi, lo + 1e-6)
    steps = torch.linspace(0, 1, n_points, dtype=x_in.dtype, device=x_in.device)[:, None]
    dense = lo + (hi - lo) * steps
    return dense.cpu().double().numpy(), layer.edge_activations(dense).cpu().double().numpy()


@torch.no_grad()
def edge_importance(model: torch.nn.Module, x: Tensor | np.ndarray) -> list[np.ndarray]:
    """Per layer, each edge's mean ``|phi|`` on ``x`` divided by the layer's largest: ``(out, in)``
    in ``[0, 1]`` (masked edges are 0)."""
    param = next(model.parameters())
    x = torch.as_tensor(x).to(device=param.device, dtype=param.dtype).reshape(-1, model.layers[0].in_features)
    scores = []
    for layer in model.layers:
        phi = layer.edge_activations(x)
        score = phi.abs().mean(0).cpu().double().numpy()
        top = score.max()
        scores.append(score / top if top > 0 else score)
        x = phi.sum(-1)
    return scores


def _subsample(n: int, max_points: int) -> np.ndarray:
    return np.arange(n) if n <= max_points else np.linspace(0, n - 1, max_points).round().astype(int)


# ---------------------------------------------------------------------------------------------
# One layer


@torch.no_grad()
def plot_layer_edges(
    layer: torch.nn.Module,
    x_in: Tensor | np.ndarray,
    n_points: int = 200,
    max_scatter: int = 500,
    fits: Mapping[tuple[int, int], object] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    title: str | None = None,
    panel_size: float = 2.0,
) -> Figure:
    """A grid of ``out x in`` subplots, one per edge ``phi_{j,i}`` (row ``j``, column ``i``):
    the layer's actual inputs ``x_in`` (``(N, in)``) as a scatter and the function on a dense
    grid over their range. ``fits`` (``{(j, i): SymbolicEdge}``) are overlaid dashed. Masked
    (pruned) edges are drawn empty and labelled."""
    x_in = _layer_inputs(layer, x_in)
    n_out, n_in = layer.out_features, layer.in_features
    input_names = list(input_names or [f"x{i}" for i in range(n_in)])
    output_names = list(output_names or [f"y{j}" for j in range(n_out)])
    phi = layer.edge_activations(x_in).cpu().double().numpy()
    xs = x_in.cpu().double().numpy()
    dense_x, dense_phi = _dense_curves(layer, x_in, n_points)
    mask = layer.mask.detach().cpu().numpy()
    keep = _subsample(xs.shape[0], max_scatter)
    fig = new_figure((panel_size * n_in + 0.5, panel_size * 0.8 * n_out + (0.5 if title else 0.2)), layout="constrained")
    axes = fig.subplots(n_out, n_in, squeeze=False)
    for j in range(n_out):
        for i in range(n_in):
            ax = axes[j][i]
            ax.tick_params(labelsize=7)
            if mask[j, i] == 0:
                ax.text(0.5, 0.5, "pruned", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.scatter(xs[keep, i], phi[keep, j, i], s=4, color="tab:blue", alpha=0.35, linewidths=0)
                ax.plot(dense_x[:, i], dense_phi[:, j, i], color="black", lw=1.2)
                fit = (fits or {}).get((j, i))
                if fit is not None:
                    ax.plot(dense_x[:, i], fit(dense_x[:, i]), color="tab:red", lw=1.0, ls="--", label=fit.name)
                    ax.legend(fontsize=6, loc="best", frameon=False)
            ax.set_title(f"{output_names[j]} <- {input_names[i]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# The network diagram


@torch.no_grad()
def plot_network(
    model: torch.nn.Module,
    x: Tensor | np.ndarray,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    fits: Mapping[EdgeKey, object] | None = None,
    n_points: int = 100,
    max_insets: int = 64,
    min_alpha: float = 0.08,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Figure:
    """The network as in the KAN paper's figures.

    Nodes sit in rows (inputs at the bottom). Between two rows every live edge of the layer is
    drawn as a small inset plot of its function over the range of its inputs on ``x``, joined
    by lines to its input and output node; lines and curves fade with the edge's importance
    (mean ``|phi|`` on ``x``, normalized per layer, see :func:`edge_importance`). Layers with
    more than ``max_insets`` edges are drawn as plain lines. ``fits`` (``{(l, j, i):
    SymbolicEdge}``) label the insets with the fitted function's name. Masked (pruned) edges
    are not drawn. The figure has one main axes plus one axes per inset.
    """
    param = next(model.parameters())
    x = torch.as_tensor(x).to(device=param.device, dtype=param.dtype).reshape(-1, model.layers[0].in_features)
    widths = [model.layers[0].in_features] + [layer.out_features for layer in model.layers]
    n_layers = len(model.layers)
    input_names = list(input_names or [f"x{i}" for i in range(widths[0])])
    output_names = list(output_names or (["y"] if widths[-1] == 1 else [f"y{j}" for j in range(widths[-1])]))
    importance = edge_importance(model, x)

    # Per layer: its inputs on x, dense curves over their ranges, the live edges.
    layers = []
    h = x
    for layer in model.layers:
        dense_x, dense_phi = _dense_curves(layer, h, n_points)
        mask = layer.mask.detach().cpu().numpy()
        edges = [(i, j) for i in range(layer.in_features) for j in range(layer.out_features) if mask[j, i] != 0]
        layers.append((dense_x, dense_phi, edges))
        h = layer(h)

    row_edges = max(len(edges) for _, _, edges in layers)
    if figsize is None:
        width = min(16.0, max(4.0, 0.85 * min(row_edges, max_insets) + 1.5, 0.6 * max(widths) + 1.5))
        height = min(14.0, max(3.0, 2.2 * n_layers + 0.8))
        figsize = (width, height)
    fig = new_figure(figsize, dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")

    top_margin = 0.15 if title else 0.08
    bottom_margin = 0.08
    levels = np.linspace(bottom_margin, 1 - top_margin, n_layers + 1)
    gap = levels[1] - levels[0]

    def node_x(n: int) -> np.ndarray:
        return 0.05 + 0.9 * (np.arange(n) + 0.5) / n

    for l in range(n_layers + 1):
        ax.scatter(node_x(widths[l]), np.full(widths[l], levels[l]), s=60, color="black", zorder=3)
    for name, px in zip(input_names, node_x(widths[0])):
        ax.text(px, levels[0] - 0.035, name, ha="center", va="top", fontsize=11)
    for name, px in zip(output_names, node_x(widths[-1])):
        ax.text(px, levels[-1] + 0.035, name, ha="center", va="bottom", fontsize=11)

    for l, (dense_x, dense_phi, edges) in enumerate(layers):
        x_in, x_out = node_x(widths[l]), node_x(widths[l + 1])
        y0, y1 = levels[l], levels[l + 1]
        score = importance[l]
        if len(edges) > max_insets:
            for i, j in edges:
                alpha = float(max(min_alpha, score[j, i]))
                ax.plot([x_in[i], x_out[j]], [y0, y1], color="black", lw=0.4 + 1.6 * alpha, alpha=alpha)
            continue
        n = len(edges)
        centers = 0.05 + 0.9 * (np.arange(n) + 0.5) / max(n, 1)
        w = min(0.9 / max(n, 1) * 0.8, 0.16)
        hgt = 0.42 * gap
        ym = (y0 + y1) / 2
        for (i, j), cx in zip(edges, centers):
            alpha = float(max(min_alpha, score[j, i]))
            ax.plot([x_in[i], cx], [y0, ym - hgt / 2], color="black", lw=0.4 + 1.6 * alpha, alpha=alpha)
            ax.plot([cx, x_out[j]], [ym + hgt / 2, y1], color="black", lw=0.4 + 1.6 * alpha, alpha=alpha)
            inset = fig.add_axes((cx - w / 2, ym - hgt / 2, w, hgt))
            inset.plot(dense_x[:, i], dense_phi[:, j, i], color="black", lw=1.2, alpha=alpha)
            inset.set_xticks([])
            inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_alpha(alpha)
            fit = (fits or {}).get((l, j, i))
            if fit is not None:
                inset.text(0.04, 0.96, fit.name, transform=inset.transAxes, ha="left", va="top", fontsize=8, color="tab:red", alpha=max(alpha, 0.6))
    if title:
        width_chars = max(20, int(figsize[0] * 10))
        if len(title) > width_chars:  # long formulas: wrap, then cut
            lines = textwrap.wrap(title, width_chars)
            title = "\n".join(lines[:2]) + (" ..." if len(lines) > 2 else "")
        ax.text(0.5, 1 - 0.02, title, ha="center", va="top", fontsize=11 if "\n" not in title else 8)
    return fig
