"""Levenberg-Marquardt on a KAN's squared error: a second-order fit for small full-batch problems.

On the grid-extension toy, full-batch LBFGS stalls far above what the network can fit (KAN
[2, 5, 1], G = 50: training RMSE 5.5e-5 after 200 steps; 200 iterations of this from the same
network: 7.9e-8). The Jacobian is ``(N, P)``, so this is for networks of a few thousand
parameters at most.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .refit import difference_matrix


def jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """``d model(x)[n] / d theta`` of a single-output KAN, ``(N, P)`` with the parameters in
    ``model.parameters()`` order.

    By the chain rule: one backward pass gives, per sample, the derivative of the output with
    respect to each layer's outputs (samples are independent), times the layer's local
    derivatives: ``base_activation(x_i)`` for ``base_weight``, the unscaled spline for
    ``spline_scaler``, and ``spline_scaler * B_m(x_i)`` for ``spline_weight``.
    """
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
    blocks = {}
    with torch.no_grad():
        for i, (layer, xi, g) in enumerate(zip(layers, inputs, grads)):
            bases = layer.spline_bases(xi)  # (N, in, M)
            mask = layer.mask
            blocks[f"layers.{i}.base_weight"] = g[:, :, None] * layer.base_activation(xi)[:, None, :] * mask
            splines = torch.einsum("nim,oim->noi", bases, layer.spline_weight)
            blocks[f"layers.{i}.spline_scaler"] = g[:, :, None] * splines * mask
            scale = (layer.spline_scaler * mask)[None, :, :, None]
            blocks[f"layers.{i}.spline_weight"] = g[:, :, None, None] * scale * bases[:, None]
        return torch.cat([blocks[n].reshape(x.shape[0], -1) for n, _ in model.named_parameters()], 1)


def penalty_matrix(model: nn.Module, x: Tensor, smoothness: float) -> Tensor:
    """Rows ``sqrt(lam_i) * D`` on each edge's ``spline_weight`` (``D``: differences of order
    ``k + 1``, ``lam_i = smoothness * trace(B_i^T B_i) / (G + k)`` for the layer's input ``i`` at
    ``x``: the weights of :func:`~kan_lightning.nn.refit.penalized_fit_coefficients`), ``(R, P)``
    in ``model.parameters()`` order: coefficients with no data under them stay on the polynomial
    of their neighbours instead of taking any value that fits the training points."""
    blocks, h = [], x
    for i, layer in enumerate(model.layers):
        bases = layer.spline_bases(h)  # (N, in, M)
        n_bases = bases.shape[-1]
        d = difference_matrix(n_bases, min(layer.spline_order + 1, n_bases - 1), dtype=x.dtype, device=x.device)
        lam = smoothness * bases.square().sum(dim=(0, 2)) / n_bases  # (in,)
        per_edge = lam.sqrt().repeat(layer.out_features)  # edges in (out, in) order
        blocks.append((f"layers.{i}.spline_weight", torch.block_diag(*(w * d for w in per_edge))))
        h = layer(h)
    out = []
    for name, block in blocks:  # each block's rows are zero outside its own parameter's columns
        row = [block if n == name else x.new_zeros(block.shape[0], p.numel()) for n, p in model.named_parameters()]
        out.append(torch.cat(row, 1))
    return torch.cat(out, 0)


@torch.no_grad()
def levenberg_marquardt(
    model: nn.Module, x: Tensor, y: Tensor, iterations: int, damping: float = 1e-3, smoothness: float = 0.0
) -> dict:
    """Minimize ``sum (model(x) - y)^2`` in place by Levenberg-Marquardt (Marquardt's scaling:
    ``(J^T J + lambda diag(J^T J)) step = -J^T r``; a step is taken only if it lowers the error,
    lambda / 3 after a success, x 4 after a failure). ``smoothness`` > 0 adds the difference
    penalty of :func:`penalty_matrix` to the error. Returns ``{"iterations", "damping",
    "rmse_before", "rmse_after"}`` (RMSE of the data residuals); stops early when no damping up
    to 1e10 gives a descent."""
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    y = y.reshape(-1).to(params[0])
    pen = penalty_matrix(model, x, smoothness) if smoothness > 0 else None

    def objective(r: Tensor, theta: Tensor) -> Tensor:
        return r.square().sum() + (0 if pen is None else (pen @ theta).square().sum())

    def residual() -> Tensor:
        return model(x).reshape(-1) - y

    def put(theta: Tensor) -> None:
        for p, t in zip(params, theta.split(sizes)):
            p.copy_(t.reshape(p.shape))

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    r = residual()
    before, lam, done = float(r.square().mean().sqrt()), float(damping), 0
    for done in range(1, iterations + 1):
        J = jacobian(model, x)
        g, H = J.T @ r, J.T @ J
        if pen is not None:
            g, H = g + pen.T @ (pen @ theta), H + pen.T @ pen
        scale = torch.diag(H.diagonal().clamp_min(torch.finfo(H.dtype).tiny))
        improved = False
        while lam < 1e10:
            step = torch.linalg.solve(H + lam * scale, -g)
            put(theta + step)
            r_new = residual()
            if bool(torch.isfinite(r_new).all()) and objective(r_new, theta + step) < objective(r, theta):
                theta, r, lam, improved = theta + step, r_new, max(lam / 3, 1e-15), True
                break
            lam *= 4
        put(theta)
        if not improved:
            break
    return {"iterations": done, "damping": lam, "rmse_before": before, "rmse_after": float(r.square().mean().sqrt())}
