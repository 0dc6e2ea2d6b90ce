"""Read checkpoints safely and rebuild the network they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kan_lightning.nn import KAN, MLP, HybridKAN

# Only these classes are rebuilt from a checkpoint: nothing named inside a file gets imported.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "kan_lightning.nn.network.KAN": KAN,
    "kan_lightning.nn.mlp.MLP": MLP,
    "kan_lightning.nn.hybrid.HybridKAN": HybridKAN,
}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs while unpickling), turning
    a missing, truncated or foreign file into an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to load (the unpickler raises many kinds) is a bad file
        reason = _reason(err)
        if "Unsupported global" in reason or "Unsupported class" in reason:
            raise ValueError(
                f"refused to load checkpoint {str(path)!r}: it holds objects other than tensors and "
                f"plain containers, which are never unpickled here (weights_only=True): {reason}"
            ) from None
        raise ValueError(f"cannot read checkpoint {str(path)!r} (corrupt or truncated?): {reason}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a kan-lightning checkpoint (no state_dict)")
    return checkpoint


def _reason(err: BaseException) -> str:
    """One line of a loading error: torch's weights-only failures span a page, and their
    reason is the first line after ``WeightsUnpickler error:``."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def check_state_matches(checkpoint: dict[str, Any], module: nn.Module, path: str | Path) -> None:
    """Refuse, naming a differing entry, a checkpoint whose state has other tensors than
    ``module`` (another model type or depth). Shapes are not compared: a KAN layer takes the
    grid size of a saved (extended) grid, and the pruning callback rebuilds pruned widths."""
    saved = checkpoint.get("state_dict") or {}
    current = module.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    if missing or unexpected:
        detail = f"it lacks {missing[:3]}" if missing else f"it has {unexpected[:3]}, which this model lacks"
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this model ({detail}): resume with the model config it was trained with"
        )


def model_from_checkpoint(checkpoint: dict[str, Any] | str | Path) -> nn.Module:
    """The trained network stored in a checkpoint written by :class:`KANRegressor`."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    meta = checkpoint.get("kan_lightning")
    if not meta or meta.get("model_class") not in MODEL_CLASSES:
        found = meta.get("model_class") if meta else None
        raise ValueError(f"checkpoint holds no known kan-lightning model (model_class={found!r})")
    model = MODEL_CLASSES[meta["model_class"]](**meta["model_config"])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model
