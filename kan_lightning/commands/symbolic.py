"""From a checkpoint to a formula: ``kan-symbolic ckpt_path=...`` or ``python -m kan_lightning.commands.symbolic``.

Fits every edge of the checkpoint's KAN to a library of symbolic functions, composes them into a
sympy formula in the run's original units (inputs and targets denormalized), refits the formula's
constants on the training data, rounds them, and reports its RMSE on a split of the run's data.
Writes ``formula.txt``, ``formula.json`` and ``network.png`` into this command's run directory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import kan_lightning.resolvers  # noqa: F401  (registers the configs' resolvers)
from kan_lightning.analysis import formulas as sym
from kan_lightning.analysis.figures import FORMATS
from kan_lightning.analysis.plots import plot_network, save_figure
from kan_lightning.data.normalization import denormalize_x, denormalize_y
from kan_lightning.lit.checkpoint import SPLITS, datamodule_from_checkpoint, model_from_checkpoint, read_checkpoint

FORMULA_TXT = "formula.txt"
FORMULA_JSON = "formula.json"
NETWORK_PNG = "network.png"


def load_kan(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """The checkpoint's KAN, in the dtype it was saved in (float64 runs stay float64)."""
    model = model_from_checkpoint(checkpoint)
    if not hasattr(model, "activations") or not hasattr(model, "layers"):
        raise ValueError(f"symbolic regression needs a KAN checkpoint, got a {type(model).__name__}")
    return model.eval()


def check_edge_budget(model: torch.nn.Module, max_edges: int | None) -> None:
    """Refuse, in seconds, a KAN with more live edges than ``max_edges``: each edge takes about
    a second to fit, and the composed formula of hundreds of edges is too large to simplify."""
    if max_edges is None:
        return
    if isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 1:
        raise ValueError(f"max_edges={max_edges!r} must be a positive integer or null")
    edges = sym.live_edges(model)
    if edges > max_edges:
        raise ValueError(
            f"the checkpoint's KAN {list(model.layers_hidden)} has {edges} live edges, more than "
            f"max_edges={max_edges} (each takes about a second to fit, and the formula would be too large "
            "to read): prune it first (train with callbacks=pruning, or a smaller model such as "
            "model.layers_hidden=[2,5,1]), or raise max_edges"
        )


