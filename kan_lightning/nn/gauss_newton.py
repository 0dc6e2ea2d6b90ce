"""``J^T J`` and ``J^T r`` of a single-output KAN from the sparsity of its Jacobian.

A ``spline_weight`` column of the Jacobian is non-zero only for the samples under its basis: each
sample touches ``k + 1`` of the ``G + k`` coefficients of each edge's input. The columns are put
in a grouped order (the dense ``base_weight`` and ``spline_scaler`` columns first, then per layer
input ``i`` the ``(G + k, out)`` coefficients of its edges, basis-major), and the rows of group
``i`` of ``J^T J`` are summed over samples sorted by their first non-zero basis, ``k + 1``
intervals at a time: each chunk adds the product of its samples' ``k + 1`` local values (spread
over the chunk's window of ``2k + 1`` bases, contiguous rows) with their Jacobian rows from the
group's first column on. The lower triangle is the transpose. Cost ``~N * P * (k + 1) * sum(out)`` instead of ``N * P^2``.
A group of few bases (``G + k <= 2 (2k + 1)``: each chunk's window is then a large part of the
group) gains too little from the chunks to pay for their many small products, so its rows are one
dense product instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def layer_terms(model: nn.Module, x: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """Per layer of a single-output KAN: the layer, its inputs ``(N, in)`` and the derivative of
    the network's output with respect to its outputs ``(N, out)`` (one backward pass: samples are
    independent)."""
    layers = list(model.layers)
    if layers[-1].out_features != 1:
        raise ValueError(f"jacobian needs a single-output KAN, got {layers[-1].out_features} outputs")
    known = {"base_weight", "spline_weight", "spline_scaler"}
    for layer in layers:
        names = {n for n, _ in layer.named_parameters()}
        if names != known:
            raise ValueError(f"jacobian knows KANLayer's parameters {sorted(known)}, got {sorted(names)}")
    inputs, outputs, h = [], [], x
    with torch.enable_grad():
        for layer in layers:
            inputs.append(h.detach())
            h = layer(h)
            outputs.append(h)
        grads = torch.autograd.grad(h.sum(), outputs)
    return list(zip(layers, inputs, grads))


@dataclass
class SplineGroup:
    """The columns of one layer input's edges in the grouped order: ``start`` the first of its
    ``(G + k) * out`` columns (basis-major), ``first`` ``(N,)`` each sample's first non-zero basis,
    ``local`` ``(N, k + 1, out)`` the values of its ``k + 1`` bases per edge from ``first`` on."""

    start: int
    out: int
    n_bases: int
    spline_order: int
    first: Tensor
    local: Tensor


@dataclass
class GroupedJacobian:
    """The Jacobian ``(N, P)`` in the grouped order, ``order`` ``(P,)`` the position of each of
    its columns in ``model.parameters()`` order, and the spline groups."""

    matrix: Tensor
    order: Tensor
    groups: list[SplineGroup]
    n_dense: int


def grouped_jacobian(model: nn.Module, x: Tensor) -> GroupedJacobian:
    """The chain-rule Jacobian of :func:`~kan_lightning.nn.levenberg_marquardt.jacobian` with
    its columns grouped for :func:`gram`."""
    offsets, at = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = at
        at += p.numel()
    terms = layer_terms(model, x)
    n_dense = sum(2 * layer.out_features * layer.in_features for layer in model.layers)
    matrix = x.new_empty(x.shape[0], at)  # each block is written in place: no concatenation
    dense_at, spline_at, dense_index, spline_index, groups = 0, n_dense, [], [], []
    with torch.no_grad():
        for li, (layer, xi, g) in enumerate(terms):
            n_out, n_in = layer.out_features, layer.in_features
            bases = layer.spline_bases(xi)  # (N, in, M)
            n_bases, k = bases.shape[-1], layer.spline_order
            mask = layer.mask
            edges = n_out * n_in
            base = matrix[:, dense_at:dense_at + edges].view(-1, n_out, n_in)
            torch.mul(g[:, :, None] * layer.base_activation(xi)[:, None, :], mask, out=base)
            splines = torch.einsum("nim,oim->noi", bases, layer.spline_weight)
            torch.mul(g[:, :, None] * splines, mask, out=matrix[:, dense_at + edges:dense_at + 2 * edges].view(-1, n_out, n_in))
            for name in ("base_weight", "spline_scaler"):
                dense_index.append(offsets[f"layers.{li}.{name}"] + torch.arange(edges, device=x.device))
            dense_at += 2 * edges
            scale = (layer.spline_scaler * mask).T  # (in, out)
            columns = matrix[:, spline_at:spline_at + edges * n_bases].view(-1, n_in, n_bases, n_out)
            torch.mul(g[:, None, None, :] * scale[None, :, None, :], bases[..., None], out=columns)
            o, i, m = torch.meshgrid(*(torch.arange(n, device=x.device) for n in (n_out, n_in, n_bases)), indexing="ij")
            spline_index.append((offsets[f"layers.{li}.spline_weight"] + (o * n_in + i) * n_bases + m).permute(1, 2, 0).reshape(-1))
            # a window of k + 1 bases from the first non-zero one holds all of a sample's non-zero ones
            first = (bases != 0).to(torch.int8).argmax(-1).clamp_max(n_bases - k - 1)  # (N, in)
            window = first[..., None] + torch.arange(k + 1, device=x.device)
            local = g[:, None, None, :] * scale[None, :, None, :] * bases.gather(2, window)[..., None]  # (N, in, k + 1, out)
            for i in range(n_in):
                groups.append(SplineGroup(spline_at + i * n_bases * n_out, n_out, n_bases, k, first[:, i], local[:, i]))
            spline_at += edges * n_bases
    return GroupedJacobian(matrix, torch.cat(dense_index + spline_index), groups, n_dense)


def _sparse_pays(group: SplineGroup) -> bool:
    """Whether the chunked sum beats one dense product for this group (measured with
    ``python -m kan_lightning.commands.bench_lm``: at G = 3-5, k = 3 the dense product makes an
    LM iteration ~1.1x faster)."""
    return group.n_bases > 2 * (2 * group.spline_order + 1)


def _group_rows(gram_rows: Tensor, jac: Tensor, group: SplineGroup) -> None:
    """Add ``J[:, group]^T J[:, group.start:]`` into ``gram_rows`` ``(M * out, P - start)``."""
    k, n_bases, n_out = group.spline_order, group.n_bases, group.out
    chunk = k + 1  # first bases per chunk: its samples touch the chunk + k bases from its first on
    width = chunk + k
    which = torch.div(group.first, chunk, rounding_mode="floor")
    order = torch.argsort(which, stable=True)
    counts = torch.bincount(which, minlength=1).tolist()
    spread = jac.new_zeros(jac.shape[0], width, n_out)
    slot = (group.first - which * chunk)[:, None] + torch.arange(k + 1, device=jac.device)
    spread.scatter_(1, slot[..., None].expand(-1, -1, n_out), group.local)
    spread = spread.index_select(0, order).flatten(1)
    rows_of = jac[:, group.start:].index_select(0, order)
    at = 0
    for c, n in enumerate(counts):
        if n:
            first, last = c * chunk * n_out, min(c * chunk + width, n_bases) * n_out
            gram_rows[first:last].addmm_(spread[at:at + n, :last - first].T, rows_of[at:at + n])
            at += n


def gram(jac: GroupedJacobian) -> Tensor:
    """``J^T J`` in the grouped order, from the dense columns' products and each spline group's
    sparse rows against the columns from its own on (the rest by symmetry)."""
    j, nd = jac.matrix, jac.n_dense
    p = j.shape[1]
    h = j.new_empty(p, p)
    h[:nd] = j[:, :nd].T @ j
    for group in jac.groups:
        rows = slice(group.start, group.start + group.n_bases * group.out)
        if _sparse_pays(group):
            h[rows, group.start:] = 0
            _group_rows(h[rows, group.start:], j, group)
        else:
            torch.mm(j[:, rows].T, j[:, group.start:], out=h[rows, group.start:])
        h[rows, :group.start] = h[:group.start, rows].mT
    return h
