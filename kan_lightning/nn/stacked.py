"""Many KANs of one shape as one module: every parameter gets a leading model dimension.

``StackedKAN([KAN(...), KAN(...), ...])`` copies ``M`` real :class:`KAN`\\ s (each
built with its own seed, so each starts exactly where a separate run starts) into tensors of
shape ``(M, ...)``; ``forward`` maps ``(M, N, in)`` to ``(M, N, out)``, model ``m`` seeing only
``x[m]``. Model ``m``'s output depends on model ``m``'s parameters alone, so the gradient of
``sum_m loss_m`` with respect to them is the gradient of ``loss_m``: the models train as if
separately, with one call per operation instead of ``M``. :meth:`StackedKAN.unstack` gives the
``M`` plain KANs back (checkpoints, evaluation, grid updates).

The spline branch uses the project's local basis kernel (:func:`~kan_lightning.nn.kernels.local_bases`:
only the ``k + 1`` non-zero bases per input and their derivatives) on all ``M * in`` inputs at
once, scatters them into a dense ``(M, N, in (G + k))`` basis and contracts it with one batched
matmul per layer. Supported: the layer options that change only how a spline is evaluated
(``basis``, ``contraction``); ``extrapolate="linear"`` is not.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from .kernels import local_bases
from .network import KAN

STACKED_PARAMETERS = ("base_weight", "spline_weight", "spline_scaler")
STACKED_BUFFERS = ("grid", "mask")
# KAN.config entries that only choose how the same function is computed
EVALUATION_ONLY = ("basis", "contraction")
# the local contraction from G + k >= this many times k + 1 (stacked [2, 5, 1], 16 models, 1000
# points, float64, forward + backward, ms dense / local: G = 5 48 / 61, G = 10 70 / 59, G = 100 443 / 81)
LOCAL_MIN_RATIO = 3.0


def stack_key(model: KAN) -> dict:
    """What models must share to be stacked: their config without the evaluation-only options."""
    return {k: v for k, v in model.config.items() if k not in EVALUATION_ONLY}


def check_stackable(models: Sequence[KAN]) -> None:
    """Raise ``ValueError`` naming the first difference that keeps ``models`` from one stack."""
    if not models:
        raise ValueError("a stack needs at least one model")
    first = models[0]
    for i, model in enumerate(models):
        if type(model) is not KAN:
            raise ValueError(f"model {i} is a {type(model).__name__}, only KAN models can be stacked")
        if model.config.get("extrapolate") != "bases":
            raise ValueError(f"model {i} has extrapolate={model.config.get('extrapolate')!r}; stacking supports 'bases' only")
        key, ref = stack_key(model), stack_key(first)
        diff = sorted(k for k in set(key) | set(ref) if key.get(k) != ref.get(k))
        if diff:
            raise ValueError(f"model {i} differs from model 0 in {diff[0]}: {key.get(diff[0])!r} vs {ref.get(diff[0])!r}")
        for j, (layer, ref_layer) in enumerate(zip(model.layers, first.layers)):
            if layer.grid.shape != ref_layer.grid.shape or layer.spline_weight.shape != ref_layer.spline_weight.shape:
                raise ValueError(f"model {i} layer {j} has grid {tuple(layer.grid.shape)}, model 0 {tuple(ref_layer.grid.shape)}")
            if type(layer.base_activation) is not type(ref_layer.base_activation):
                raise ValueError(f"model {i} layer {j} has another base activation than model 0")


class _LocalBases(torch.autograd.Function):
    """The ``k + 1`` non-zero bases ``(N, in, k + 1)`` of ``x`` ``(N, in)`` and the index of the
    first ``(N, in)``, differentiable in ``x`` through the kernel's own basis derivatives."""

    @staticmethod
    def forward(ctx, x, grid, spline_order, uniform):
        values, derivs, start = local_bases(x, grid, spline_order, uniform)
        ctx.save_for_backward(derivs)
        ctx.mark_non_differentiable(start)
        return values, start

    @staticmethod
    def backward(ctx, grad_values, grad_start):
        (derivs,) = ctx.saved_tensors
        return (grad_values * derivs).sum(-1), None, None, None


