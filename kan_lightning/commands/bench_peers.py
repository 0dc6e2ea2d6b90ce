"""Other KAN libraries for ``kan-bench``, each behind one small adapter.

An adapter builds the peer's network for the widths, grid and order of one of our KANs, with
our KAN's weights copied in where the peer computes the same function (SiLU base branch plus
B-splines of order ``k`` on the same uniform knots), so that outputs can be compared. A peer
that is not installed, or cannot build the shape, raises :class:`PeerUnavailable` with the
reason, which the benchmark reports instead of dropping the peer.

Peers (``pip install "kan-lightning[bench]"`` installs the PyPI ones):

* ``flashkan``: dense bases from the truncated-power closed form, compiled with
  ``torch.compile``; cubic only. The alternating sum cancels at fine grids (float32).
* ``inkan``: piecewise-polynomial local bases, ``torch.compile``d by default (``inkan``) or
  eager (``inkan-eager``); cubic only.
* ``pykan``: the original KAN library (its own parametrisation: timed, not compared).
* ``efficient-kan``: not on PyPI; listed as unavailable.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable

import torch
from torch import nn

PEERS = ("flashkan", "inkan", "inkan-eager", "pykan", "efficient-kan")


class PeerUnavailable(Exception):
    """The peer cannot run here; the message says why (``not installed``, a shape it lacks)."""


def _import(module: str, dist: str):
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise PeerUnavailable(f"not installed (pip install {dist})") from None
    return mod, importlib.metadata.version(dist)


def _cubic_uniform(ours: nn.Module, name: str) -> None:
    for layer in ours.layers:
        if layer.spline_order != 3:
            raise PeerUnavailable(f"{name} has cubic splines only (k = {layer.spline_order})")
        if not layer.uniform_grid:
            raise PeerUnavailable(f"{name} has uniform grids only")


def _layer_range(layer: nn.Module) -> tuple[float, float]:
    interior = layer.grid_interior()
    return float(interior[0, 0]), float(interior[0, -1])


@torch.no_grad()
def _flashkan(ours: nn.Module) -> nn.Module:
    flashkan, _ = _import("flashkan", "flashkan")
    _cubic_uniform(ours, "flashkan")
    layers = []
    for layer in ours.layers:
        peer = flashkan.KANLayer(layer.in_features, layer.out_features, grid_size=layer.grid_size,
                                 spline_order=3, grid_range=_layer_range(layer))
        peer.spline_weight.copy_(layer.scaled_coefficients())
        peer.base_weight.copy_(layer.base_weight * layer.mask)
        layers.append(peer)
    return nn.Sequential(*layers)


@torch.no_grad()
def _inkan(ours: nn.Module, compiled: bool = True) -> nn.Module:
    inkan, _ = _import("inkan", "inkan")
    _cubic_uniform(ours, "inkan")
    layers = []
    for layer in ours.layers:
        peer = inkan.KANLayer(layer.in_features, layer.out_features, grid_size=layer.grid_size,
                              spline_order=3, grid_range=_layer_range(layer), compile_basis=compiled)
        # one packed weight: [spline coefficients (out, in * (G + k)) | base weights (out, in)]
        peer.weight.copy_(torch.cat([layer.scaled_coefficients().flatten(1), layer.base_weight * layer.mask], 1))
        layers.append(peer)
    return nn.Sequential(*layers)


def _pykan(ours: nn.Module) -> nn.Module:
    try:
        from kan import KAN as PyKAN  # type: ignore[import-not-found]
    except ImportError:
        raise PeerUnavailable("not installed (pip install pykan)") from None
    first = ours.layers[0]
    widths = [first.in_features] + [layer.out_features for layer in ours.layers]
    return PyKAN(width=widths, grid=first.grid_size, k=first.spline_order, seed=0, auto_save=False)


def _efficient_kan(ours: nn.Module) -> nn.Module:
    raise PeerUnavailable("not on PyPI (a source file in its GitHub repository)")


ADAPTERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "flashkan": _flashkan,
    "inkan": _inkan,
    "inkan-eager": lambda ours: _inkan(ours, compiled=False),
    "pykan": _pykan,
    "efficient-kan": _efficient_kan,
}
# Peers whose function is ours with the copied weights (their outputs are compared).
SAME_FUNCTION = ("flashkan", "inkan", "inkan-eager")


def peer_version(name: str) -> str | None:
    dist = {"inkan-eager": "inkan"}.get(name, name)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_peer(name: str, ours: nn.Module, dtype: torch.dtype, device: str) -> nn.Module:
    """The peer ``name`` for our KAN ``ours`` (same widths, grid, order, weights where
    comparable), in ``dtype`` on ``device``; :class:`PeerUnavailable` if it cannot run."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    try:
        # the device positionally: pykan's MultKAN.to takes nothing else
        model = ADAPTERS[name](ours).to(device)
        return nn.Module.to(model, dtype=dtype)
    except PeerUnavailable:
        raise
    except Exception as exc:  # an incompatible version
        raise PeerUnavailable(f"failed to build: {type(exc).__name__}: {exc}") from None


def max_difference(peer: nn.Module, ours: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """``max |peer(x) - ours(x)|`` and that over ``max |ours(x)|``."""
    with torch.no_grad():
        want = ours(x)
        diff = (peer(x) - want).abs().max().item()
        return diff, diff / max(want.abs().max().item(), 1e-300)
