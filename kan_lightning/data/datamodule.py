"""Synthetic regression data: sample a target function, add noise, split, normalize, load."""

from __future__ import annotations

import math
import numbers
from typing import Any

import lightning
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from kan_lightning.data.functions import TargetFunction, domain_bounds, resolve_target
from kan_lightning.data.normalization import NORM_KEYS, denormalize_y, fit_normalization, normalize_x, normalize_y

SAMPLING_MODES = ("uniform", "grid")
MAX_GRID_POINTS = 10_000_000


# ---------------------------------------------------------------------------------------------
# Sampling


def grid_points_per_axis(n_samples: int, input_dim: int) -> int:
    """Smallest number of points per axis whose full grid holds at least ``n_samples`` points."""
    m = max(1, int(round(n_samples ** (1.0 / input_dim))))
    while m**input_dim < n_samples:
        m += 1
    while m > 1 and (m - 1) ** input_dim >= n_samples:
        m -= 1
    if m**input_dim > MAX_GRID_POINTS:
        raise ValueError(
            f"sampling='grid' needs {m}^{input_dim} grid points for n_samples={n_samples} in "
            f"{input_dim} dimensions (limit {MAX_GRID_POINTS}); use sampling='uniform'"
        )
    return m


def _sample_uniform(target: TargetFunction, n: int, generator: torch.Generator) -> Tensor:
    low, high = domain_bounds(target.domain)
    return low + (high - low) * torch.rand(n, target.input_dim, generator=generator)


def _sample_grid(target: TargetFunction, n: int, generator: torch.Generator) -> Tensor:
    # A full tensor-product grid, then a random subset of n points when the grid is larger.
    m = grid_points_per_axis(n, target.input_dim)
    axes = [torch.linspace(a, b, m, dtype=torch.float32) for a, b in target.domain]
    grid = torch.cartesian_prod(*axes).reshape(-1, target.input_dim)
    keep = torch.randperm(grid.shape[0], generator=generator)[:n]
    return grid[keep]


def check_finite(x: Tensor, y: Tensor, name: str) -> None:
    """Refuse samples whose inputs or targets hold NaN or Inf, saying how many and where."""
    bad = ~(torch.isfinite(x).all(dim=1) & torch.isfinite(y).all(dim=1))
    count = int(bad.sum())
    if count:
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"target {name!r} produced {count} non-finite (NaN/Inf) sample(s) out of "
            f"{x.shape[0]}; first bad row {first}: x={x[first].tolist()}, y={y[first].tolist()}. "
            "Restrict the domain to where the function is defined."
        )