def stacked_spline_contract(
    x: Tensor, grid: Tensor, coef: Tensor, spline_order: int, uniform: bool, flat_grid: Tensor | None = None,
    contraction: str = "auto",
) -> Tensor:
    """``y[m, n, o] = sum_i sum_b coef[m, o, i, b] B_b(x[m, n, i])`` on grid ``grid[m, i]``:
    ``x (M, N, in)``, ``grid (M, in, G + 2k + 1)``, ``coef (M, out, in, G + k)`` -> ``(M, N, out)``.
    ``flat_grid``: ``grid`` viewed as ``(M in, G + 2k + 1)``, kept by the caller so that the
    kernel's per-grid tables (cached per tensor object) are built once, not on every call.
    ``contraction``: ``"dense"`` scatters the bases into the dense ``(M, N, in (G + k))`` basis for
    one batched matmul; ``"local"`` gathers the ``k + 1`` coefficient rows each input touches
    (``G + k`` against ``k + 1`` multiply-adds per input and output); ``"auto"``: local once
    ``G + k >= LOCAL_MIN_RATIO (k + 1)``."""
    n_models, n, n_in = x.shape
    n_out, n_bases = coef.shape[1], coef.shape[-1]
    flat = x.transpose(0, 1).reshape(n, n_models * n_in)
    if flat_grid is None:
        flat_grid = grid.reshape(n_models * n_in, -1)
    values, start = _LocalBases.apply(flat, flat_grid, spline_order, uniform)
    # bases outside [0, G + k) have zero values (local_bases): clamping their index adds zeros
    index = (start.unsqueeze(-1) + torch.arange(spline_order + 1, device=x.device)).clamp_(0, n_bases - 1)
    if contraction == "auto":
        contraction = "local" if n_bases >= LOCAL_MIN_RATIO * (spline_order + 1) else "dense"
    if contraction == "local":
        table = coef.permute(0, 2, 3, 1).reshape(n_models * n_in * n_bases, n_out)
        rows = index + (torch.arange(n_models * n_in, device=x.device) * n_bases).view(1, -1, 1)
        picked = table.index_select(0, rows.view(-1)).view(n, n_models * n_in, spline_order + 1, n_out)
        out = (picked * values.unsqueeze(-1)).sum(2).view(n, n_models, n_in, n_out).sum(2)
        return out.transpose(0, 1)
    basis = values.new_zeros(n, n_models * n_in, n_bases).scatter_add(2, index, values)
    basis = basis.view(n, n_models, n_in * n_bases).transpose(0, 1)
    return torch.bmm(basis, coef.reshape(n_models, n_out, n_in * n_bases).transpose(1, 2))


