"""The LightningDataModule of synthetic regression data: checks its settings, samples once, splits,
normalizes on the train part and serves loaders (sampling in ``sampling``, loading in ``loaders``)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import lightning
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kan_lightning.data.functions import TargetFunction, resolve_target
from kan_lightning.data.loaders import BatchedTensorDataset, EpochShuffleSampler, ResumableDataLoader, keep_batch
from kan_lightning.data.normalization import NORM_KEYS, denormalize_y, fit_normalization, normalize_x, normalize_y
from kan_lightning.data.sampling import SAMPLING_MODES, grid_points_per_axis, make_dataset, split_sizes

# ---------------------------------------------------------------------------------------------
# Validation


def _check_split(split: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3:
        raise ValueError(f"split must be three fractions [train, val, test] (3 entries, e.g. [0.8, 0.1, 0.1]), got {split!r}")
    if any(v < 0 or not math.isfinite(v) for v in values):
        raise ValueError(f"split has a negative or non-finite fraction, got {split!r}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split must sum to 1 (it sums to {sum(values):g}), got {split!r}")
    if values[0] == 0:
        raise ValueError(f"split leaves no training data, got {split!r}")
    return values  # type: ignore[return-value]


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_sizes(n_samples: Any, split: tuple[float, float, float]) -> None:
    _check_count("n_samples", n_samples, 1)
    sizes = split_sizes(n_samples, split)
    for part, fraction, size in zip(("train", "val", "test"), split, sizes):
        if fraction > 0 and size == 0:
            raise ValueError(
                f"n_samples={n_samples} is too small for split={list(split)}: the {part} part "
                "would be empty"
            )


def _check_batch_size(batch_size: Any) -> int | str:
    if batch_size == "full":
        return batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or 'full', got {batch_size!r}")
    return batch_size


def _check_noise(noise_level: Any) -> float:
    if isinstance(noise_level, bool) or not isinstance(noise_level, numbers.Real) or not (
        math.isfinite(noise_level) and noise_level >= 0
    ):
        raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level!r}")
    return float(noise_level)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_dtype(dtype: Any) -> torch.dtype:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def _part_tensor(part: str, index: int) -> property:
    """A read-only property for the inputs (index 0) or targets (1) of one split part."""
    return property(lambda self: self._part(part)[index])


def _plain_domain(domain: Any) -> Any:
    # OmegaConf ListConfig (possibly nested) to plain lists; scalars pass through.
    if domain is None or isinstance(domain, (str, numbers.Real)):
        return domain
    return [_plain_domain(v) for v in domain]


class SyntheticFunctionDataModule(lightning.LightningDataModule):
    """Regression data sampled from a named target function or a user formula.

    The data is generated once, deterministically from ``seed``: x uniform in the domain (or on a
    grid), y = target(x) plus Gaussian noise of ``noise_level`` times std(y), then a random
    train/val/test split. Normalization, when enabled, is fitted on the train split only and is
    saved with checkpoints through ``state_dict``. When ``formula`` is given it takes precedence
    over ``function`` (so a formula can be set without also clearing the default function).
    Targets and normalization are computed in float64; ``dtype`` is the tensors' dtype (kan-train
    sets float64 for a 64-bit trainer: a float64 network fits the function, not its float32
    rounding, which extrapolation past the training sample amplifies).
    """

    def __init__(
        self,
        function: str | None = "guide_example",
        formula: str | None = None,
        input_dim: int | None = None,
        domain: Any = None,
        n_samples: int = 5000,
        noise_level: float = 0.0,
        split: Any = (0.8, 0.1, 0.1),
        seed: int = 0,
        batch_size: int | str = 256,
        normalize_inputs: bool = False,
        normalize_targets: bool = False,
        num_workers: int = 0,
        sampling: str = "uniform",
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if formula is not None:
            function = None
        self._target = resolve_target(function, formula, input_dim, _plain_domain(domain))
        self._split = _check_split(split)
        _check_sizes(n_samples, self._split)
        self._n_samples = n_samples
        self._noise_level = _check_noise(noise_level)
        self._seed = int(seed)
        self._batch_size = _check_batch_size(batch_size)
        self._num_workers = _check_count("num_workers", num_workers, 0)
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling={sampling!r} must be one of {SAMPLING_MODES}")
        if sampling == "grid":
            grid_points_per_axis(n_samples, self._target.input_dim)
        self._sampling = sampling
        self._normalize_inputs = _check_flag("normalize_inputs", normalize_inputs)
        self._normalize_targets = _check_flag("normalize_targets", normalize_targets)
        self._dtype = _check_dtype(dtype)
        self._raw: dict[str, tuple[Tensor, Tensor]] | None = None
        self._data: dict[str, tuple[Tensor, Tensor]] = {}
        self._norm: dict[str, Tensor] | None = None

    # -- generation -----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Generate, split and normalize the data; later calls are no-ops."""
        if self._raw is not None:
            return
        generator = torch.Generator().manual_seed(self._seed)
        # Draw the split first and the noise last, so the noise level changes neither the points
        # nor the split: runs that differ only in noise see the same inputs.
        order = torch.randperm(self._n_samples, generator=generator)
        x, y = make_dataset(
            self._target,
            self._n_samples,
            noise_level=self._noise_level,
            generator=generator,
            sampling=self._sampling,
        )
        n_train, n_val, _ = split_sizes(self._n_samples, self._split)
        parts = torch.split(order, [n_train, n_val, self._n_samples - n_train - n_val])
        self._raw = {name: (x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), parts)}
        if self._norm is None:  # a normalization restored from a checkpoint wins
            x_train, y_train = self._raw["train"]
            self._norm = fit_normalization(
                x_train, y_train, self._normalize_inputs, self._normalize_targets, self._target.domain
            )
        self._apply_normalization()

    def _apply_normalization(self) -> None:
        assert self._raw is not None
        self._data = {
            name: (self.normalize_x(x).to(self._dtype), self.normalize_y(y).to(self._dtype))
            for name, (x, y) in self._raw.items()
        }

    def _ensure_setup(self) -> None:
        if self._raw is None:
            self.setup()

    # -- normalization --------------------------------------------------------------------------

    @property
    def normalization(self) -> dict[str, Tensor]:
        """``x_shift, x_scale, y_mean, y_std``: x_norm = (x - x_shift) / x_scale, same for y."""
        if self._norm is None:
            self._ensure_setup()
        assert self._norm is not None
        return dict(self._norm)

    def normalize_x(self, x: Tensor) -> Tensor:
        return normalize_x(x, self.normalization)

    def normalize_y(self, y: Tensor) -> Tensor:
        return normalize_y(y, self.normalization)

    def denormalize_y(self, y: Tensor) -> Tensor:
        return denormalize_y(y, self.normalization)

    def state_dict(self) -> dict[str, Any]:
        return {
            "normalization": {k: v.clone() for k, v in self.normalization.items()},
            "normalize_inputs": self._normalize_inputs,
            "normalize_targets": self._normalize_targets,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("normalization")
        if not isinstance(saved, dict) or set(saved) != set(NORM_KEYS):
            raise ValueError(
                f"datamodule state needs 'normalization' with keys {NORM_KEYS}, got "
                f"{None if not isinstance(saved, dict) else sorted(saved)}"
            )
        norm = {k: torch.as_tensor(saved[k], dtype=torch.float64).clone() for k in NORM_KEYS}
        dim = self._target.input_dim
        if norm["x_shift"].shape != (dim,) or norm["x_scale"].shape != (dim,):
            raise ValueError(
                f"saved normalization is for input dim {tuple(norm['x_shift'].shape)}, "
                f"this datamodule has input_dim {dim}"
            )
        self._norm = norm
        if self._raw is not None:  # setup already ran (Lightning restores after setup)
            self._apply_normalization()

    # -- shapes and tensors ---------------------------------------------------------------------

    @property
    def target(self) -> TargetFunction:
        return self._target

    @property
    def input_dim(self) -> int:
        return self._target.input_dim

    @property
    def output_dim(self) -> int:
        return 1

    def _part(self, name: str) -> tuple[Tensor, Tensor]:
        self._ensure_setup()
        return self._data[name]

    # x_train, y_train, x_val, ...: the (normalized) tensors of each part.
    x_train = _part_tensor("train", 0)
    y_train = _part_tensor("train", 1)
    x_val = _part_tensor("val", 0)
    y_val = _part_tensor("val", 1)
    x_test = _part_tensor("test", 0)
    y_test = _part_tensor("test", 1)

    # -- loaders --------------------------------------------------------------------------------

    def _loader(self, *tensors: Tensor, shuffle: bool) -> DataLoader:
        n = tensors[0].shape[0]
        batch_size = max(1, n) if self._batch_size == "full" else self._batch_size
        options = dict(
            batch_size=batch_size,
            num_workers=self._num_workers,
            persistent_workers=self._num_workers > 0,
            collate_fn=keep_batch,
        )
        dataset = BatchedTensorDataset(*tensors)
        if shuffle:
            # Shuffled by (seed, epoch), resumable inside an epoch: see EpochShuffleSampler.
            return ResumableDataLoader(dataset, sampler=EpochShuffleSampler(n, self._seed), **options)
        return DataLoader(dataset, shuffle=False, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader(*self._part("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(*self._part("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(*self._part("test"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.x_test, shuffle=False)