def make_dataset(
    target: TargetFunction,
    n_samples: int,
    seed: int = 0,
    noise_level: float = 0.0,
    generator: torch.Generator | None = None,
    sampling: str = "uniform",
) -> tuple[Tensor, Tensor]:
    """Sample ``n_samples`` float32 points ``x`` in the target's domain and ``y = target(x)``.

    Noise is relative: ``y + noise_level * std(y) * N(0, 1)``, so ``noise_level=0.1`` means noise
    at 10% of the target's own spread whatever its scale. ``generator`` (if given) replaces the
    one seeded by ``seed``.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling={sampling!r} is not one of {SAMPLING_MODES}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    sample = _sample_grid if sampling == "grid" else _sample_uniform
    x = sample(target, n_samples, generator)
    y = target.fn(x).to(torch.float32)
    if y.shape != (n_samples, 1):
        raise ValueError(
            f"target {target.name!r} returned shape {tuple(y.shape)}, expected ({n_samples}, 1)"
        )
    check_finite(x, y, target.name)
    if noise_level > 0:
        scale = noise_level * y.std(correction=0)
        y = y + scale * torch.randn(y.shape, generator=generator)
    return x, y


def split_sizes(n_samples: int, split: tuple[float, float, float]) -> tuple[int, int, int]:
    """Train/val/test sizes from fractions, rounding cumulatively so they always add up."""
    first = round(n_samples * split[0])
    second = round(n_samples * (split[0] + split[1]))
    return first, second - first, n_samples - second


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


def _plain_domain(domain: Any) -> Any:
    # OmegaConf ListConfig (possibly nested) to plain lists; scalars pass through.
    if domain is None or isinstance(domain, (str, numbers.Real)):
        return domain
    return [_plain_domain(v) for v in domain]


# ---------------------------------------------------------------------------------------------
# Shuffling that resumes exactly


_MASK64 = (1 << 64) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s permutation: (seed, epoch) mixed by splitmix64 into 32 bits
    (torch's CPU generator keeps only the low 32 bits of a seed, so ``seed << 32 | epoch`` would
    give every seed the same orders)."""
    z = ((((int(seed) & 0xFFFFFFFF) << 32) | (int(epoch) & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` drawn from ``(seed, epoch)`` alone.

    Lightning calls ``set_epoch`` before every training epoch, so epoch ``e`` sees the same order
    whether the process started at epoch 0 or resumed at ``e`` (a ``RandomSampler`` with one
    generator would depend on how many epochs this process has already drawn). ``skip(k)`` drops
    the first ``k`` indices of the next permutation of the current epoch only (resuming inside an
    epoch); ``len`` stays ``n``.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, indices to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, epoch: int, count: int) -> None:
        self._skip = (int(epoch), int(count)) if count > 0 else None

    def permutation(self, epoch: int | None = None) -> Tensor:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch if epoch is None else epoch))
        return torch.randperm(self.n, generator=generator)

    def __iter__(self):
        start = 0
        if self._skip is not None:
            skip_epoch, count = self._skip
            self._skip = None
            if skip_epoch == self.epoch:
                start = count
        return iter(self.permutation()[start:].tolist())

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochShuffleSampler` whose position inside the epoch is
    saved in checkpoints: Lightning stores ``state_dict()`` of train loaders that have one and
    gives it back through ``load_state_dict`` on resume, so a run resumed from a mid-epoch
    checkpoint sees exactly the batches it had not seen yet. Iteration starts lazily (at the
    first batch, after Lightning's ``set_epoch``)."""

    def __iter__(self):
        return self._batches()

    def _batches(self):
        sampler = self.sampler
        epoch = getattr(sampler, "epoch", 0)
        skipped = getattr(sampler, "_skip", None)
        self._position = (epoch, skipped[1] // self._batch_size() if skipped and skipped[0] == epoch else 0)
        for batch in super().__iter__():
            self._position = (self._position[0], self._position[1] + 1)
            yield batch

    def _batch_size(self) -> int:
        return int(self.batch_size or 1)

    def state_dict(self) -> dict[str, int]:
        epoch, batches = getattr(self, "_position", (getattr(self.sampler, "epoch", 0), 0))
        return {"epoch": int(epoch), "batches": int(batches), "num_batches": len(self)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        sampler = self.sampler
        if not isinstance(sampler, EpochShuffleSampler):
            return
        if batches >= int(state_dict.get("num_batches", len(self))):  # the epoch was complete
            sampler.set_epoch(epoch + 1)
            sampler.skip(epoch + 1, 0)
        else:
            sampler.set_epoch(epoch)
            sampler.skip(epoch, batches * self._batch_size())
        self._position = (sampler.epoch, 0)


# ---------------------------------------------------------------------------------------------
# DataModule


class BatchedTensorDataset(TensorDataset):
    """A TensorDataset that hands the loader a whole batch by one indexing per tensor
    (``__getitems__``), instead of one Python call per sample and a stack in ``collate``: for
    in-memory data that per-sample path costs more than a small KAN's training step."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def keep_batch(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``collate_fn`` for :class:`BatchedTensorDataset`, whose batches come already formed."""
    return batch


class SyntheticFunctionDataModule(lightning.LightningDataModule):
    """Regression data sampled from a named target function or a user formula.

    The data is generated once, deterministically from ``seed``: x uniform in the domain (or on a
    grid), y = target(x) plus Gaussian noise of ``noise_level`` times std(y), then a random
    train/val/test split. Normalization, when enabled, is fitted on the train split only and is
    saved with checkpoints through ``state_dict``. When ``formula`` is given it takes precedence
    over ``function`` (so a formula can be set without also clearing the default function).
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
            name: (self.normalize_x(x), self.normalize_y(y)) for name, (x, y) in self._raw.items()
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
        norm = {k: torch.as_tensor(saved[k], dtype=torch.float32).clone() for k in NORM_KEYS}
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

    @property
    def x_train(self) -> Tensor:
        return self._part("train")[0]

    @property
    def y_train(self) -> Tensor:
        return self._part("train")[1]

    @property
    def x_val(self) -> Tensor:
        return self._part("val")[0]

    @property
    def y_val(self) -> Tensor:
        return self._part("val")[1]

    @property
    def x_test(self) -> Tensor:
        return self._part("test")[0]

    @property
    def y_test(self) -> Tensor:
        return self._part("test")[1]

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
