"""Several KANs trained alike: an averaging ensemble and k-fold cross-validation (the guide's)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from kan_lightning.api import KANTrainer
from kan_lightning.data.arrays import as_2d
from kan_lightning.nn import KAN


class KANEnsemble(nn.Module):
    """Several KANs whose predictions are averaged (the guide's ensemble): ``forward``
    returns ``(mean, std)`` over the members (``std`` 0 for a single member).

    ``kan_configs``: one KAN config dict or a list of them; each gets ``ensemble_size``
    independently initialized members.
    """

    def __init__(self, kan_configs: Mapping[str, Any] | Sequence[Mapping[str, Any]], ensemble_size: int = 5) -> None:
        super().__init__()
        if isinstance(kan_configs, Mapping):
            kan_configs = [kan_configs]
        if ensemble_size < 1 or not kan_configs:
            raise ValueError("need at least one config and ensemble_size >= 1")
        self.models = nn.ModuleList([KAN(**config) for config in kan_configs for _ in range(ensemble_size)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        predictions = torch.stack([model(x) for model in self.models])
        std = predictions.std(dim=0) if len(self.models) > 1 else torch.zeros_like(predictions[0])
        return predictions.mean(dim=0), std

    def fit(self, x_train: Tensor, y_train: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None,
            trainer_kwargs: Mapping[str, Any] | None = None, **train_kwargs: Any) -> list[dict[str, list[float]]]:
        """Train every member with its own :class:`KANTrainer`; returns their histories."""
        histories = []
        for i, model in enumerate(self.models):
            trainer = KANTrainer(model, **dict(trainer_kwargs or {}))
            histories.append(trainer.train(x_train, y_train, x_val, y_val, **train_kwargs))
            self.models[i] = trainer.model  # a pruning callback may have replaced it
        return histories


def cross_validate(
    x: Tensor,
    y: Tensor,
    model_config: Mapping[str, Any],
    cv_folds: int = 5,
    seed: int = 42,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **train_kwargs: Any,
) -> tuple[float, float]:
    """K-fold cross-validation (the guide's ``cross_validate_kan``): a fresh
    ``KAN(**model_config)`` per fold, trained with :meth:`KANTrainer.train` (``train_kwargs``,
    quiet by default) on the other folds and evaluated on its fold. Returns the mean and the
    (population) standard deviation of the validation MSEs."""
    x, y = as_2d(x, "x"), as_2d(y, "y")
    n = x.shape[0]
    if not 2 <= cv_folds <= n:
        raise ValueError(f"cv_folds must be between 2 and the number of samples ({n}), got {cv_folds}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    folds = order.tensor_split(cv_folds)
    train_kwargs.setdefault("verbose", False)
    scores = []
    for k, val_idx in enumerate(folds):
        train_idx = torch.cat([f for j, f in enumerate(folds) if j != k])
        trainer = KANTrainer(KAN(**model_config), **dict(trainer_kwargs or {}))
        trainer.train(x[train_idx], y[train_idx], x[val_idx], y[val_idx], **train_kwargs)
        scores.append(trainer.evaluate(x[val_idx], y[val_idx]))
    scores_t = torch.tensor(scores, dtype=torch.float64)
    return float(scores_t.mean()), float(scores_t.std(correction=0))