def _progress(done: int, total: int) -> None:
    if done != total and done % max(1, total // 20):  # about 20 updates
        return
    end = "\n" if done == total else ""
    print(f"\rfitting edges: {done}/{total}", end=end, file=sys.stderr, flush=True)


def _raw(datamodule, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_normalized, x_original, y_original)`` of a split, in float64."""
    norm = datamodule.normalization
    x = getattr(datamodule, f"x_{split}").double()
    y = getattr(datamodule, f"y_{split}").double()
    return x, denormalize_x(x, norm), denormalize_y(y, norm)


def symbolic_from_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Turn the KAN of ``cfg.ckpt_path`` into a formula (see ``conf/symbolic.yaml``).

    Returns the record also written to ``formula.json``: ``formula`` (str), ``srepr``,
    ``latex``, ``expr`` (the sympy expression, not written), ``rmse`` (the formula's RMSE on
    ``cfg.split`` in original target units), ``kan_rmse`` (the network's), ``train_rmse``,
    ``edges`` (every fitted edge), ``input_names`` and file paths.
    """
    start = time.time()
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {cfg.split!r}")
    figure_format = cfg.get("figure_format", "png")
    if figure_format not in FORMATS:
        raise ValueError(f"figure_format must be one of {FORMATS}, got {figure_format!r}")
    checkpoint = read_checkpoint(cfg.ckpt_path, list(cfg.get("trusted_targets") or []))
    model = load_kan(checkpoint)
    check_edge_budget(model, cfg.get("max_edges"))
    overrides = OmegaConf.to_container(cfg.get("data") or OmegaConf.create({}), resolve=True)
    datamodule = datamodule_from_checkpoint(checkpoint, overrides)
    norm = datamodule.normalization
    dtype = next(model.parameters()).dtype

    x_fit, x_train, y_train = _raw(datamodule, "train")
    n_points = cfg.get("n_points")
    if n_points:
        x_fit, x_train, y_train = x_fit[:n_points], x_train[:n_points], y_train[:n_points]
    library = cfg.get("library")
    library = list(library) if library is not None and not isinstance(library, str) else library
    fits = sym.auto_symbolic(
        model,
        x_fit.to(dtype),
        library=library,
        r2_threshold=cfg.r2_threshold,
        tolerance=cfg.tolerance,
        zero_threshold=cfg.zero_threshold,
        progress=_progress if cfg.get("progress", True) else None,
    )
    d = model.layers[0].in_features
    input_names = list(cfg.get("input_names") or sym.default_names("x", d))
    output_name = cfg.get("output_name") or "y"
    composed = sym.symbolic_formula(model, fits, input_names, [output_name], precision=None)[output_name]
    composed = sym.denormalize_formula(
        composed,
        input_names,
        x_shift=norm["x_shift"].tolist(),
        x_scale=norm["x_scale"].tolist(),
        y_mean=float(norm["y_mean"].reshape(-1)[0]),
        y_std=float(norm["y_std"].reshape(-1)[0]),
    )
    refined = sym.refine_formula(
        composed,
        x_train.numpy(),
        y_train.numpy(),
        input_names,
        precision=cfg.precision,
        refit=cfg.refit,
        snap=cfg.snap,
    )
    expr = refined.expr

    x_eval, x_eval_orig, y_eval = _raw(datamodule, cfg.split)
    rmse = sym.formula_rmse(expr, x_eval_orig.numpy(), y_eval.numpy(), input_names)
    with torch.no_grad():
        pred = denormalize_y(model(x_eval.to(dtype)).double(), norm)
    kan_rmse = float(((pred - y_eval) ** 2).mean().sqrt())

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        **sym.formula_to_dict(expr),
        "output_name": output_name,
        "input_names": input_names,
        "split": cfg.split,
        "rmse": rmse,
        "kan_rmse": kan_rmse,
        "train_rmse": refined.rmse,
        "composed_train_rmse": refined.rmse_before,
        "snapped": refined.snapped,
        "refit_skipped": refined.skipped,
        "edges": sym.fits_to_dict(fits),
        "ckpt_path": str(cfg.ckpt_path),
        "wall_time_s": None,
    }
    (output_dir / FORMULA_TXT).write_text(f"{output_name} = {expr}\n")
    if cfg.get("plot", True):
        fig = plot_network(model, x_fit.to(dtype), input_names=input_names, output_names=[output_name], fits=fits, title=f"{output_name} = {expr}")
        path = (output_dir / NETWORK_PNG).with_suffix(f".{figure_format}")
        record["figure"] = str(save_figure(fig, path, dpi=cfg.get("dpi")))
    record["wall_time_s"] = time.time() - start
    (output_dir / FORMULA_JSON).write_text(json.dumps(record, indent=2, default=str))
    record["expr"] = expr
    record["fits"] = fits
    return record


@hydra.main(version_base="1.3", config_path="pkg://kan_lightning.conf", config_name="symbolic")
def main(cfg: DictConfig) -> None:
    """``kan-symbolic``: a missing, corrupt, foreign or too large checkpoint (or a bad setting)
    prints ``error: ...`` and exits with status 2, without a traceback."""
    try:
        record = symbolic_from_checkpoint(cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"checkpoint: {cfg.ckpt_path}")
    for edge in record["edges"]:
        print(f"  edge (layer {edge['layer']}, {edge['j']} <- {edge['i']}): {edge['name']:<8} R^2={edge['r2']:.6f}")
    print(f"{record['output_name']} = {record['formula']}")
    print(f"  {record['split']} RMSE: formula {record['rmse']:.3g}, KAN {record['kan_rmse']:.3g}")
    if record.get("refit_skipped"):
        print(f"  note: {record['refit_skipped']}")
    print(f"  written to {Path(cfg.paths.output_dir) / FORMULA_TXT}")


if __name__ == "__main__":
    main()
