"""Every edge of a KAN fitted to the library (pykan's ``suggest_symbolic`` / ``auto_symbolic``)."""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from .edge_fits import EdgeKey, SymbolicEdge, as_numpy, fit_edge, fit_function, fit_function_shared, rank_fits
from .library import LIBRARY, SymbolicFunction, resolve_library


def _model_inputs(model: torch.nn.Module, x: Tensor | np.ndarray) -> Tensor:
    param = next(model.parameters())
    x = torch.as_tensor(x)
    return x.to(device=param.device, dtype=param.dtype).reshape(-1, model.layers[0].in_features)


@torch.no_grad()
def edge_samples(model: torch.nn.Module, x: Tensor | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, its inputs ``(N, in)`` and its edge values ``(N, out, in)`` on ``x`` (numpy)."""
    acts = model.activations(_model_inputs(model, x))
    return [(as_numpy(inputs), as_numpy(phi)) for inputs, phi in acts]


def suggest_symbolic(
    model: torch.nn.Module,
    x: Tensor | np.ndarray,
    layer: int,
    i: int,
    j: int,
    top_k: int = 5,
    library: Mapping[str, SymbolicFunction] | Iterable[str] | None = None,
    tolerance: float = 1e-4,
    **fit_kwargs,
) -> list[SymbolicEdge]:
    """The ``top_k`` best symbolic fits of edge ``phi_{j,i}`` (input ``i``, output ``j``) of
    layer ``layer``, sampled on the layer's inputs when the network sees ``x``; first is best."""
    samples = edge_samples(model, x)
    if not 0 <= layer < len(samples):
        raise IndexError(f"layer {layer} out of range for a network of {len(samples)} layers")
    inputs, phi = samples[layer]
    if not (0 <= i < phi.shape[2] and 0 <= j < phi.shape[1]):
        raise IndexError(f"edge (j={j}, i={i}) out of range for layer {layer} of shape (out={phi.shape[1]}, in={phi.shape[2]})")
    ranked = fit_edge(inputs[:, i], phi[:, j, i], library, tolerance, **fit_kwargs)
    return ranked[:top_k]


def auto_symbolic(
    model: torch.nn.Module,
    x: Tensor | np.ndarray,
    library: Mapping[str, SymbolicFunction] | Iterable[str] | None = None,
    r2_threshold: float = 0.99,
    tolerance: float = 1e-4,
    zero_threshold: float = 1e-3,
    verbose: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **fit_kwargs,
) -> dict[EdgeKey, SymbolicEdge]:
    """Fix every live edge to a symbolic function: ``{(layer, j, i): SymbolicEdge}``.

    ``progress(done, total)`` is called after each edge. Edges below ``r2_threshold`` are
    reported in one warning (the count and the first few), not one warning each.

    Masked (pruned) edges are left out. An edge whose spread (std of ``phi`` over ``x``) is at
    most ``zero_threshold`` times the largest spread in its layer becomes the constant ``"0"``
    function (its mean). Otherwise the first fit of :func:`rank_fits` is taken; if no function
    reaches ``r2_threshold`` the best ``R^2`` is taken instead and a warning names the edge.
    The network itself is not changed.
    """
    library = resolve_library(library)
    fits: dict[EdgeKey, SymbolicEdge] = {}
    poor: list[str] = []
    total, done = live_edges(model), 0
    for l, (inputs, phi) in enumerate(edge_samples(model, x)):
        mask = model.layers[l].mask.detach().cpu().numpy()
        spread = phi.std(axis=0)  # (out, in)
        live = spread[mask > 0]
        largest = float(live.max()) if live.size else 0.0
        for i in range(phi.shape[2]):
            outputs = [j for j in range(phi.shape[1]) if mask[j, i] != 0]
            fitted = [j for j in outputs if spread[j, i] > zero_threshold * largest]
            # every library function against all the edges leaving input i at once
            per_function = [fit_function_shared(inputs[:, i], phi[:, fitted, i], fn, **fit_kwargs) for fn in library.values()] if fitted else []
            ranked_by_edge = {j: rank_fits([fits_j[k] for fits_j in per_function], tolerance) for k, j in enumerate(fitted)}
            for j in outputs:
                if j not in ranked_by_edge:
                    fit = fit_function(inputs[:, i], phi[:, j, i], LIBRARY["0"])
                else:
                    ranked = ranked_by_edge[j]
                    fit = ranked[0]
                    if fit.r2 < r2_threshold:
                        best = max(ranked, key=lambda f: f.r2)
                        poor.append(f"(layer={l}, j={j}, i={i}) best {best.name}: {best.r2:.4f}")
                        fit = best
                fits[(l, j, i)] = fit
                done += 1
                if progress is not None:
                    progress(done, total)
                if verbose:
                    print(f"fixing (layer={l}, j={j}, i={i}) with {fit.name}, R^2={fit.r2:.6f}")
    if poor:
        more = f" and {len(poor) - 3} more" if len(poor) > 3 else ""
        warnings.warn(
            f"{len(poor)} edge(s) where no library function reaches R^2 >= {r2_threshold}, using the "
            f"best fit anyway: edge {'; edge '.join(poor[:3])}{more}",
            stacklevel=2,
        )
    return dict(sorted(fits.items()))  # layer, then output, then input


def live_edges(model: torch.nn.Module) -> int:
    """The number of edges a KAN has left (its masks' ones)."""
    return int(sum(int((layer.mask > 0).sum()) for layer in model.layers))