class StackedKANLayer(nn.Module):
    """``M`` :class:`~kan_lightning.nn.layer.KANLayer`\\ s of one shape: ``(M, N, in) -> (M, N, out)``."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        first = layers[0]
        self.in_features, self.out_features = first.in_features, first.out_features
        self.spline_order = first.spline_order
        self.base_activation = copy.deepcopy(first.base_activation)
        for name in STACKED_PARAMETERS:
            setattr(self, name, nn.Parameter(torch.stack([getattr(layer, name).detach() for layer in layers]).clone()))
        for name in STACKED_BUFFERS:
            self.register_buffer(name, torch.stack([getattr(layer, name) for layer in layers]).clone())
        self.uniform_grids = [bool(layer.uniform_grid) for layer in layers]

    @property
    def num_models(self) -> int:
        return self.base_weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        base = torch.bmm(self.base_activation(x), (self.base_weight * self.mask).transpose(1, 2))
        coef = self.spline_weight * (self.spline_scaler * self.mask).unsqueeze(-1)
        # the closed-form uniform kernel only where every grid is uniform (the general one is exact too)
        spline = stacked_spline_contract(x, self.grid, coef, self.spline_order, all(self.uniform_grids), self._flat_grid())
        return base + spline

    def _flat_grid(self) -> Tensor:
        """The grid as one ``(M in, G + 2k + 1)`` view, the same tensor object while the grid
        buffer is (in-place updates show in its version counter, which the kernel's cache checks)."""
        cached = self.__dict__.get("_flat")
        if cached is None or cached[0] is not self.grid:
            cached = self.__dict__["_flat"] = (self.grid, self.grid.view(-1, self.grid.shape[-1]))
        return cached[1]

    @torch.no_grad()
    def load_layer(self, m: int, layer: nn.Module) -> bool:
        """Copy ``layer``'s state into slot ``m`` in place; ``False`` (nothing copied) when its
        grid size differs (then the whole stack must be rebuilt)."""
        if layer.spline_weight.shape != self.spline_weight.shape[1:] or layer.grid.shape != self.grid.shape[1:]:
            return False
        for name in (*STACKED_PARAMETERS, *STACKED_BUFFERS):
            getattr(self, name)[m].copy_(getattr(layer, name))
        self.uniform_grids[m] = bool(layer.uniform_grid)
        return True


class StackedKAN(nn.Module):
    """``M`` KANs of one configuration trained as one module (see the module docstring)."""

    def __init__(self, models: Sequence[KAN]) -> None:
        super().__init__()
        check_stackable(models)
        # a plain attribute, not a submodule: the template's tensors are not the stack's state
        self.__dict__["_template"] = copy.deepcopy(models[0])
        self.layers = nn.ModuleList(StackedKANLayer(layers) for layers in zip(*(m.layers for m in models)))

    @property
    def num_models(self) -> int:
        return self.layers[0].num_models

    @property
    def layers_hidden(self) -> list[int]:
        return list(self._template.layers_hidden)

    def forward(self, x: Tensor) -> Tensor:
        """``(M, N, in) -> (M, N, out)``."""
        if x.dim() != 3 or x.shape[0] != self.num_models or x.shape[-1] != self.layers[0].in_features:
            raise ValueError(
                f"StackedKAN expects inputs (M={self.num_models}, N, {self.layers[0].in_features}), got {tuple(x.shape)}"
            )
        for layer in self.layers:
            x = layer(x)
        return x

    def model(self, m: int, state: dict[str, Tensor] | None = None, uniform_grids: Sequence[bool] | None = None) -> KAN:
        """Model ``m`` as a plain KAN (a copy: changing it leaves the stack alone); from
        ``state`` (a copy of this stack's ``state_dict()`` taken while its shapes were the current
        ones, e.g. the best epoch's weights) and its ``uniform_grids`` (one flag per layer) when given."""
        weight = self.layers[0].base_weight
        kan = copy.deepcopy(self._template).to(device=weight.device, dtype=weight.dtype)
        state = self.state_dict() if state is None else state
        kan.load_state_dict({key: value[m].detach().clone() for key, value in state.items()})
        flags = [layer.uniform_grids[m] for layer in self.layers] if uniform_grids is None else uniform_grids
        for kan_layer, flag in zip(kan.layers, flags):
            kan_layer.uniform_grid = flag  # as trained, not re-detected
        kan.config["grid_size"] = kan.grid_size
        return kan

    def unstack(self) -> list[KAN]:
        """The ``M`` models as plain KANs (copies)."""
        return [self.model(m) for m in range(self.num_models)]

    @torch.no_grad()
    def load_models(self, models: Sequence[KAN]) -> bool:
        """Take the state of ``models`` (e.g. after per-model grid updates). In place, keeping
        the Parameter objects (and an optimizer's state), when the shapes are unchanged:
        returns ``True``; otherwise the stack's parameters are replaced by new ones (an
        optimizer holding the old ones must be rebuilt): returns ``False``."""
        if len(models) != self.num_models:
            raise ValueError(f"expected {self.num_models} models, got {len(models)}")
        check_stackable(models)
        in_place = all(
            layer.spline_weight.shape[1:] == kan_layer.spline_weight.shape and layer.grid.shape[1:] == kan_layer.grid.shape
            for layer, kan_layer in zip(self.layers, models[0].layers)
        )
        if in_place:
            for m, model in enumerate(models):
                for layer, kan_layer in zip(self.layers, model.layers):
                    layer.load_layer(m, kan_layer)
        else:
            device, dtype = self.layers[0].grid.device, self.layers[0].grid.dtype
            self.layers = nn.ModuleList(
                StackedKANLayer(layers) for layers in zip(*(m.layers for m in models))
            ).to(device=device, dtype=dtype)
        self.__dict__["_template"] = copy.deepcopy(models[0])
        return in_place

    def update_grid(self, xs: Tensor, only: Sequence[bool] | None = None, **kwargs) -> bool:
        """:meth:`KAN.update_grid` of each model on its own inputs ``xs[m]`` (``(M, N, in)``),
        with the same keyword arguments (``only``: just the models marked ``True``); returns
        :meth:`load_models`' answer."""
        models = self.unstack()
        for m, (model, x) in enumerate(zip(models, xs)):
            if only is None or only[m]:
                model.update_grid(x, **kwargs)
        return self.load_models(models)

    def extend_grid(self, new_grid_size: int, xs: Tensor | None = None, **kwargs) -> bool:
        """:meth:`KAN.extend_grid` of each model (on its own inputs ``xs[m]`` when given)."""
        models = self.unstack()
        for m, model in enumerate(models):
            model.extend_grid(new_grid_size, None if xs is None else xs[m], **kwargs)
        return self.load_models(models)
