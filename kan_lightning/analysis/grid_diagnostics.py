"""Why a grid-extension run's test error rose: diagnostics of a saved KAN on its run's data.

    python -m kan_lightning.commands.grid_diagnostics <run dir> [--ckpt last.ckpt] [--refit G]
        [--margins 0.5,1,2.5]

For a saved KAN and its run's data (the command rebuilds both from a checkpoint, as ``kan-eval``
does) it reports:

- the test points with an input off some layer's grid range, and their share of the squared
  error (off the grid the B-splines run out);
- per layer and input, the condition number of the least-squares matrix that refits the splines
  on the training inputs (large: grid intervals with too few training points, where a refit or
  training can swing between them);
- with ``--refit G``: the test RMSE right after refitting to ``G`` intervals on the training
  inputs (no training), for each hidden-grid margin and for ``hidden_range=interval``, which
  separates what the refit does from what training on the new grid does.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch


@torch.no_grad()
def off_grid(model, x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` with an input off some layer's grid range."""
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    for layer in model.layers:
        interior = layer.grid_interior()
        out |= ((x < interior[:, 0]) | (x > interior[:, -1])).any(-1)
        x = layer(x)
    return out


@torch.no_grad()
def refit_conditions(model, x: torch.Tensor) -> list[list[float]]:
    """Per layer and input: condition number of the training inputs' B-spline matrix."""
    from kan_lightning.nn.splines import bspline_basis_reference

    conditions = []
    for layer in model.layers:
        bases = bspline_basis_reference(x, layer.grid, layer.spline_order)  # (N, in, G + k)
        values = [torch.linalg.svdvals(bases[:, i, :]) for i in range(layer.in_features)]
        conditions.append([float(s[0] / s[-1]) if s[-1] > 0 else float("inf") for s in values])
        x = layer(x)
    return conditions


def _rmse(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x) - y).pow(2).mean().sqrt())


def report(model, data, label: str, refit: int | None = None, margins: Sequence[float] = (0.5, 1, 2.5)) -> str:
    """The diagnostics of ``model`` (float64) on its run's ``data`` (a set-up datamodule), the
    first line headed by ``label``."""
    x_train, x_test, y_test = data.x_train.double(), data.x_test.double(), data.y_test.double()
    with torch.no_grad():
        err = (model(x_test) - y_test).pow(2).squeeze(-1)
    off = off_grid(model, x_test)
    share = float(err[off].sum() / err.sum()) if err.sum() > 0 else 0.0
    rest = float(err[~off].mean().sqrt()) if (~off).any() else float("nan")
    lines = [
        f"{label}: G = {model.grid_size}, test RMSE {float(err.mean().sqrt()):.3g} (normalized units)",
        f"  {int(off.sum())} test points off a grid carry {100 * share:.1f}% of the squared error; RMSE of the rest {rest:.3g}",
    ]
    for l, conds in enumerate(refit_conditions(model, x_train)):
        lines.append(f"  layer {l}: refit condition number per input " + ", ".join(f"{c:.1e}" for c in conds))
    if refit:
        cells = []
        for margin in margins:
            m = copy.deepcopy(model)
            m.extend_grid(refit, x=x_train, keep_input_range=True, margin=float(margin))
            cells.append(f"margin {margin:g}: {_rmse(m, x_test, y_test):.3g}")
        m = copy.deepcopy(model)
        m.extend_grid(refit, x=x_train, keep_input_range=True, hidden_range="interval")
        cells.append(f"interval: {_rmse(m, x_test, y_test):.3g}")
        lines.append(f"  test RMSE right after a refit to G = {refit}: " + "; ".join(cells))
    return "\n".join(lines)
