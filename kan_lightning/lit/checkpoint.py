"""Read checkpoints safely and rebuild the network they hold."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kan_lightning.nn import KAN, MLP

# Only these classes are rebuilt from a checkpoint: nothing named inside a file gets imported.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "kan_lightning.nn.network.KAN": KAN,
    "kan_lightning.nn.mlp.MLP": MLP,
}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs while unpickling), turning
    a missing, truncated or foreign file into an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise ValueError(f"cannot read checkpoint {str(path)!r} (corrupt or truncated?): {err}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} is not a kan-lightning checkpoint (no state_dict)")
    return checkpoint


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
