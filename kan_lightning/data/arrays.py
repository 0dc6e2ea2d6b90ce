"""Data given as tensors (the Python API): checks, sampling a function, and a LightningDataModule."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from kan_lightning.data.sampling import make_dataset
from kan_lightning.data.functions import TargetFunction, validate_domain
from kan_lightning.data.normalization import normalize_x, normalize_y

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def create_dataset(
    func: Callable[[Tensor], Tensor],
    n_samples: int,
    input_dim: int,
    noise_level: float = 0.0,
    x_range: Any = (-1.0, 1.0),
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``n_samples`` inputs uniformly in ``x_range`` and ``y = func(x)`` with noise.

    ``func`` maps ``(N, input_dim)`` to ``(N,)`` or ``(N, 1)`` (it is called on float64 inputs);
    ``x`` and ``y`` (``(N, 1)``) come in torch's default dtype, float32 unless set otherwise, as
    pykan's do: after ``torch.set_default_dtype(torch.float64)`` the targets are exact to float64
    rather than float32 roundings. ``x_range``: one ``(low, high)`` for every input or one pair
    per input. The noise is relative, as everywhere in this package: ``noise_level * std(y) *
    N(0, 1)``. Without ``seed`` the draw comes from torch's global generator (``torch.manual_seed`` makes it
    repeatable), so two calls give different points (e.g. a training and a test set).
    """
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}")
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    domain = validate_domain(list(x_range) if not isinstance(x_range, str) else x_range, input_dim)
    name = getattr(func, "__name__", "func")

    def fn(x: Tensor) -> Tensor:
        y = torch.as_tensor(func(x))
        if y.dim() == 1:
            y = y.unsqueeze(1)
        if y.shape != (x.shape[0], 1):
            raise ValueError(f"func must map (N, {input_dim}) to (N,) or (N, 1), got {tuple(y.shape)}")
        return y

    target = TargetFunction(name=name, fn=fn, input_dim=input_dim, domain=domain, description=name)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    x, y = make_dataset(target, int(n_samples), seed=seed, noise_level=float(noise_level))
    dtype = torch.get_default_dtype()
    return x.to(dtype), y.to(dtype)


def as_2d(t: Any, name: str) -> Tensor:
    """``t`` as an ``(N, d)`` real tensor with N >= 1 and no NaN/Inf, else a ``ValueError``
    naming it (with the count and the first bad row of non-finite values)."""
    try:
        t = torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor of numbers: {str(err).splitlines()[0] if str(err) else err!r}") from None
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() == 1:
        t = t.unsqueeze(1)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d) or (N,), got {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.is_floating_point():
        bad = ~torch.isfinite(t).all(dim=1)
        count = int(bad.sum())
        if count:
            first = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} has {count} row(s) with NaN/Inf out of {t.shape[0]}; first bad row {first}: {t[first].tolist()}")
    return t


def check_widths(widths: Any, x: Tensor, y: Tensor | None, names: tuple[str, str]) -> None:
    """The tensors' widths against the network's ``layers_hidden`` (input first, output last)."""
    if not widths:
        return
    if x.shape[1] != widths[0]:
        raise ValueError(f"{names[0]} has {x.shape[1]} column(s) but the model takes {widths[0]} input(s) (layers_hidden={list(widths)})")
    if y is not None and y.shape[1] != widths[-1]:
        raise ValueError(f"{names[1]} has {y.shape[1]} column(s) but the model has {widths[-1]} output(s) (layers_hidden={list(widths)})")


def training_arrays(x_train: Any, y_train: Any, x_val: Any, y_val: Any, widths: Any) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """Training and (optional) validation pairs, checked (:func:`as_2d`, same lengths, the
    network's ``widths``): ``((x_train, y_train), (x_val, y_val) or None)``."""
    x_train, y_train = as_2d(x_train, "x_train"), as_2d(y_train, "y_train")
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"x_train and y_train need the same, non-zero length: {x_train.shape[0]} vs {y_train.shape[0]}")
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    check_widths(widths, x_train, y_train, ("x_train", "y_train"))
    if x_val is None:
        return (x_train, y_train), None
    x_val, y_val = as_2d(x_val, "x_val"), as_2d(y_val, "y_val")
    if x_val.shape[0] != y_val.shape[0]:
        raise ValueError(f"x_val and y_val need the same length: {x_val.shape[0]} vs {y_val.shape[0]}")
    check_widths(widths, x_val, y_val, ("x_val", "y_val"))
    return (x_train, y_train), (x_val, y_val)


class ArrayDataModule(L.LightningDataModule):
    """Tensors as a datamodule, normalized with ``normalization`` and cast to ``dtype``, under
    the names kan-train's datamodule uses: ``x_train`` / ``y_train`` and ``x_val`` / ``y_val``
    (``None`` without validation data) for the callbacks (grid updates, the grid-extension
    stage records and ``keep_best``, the polish's patience), ``normalization`` (targets' scale)
    for ``KANRegressor``. The normalization is applied in float64, then rounded once."""

    def __init__(
        self,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor] | None,
        batch_size: int,
        normalization: Mapping[str, Tensor] | None,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        norm = normalization
        prepare = lambda x, y: (  # noqa: E731
            (normalize_x(x.double(), norm) if norm else x).to(dtype), (normalize_y(y.double(), norm) if norm else y).to(dtype)
        )
        self.x_train, self.y_train = prepare(*train)
        self.x_val, self.y_val = prepare(*val) if val is not None else (None, None)
        self.batch_size = batch_size
        self.normalization = {k: norm[k] for k in ("y_mean", "y_std")} if norm else {"y_mean": torch.zeros(()), "y_std": torch.ones(())}
        self.seed = seed
        self.input_dim, self.output_dim = self.x_train.shape[1], self.y_train.shape[1]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ())))
        return DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        if self.x_val is None:
            return []  # type: ignore[return-value]
        return DataLoader(TensorDataset(self.x_val, self.y_val), batch_size=max(self.batch_size, 1024))
