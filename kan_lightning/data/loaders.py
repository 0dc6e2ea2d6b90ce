"""Loading in-memory tensors: whole-batch indexing, and shuffling that resumes exactly inside an epoch."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

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
