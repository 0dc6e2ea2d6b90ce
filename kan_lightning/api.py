"""The plain-Python way in: ``KANTrainer``, ``create_dataset`` and friends.

The usage guide's workflow, with real Lightning underneath (no second training loop)::

    from kan_lightning import KAN, KANTrainer

    model = KAN(layers_hidden=[2, 20, 20, 1], grid_size=5, spline_order=3)
    trainer = KANTrainer(model=model, optimizer_name="Adam", lr=0.01, weight_decay=1e-4)
    x, y = trainer.create_dataset(func=f, n_samples=5000, input_dim=2, noise_level=0.01, x_range=(-2, 2))
    history = trainer.train(x_train, y_train, x_val, y_val, epochs=100, batch_size=256,
                            regularize_activation=1e-3, regularize_entropy=1e-4, patience=50,
                            lr_schedule="cosine", verbose=True)
    test_mse = trainer.evaluate(x_test, y_test)
    predictions = trainer.predict(x_test)
    trainer.save("kan_model.pth"); model = load_model("kan_model.pth")

``train`` builds a :class:`~kan_lightning.lit.KANRegressor` and a ``lightning.Trainer`` (no
logger, no checkpoints, no files unless asked), so any Lightning callback of this package
(:class:`~kan_lightning.lit.GridExtension`, :class:`~kan_lightning.lit.Pruning`...) can be
passed in ``callbacks``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from kan_lightning.data.datamodule import fit_normalization, make_dataset
from kan_lightning.data.functions import TargetFunction, validate_domain
from kan_lightning.lit.checkpoint import build_from_plain, check_stored_targets, load_plain
from kan_lightning.nn import KAN, MLP
from kan_lightning.nn.activations import ACTIVATIONS

__all__ = [
    "KANEnsemble",
    "KANTrainer",
    "NormalizedModel",
    "create_dataset",
    "cross_validate",
    "load_model",
    "transfer_weights",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "lbfgs": torch.optim.LBFGS,
}
DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2, "lbfgs": 1.0}
LR_SCHEDULES = ("cosine", "plateau")
SAVE_FORMAT = "kan_lightning.api.model"
SAVE_VERSION = 1
SAVED_TRAINER_KEYS = ("optimizer_name", "lr", "weight_decay", "optimizer_kwargs")
MODEL_CLASSES: dict[str, type[nn.Module]] = {"KAN": KAN, "MLP": MLP}


# ---------------------------------------------------------------------------------------------
# Data


def create_dataset(
    func: Callable[[Tensor], Tensor],
    n_samples: int,
    input_dim: int,
    noise_level: float = 0.0,
    x_range: Any = (-1.0, 1.0),
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``n_samples`` inputs uniformly in ``x_range`` and ``y = func(x)`` with noise.

    ``func`` maps ``(N, input_dim)`` to ``(N,)`` or ``(N, 1)``; ``y`` is returned as ``(N, 1)``
    float32. ``x_range``: one ``(low, high)`` for every input or one pair per input. The noise
    is relative, as everywhere in this package: ``noise_level * std(y) * N(0, 1)``. Without
    ``seed`` the draw comes from torch's global generator (``torch.manual_seed`` makes it
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
    return make_dataset(target, int(n_samples), seed=seed, noise_level=float(noise_level))


class _TensorDataModule(L.LightningDataModule):
    """In-memory tensors as a datamodule: ``x_train`` for grid callbacks, ``normalization``
    (target standardization) for :class:`KANRegressor`."""

    def __init__(self, train, val, batch_size: int, normalization: dict[str, Tensor], seed: int | None) -> None:
        super().__init__()
        self.x_train, self.y_train = train
        self.val = val
        self.batch_size = batch_size
        self.normalization = normalization
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ())))
        return DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        if self.val is None:
            return []  # type: ignore[return-value]
        x, y = self.val
        return DataLoader(TensorDataset(x, y), batch_size=max(self.batch_size, 1024))


# ---------------------------------------------------------------------------------------------
# Inference wrapper


class NormalizedModel(nn.Module):
    """A network trained on normalized data, mapping raw inputs to raw outputs:
    ``model((x - x_shift) / x_scale) * y_std + y_mean`` (traceable for TorchScript)."""

    def __init__(self, model: nn.Module, normalization: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        param = next(model.parameters())
        for key in ("x_shift", "x_scale", "y_mean", "y_std"):
            self.register_buffer(key, torch.as_tensor(normalization[key]).to(device=param.device, dtype=param.dtype).clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.x_shift) / self.x_scale) * self.y_std + self.y_mean


class _PlainKAN(nn.Module):
    """The forward pass of a KAN written with the layers' plain-PyTorch pieces (basis matrix
    times coefficients): the same function, traceable whatever kernel the layers use."""

    def __init__(self, kan: KAN, full_grid: bool = False) -> None:
        super().__init__()
        self.kan = kan
        # The full-grid recursion needs only comparisons and arithmetic (ONNX has no searchsorted).
        self.full_grid = full_grid

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        for layer in self.kan.layers:
            flat = x.reshape(-1, layer.in_features)
            base = layer.base_activation(flat) @ (layer.base_weight * layer.mask).T
            bases = layer.spline_bases(flat, full_grid=self.full_grid)
            x = base + bases.flatten(1) @ layer.scaled_coefficients().flatten(1).T
        return x.reshape(*shape[:-1], x.shape[-1])


def _traceable(module: nn.Module, full_grid: bool = False) -> nn.Module:
    if isinstance(module, KAN):
        return _PlainKAN(module, full_grid)
    if isinstance(module, NormalizedModel) and isinstance(module.model, KAN):
        wrapped = copy.copy(module)
        wrapped._modules = dict(module._modules, model=_PlainKAN(module.model, full_grid))
        return wrapped
    return module


def _is_identity(normalization: Mapping[str, Tensor] | None) -> bool:
    if normalization is None:
        return True
    return bool(
        (normalization["x_shift"] == 0).all()
        and (normalization["x_scale"] == 1).all()
        and (normalization["y_mean"] == 0).all()
        and (normalization["y_std"] == 1).all()
    )


# ---------------------------------------------------------------------------------------------
# Quiet Lightning


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Silence Lightning's info messages and its advice warnings (few workers, logging
    interval...), not real warnings of this package."""
    if not enabled:
        yield
        return
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*Total length of .* across ranks is zero.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _BestWeights(L.Callback):
    """Keep, in memory, the network with the lowest validation loss seen so far."""

    def __init__(self, monitor: str = "val/loss") -> None:
        self.monitor = monitor
        self.best = math.inf
        self.model: nn.Module | None = None
        self.state: dict[str, Tensor] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best = float(value)
            self.model = pl_module.model
            self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def restore(self) -> nn.Module | None:
        if self.model is None or self.state is None:
            return None
        self.model.load_state_dict(self.state)
        return self.model


# ---------------------------------------------------------------------------------------------
# KANTrainer


def _optimizer_factory(name: str, lr: float | None, weight_decay: float, kwargs: Mapping[str, Any]):
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer_name {name!r}; known: Adam, AdamW, SGD, LBFGS")
    options: dict[str, Any] = {"lr": DEFAULT_LR[key] if lr is None else float(lr)}
    if key == "lbfgs":
        if weight_decay:
            raise ValueError("LBFGS has no weight_decay: use weight_decay=0 (or a regularization) with LBFGS")
        options.update(max_iter=20, history_size=10, line_search_fn="strong_wolfe")
    else:
        options["weight_decay"] = float(weight_decay)
    options.update(kwargs)
    return functools.partial(OPTIMIZERS[key], **options)


def _as_2d(t: Tensor, name: str) -> Tensor:
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


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _check_widths(model: nn.Module, x: Tensor, y: Tensor | None, names: tuple[str, str]) -> None:
    """The data's widths against the network's (input first, output last)."""
    widths = getattr(model, "layers_hidden", None)
    if not widths:
        return
    if x.shape[1] != widths[0]:
        raise ValueError(f"{names[0]} has {x.shape[1]} column(s) but the model takes {widths[0]} input(s) (layers_hidden={list(widths)})")
    if y is not None and y.shape[1] != widths[-1]:
        raise ValueError(f"{names[1]} has {y.shape[1]} column(s) but the model has {widths[-1]} output(s) (layers_hidden={list(widths)})")


def _plain(value: Any) -> Any:
    """Containers of Python scalars, strings and tensors only (loadable with weights_only)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__}: {value!r}")


def _model_record(model: nn.Module) -> tuple[str, dict[str, Any]]:
    name = type(model).__name__
    if MODEL_CLASSES.get(name) is not type(model):
        raise TypeError(f"save supports {', '.join(MODEL_CLASSES)} models, got {type(model).__qualname__}")
    config = dict(getattr(model, "config", {}))
    if isinstance(model, KAN) and "base_activation" not in config:
        activation = model.layers[0].base_activation
        names = [n for n, cls in ACTIVATIONS.items() if type(activation) is cls]
        if not names:
            raise TypeError(f"cannot save a KAN whose base_activation is {type(activation).__name__}: use one of {sorted(ACTIVATIONS)}")
        config["base_activation"] = names[0]
    return name, _plain(config)


class KANTrainer:
    """Train, evaluate, save and export a KAN (or the MLP baseline) from plain tensors.

    Args:
        model: the network (:class:`~kan_lightning.nn.KAN` or :class:`~kan_lightning.nn.MLP`).
        optimizer_name: ``"Adam"``, ``"AdamW"``, ``"SGD"`` or ``"LBFGS"`` (any case).
        lr: learning rate (default: 1e-3 Adam/AdamW, 1e-2 SGD, 1 LBFGS).
        weight_decay: L2 weight decay (not for LBFGS).
        optimizer_kwargs: more optimizer arguments (e.g. ``{"momentum": 0.9}`` for SGD).
        accelerator, devices, precision: passed to ``lightning.Trainer``.
        default_root_dir: where Lightning may write (logs, checkpoints); nothing is written
            unless ``logger`` or ``enable_checkpointing`` asks for it.
        logger: ``False`` (default), ``True`` (TensorBoard under ``default_root_dir``) or
            Lightning logger(s).
        enable_checkpointing: let Lightning save checkpoints into ``default_root_dir``.
        seed: seeds Lightning (weights of nothing new, but shuffling and dropout) per ``train``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_name: str = "Adam",
        lr: float | None = None,
        weight_decay: float = 0.0,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        accelerator: str = "cpu",
        devices: int | str = 1,
        precision: str | int = "32-true",
        default_root_dir: str | Path | None = None,
        logger: Any = False,
        enable_checkpointing: bool = False,
        seed: int | None = None,
    ) -> None:
        from kan_lightning.lit import KANRegressor

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1):
            raise ValueError(f"seed must be an integer from 0 to 4294967295 (Lightning's bounds) or None, got {seed!r}")
        self.optimizer_name = optimizer_name
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self._optimizer = _optimizer_factory(optimizer_name, lr, weight_decay, self.optimizer_kwargs)
        self.accelerator = accelerator
        self.devices = devices
        self.precision = precision
        self.default_root_dir = None if default_root_dir is None else str(default_root_dir)
        if (logger is True or enable_checkpointing) and default_root_dir is None:
            raise ValueError("a logger or checkpointing writes files: give default_root_dir")
        self.logger = logger
        self.enable_checkpointing = enable_checkpointing
        self.seed = seed
        self.module = KANRegressor(model, optimizer=self._optimizer)
        self.normalization: dict[str, Tensor] | None = None
        self.history: dict[str, list[float]] = {}
        self.trainer: L.Trainer | None = None

    # -- model ------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The network (a new object after a :class:`~kan_lightning.lit.Pruning` callback)."""
        return self.module.model

    def inference_module(self) -> nn.Module:
        """Raw inputs to raw outputs: the network, wrapped in :class:`NormalizedModel` when
        training normalized the data."""
        if _is_identity(self.normalization):
            return self.model
        return NormalizedModel(self.model, self.normalization)

    # -- data -------------------------------------------------------------------------------

    @staticmethod
    def create_dataset(
        func: Callable[[Tensor], Tensor],
        n_samples: int,
        input_dim: int,
        noise_level: float = 0.0,
        x_range: Any = (-1.0, 1.0),
        seed: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """See :func:`kan_lightning.api.create_dataset`."""
        return create_dataset(func, n_samples, input_dim, noise_level, x_range, seed)

    def _normalize_x(self, x: Tensor) -> Tensor:
        if self.normalization is None:
            return x
        return (x - self.normalization["x_shift"].to(x)) / self.normalization["x_scale"].to(x)

    def _normalize_y(self, y: Tensor) -> Tensor:
        if self.normalization is None:
            return y
        return (y - self.normalization["y_mean"].to(y)) / self.normalization["y_std"].to(y)

    # -- training ---------------------------------------------------------------------------

    def _lightning_trainer(self, epochs: int, callbacks: list, verbose: bool, n_batches: int, **kwargs) -> L.Trainer:
        logger = self.logger
        if logger is True:
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = TensorBoardLogger(self.default_root_dir, name="kan")
        options = dict(
            max_epochs=epochs,
            accelerator=self.accelerator,
            devices=self.devices,
            precision=self.precision,
            logger=logger,
            enable_checkpointing=self.enable_checkpointing,
            default_root_dir=self.default_root_dir,
            enable_progress_bar=verbose,
            enable_model_summary=verbose,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, n_batches)),
            callbacks=callbacks,
        )
        options.update(kwargs)
        from kan_lightning.logs import quiet_library_noise

        quiet_library_noise()  # Lightning's litlogger tip, srun hint, pytree deprecation
        return L.Trainer(**options)

    def train(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_val: Tensor | None = None,
        y_val: Tensor | None = None,
        epochs: int = 100,
        batch_size: int | str | None = 256,
        regularize_activation: float | None = None,
        regularize_entropy: float | None = None,
        patience: int | None = None,
        lr_schedule: str | Callable | None = None,
        verbose: bool = True,
        grid_update: bool | Mapping[str, Any] = True,
        normalize_inputs: bool = False,
        normalize_targets: bool = False,
        restore_best: bool = True,
        min_delta: float = 0.0,
        callbacks: Iterable[L.Callback] = (),
        **trainer_kwargs: Any,
    ) -> dict[str, list[float]]:
        """Fit the model with a Lightning ``Trainer``; returns this call's per-epoch history.

        Args:
            x_train, y_train: ``(N, d_in)`` and ``(N, d_out)`` (or ``(N,)``) tensors.
            x_val, y_val: optional validation data (early stopping, best weights, ``val_loss``).
            epochs: maximum number of epochs.
            batch_size: an integer, or ``"full"``/``None`` for full-batch (LBFGS).
            regularize_activation, regularize_entropy: the KAN paper's activation L1 and entropy
                weights (``model.regularization["l1"]`` / ``["entropy"]``; ``None`` keeps them).
            patience: stop after this many epochs without ``min_delta`` improvement of the
                validation loss (of the training loss without validation data).
            lr_schedule: ``"cosine"`` (to 1e-6 over ``epochs``), ``"plateau"`` (halve after 10
                stale epochs), ``None``, or a factory ``optimizer -> scheduler`` (stepped per epoch).
            verbose: progress bar and model summary; ``False`` is silent.
            grid_update: adapt the KAN's grids to the training inputs every 20 steps until step
                200 (a dict gives :class:`~kan_lightning.lit.GridUpdate` arguments; ``False``: off).
            normalize_inputs, normalize_targets: fit x -> [-1, 1] and y -> mean 0, std 1 on the
                training data (first call only); predictions stay in the original units.
            restore_best: with validation data, end with the weights of the best validation loss.
            callbacks: more Lightning callbacks (e.g. ``GridExtension``, ``Pruning``).
            trainer_kwargs: more ``lightning.Trainer`` arguments (e.g. ``gradient_clip_val``).

        Returns:
            ``{"epoch", "train_loss", "val_loss", "train_mse", "val_mse", "lr": [...]}``; also
            appended to :attr:`history`. Losses are on the (normalized) training targets and
            include the regularization for ``train_loss``; ``*_mse`` are in original units.
        """
        from kan_lightning.lit import GridUpdate, History

        x_train, y_train = _as_2d(x_train, "x_train"), _as_2d(y_train, "y_train")
        if x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
            raise ValueError(f"x_train and y_train need the same, non-zero length: {x_train.shape[0]} vs {y_train.shape[0]}")
        has_val = x_val is not None and y_val is not None
        if (x_val is None) != (y_val is None):
            raise ValueError("give both x_val and y_val, or neither")
        _check_widths(self.model, x_train, y_train, ("x_train", "y_train"))
        if has_val:
            x_val, y_val = _as_2d(x_val, "x_val"), _as_2d(y_val, "y_val")
            if x_val.shape[0] != y_val.shape[0]:
                raise ValueError(f"x_val and y_val need the same length: {x_val.shape[0]} vs {y_val.shape[0]}")
            _check_widths(self.model, x_val, y_val, ("x_val", "y_val"))
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if batch_size in (None, "full"):
            batch_size = x_train.shape[0]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, 'full' or None, got {batch_size!r}")

        model = self.model
        regularization = getattr(model, "regularization", None)
        for key, value in (("l1", regularize_activation), ("entropy", regularize_entropy)):
            if value is None:
                continue
            if regularization is None:
                if value:
                    raise ValueError(f"{type(model).__name__} has no regularization: regularize_* needs a KAN")
                continue
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"regularization weights must be finite and >= 0, got {value!r}")
            regularization[key] = float(value)

        if self.normalization is None and (normalize_inputs or normalize_targets):
            self.normalization = fit_normalization(x_train.float(), y_train.float(), normalize_inputs, normalize_targets)
        norm = self.normalization
        y_norm = {"y_mean": norm["y_mean"], "y_std": norm["y_std"]} if norm else {"y_mean": torch.zeros(()), "y_std": torch.ones(())}
        param = next(model.parameters())
        cast = lambda t: t.to(dtype=param.dtype)  # noqa: E731
        train_data = (cast(self._normalize_x(x_train)), cast(self._normalize_y(y_train)))
        val_data = (cast(self._normalize_x(x_val)), cast(self._normalize_y(y_val))) if has_val else None
        datamodule = _TensorDataModule(train_data, val_data, batch_size, y_norm, self.seed)

        if lr_schedule is None:
            self.module.scheduler_factory = None
        elif callable(lr_schedule):
            self.module.scheduler_factory = lr_schedule
        elif lr_schedule == "cosine":
            base_lr = self._optimizer.keywords["lr"]
            self.module.scheduler_factory = functools.partial(
                torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs, eta_min=min(1e-6, base_lr)
            )
        elif lr_schedule == "plateau":
            self.module.scheduler_factory = functools.partial(
                torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min", factor=0.5, patience=10
            )
        else:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, None or a callable, got {lr_schedule!r}")
        monitor = "val/loss" if has_val else "train/objective_epoch"
        self.module.scheduler_interval = "epoch"
        self.module.scheduler_monitor = monitor

        history = History()
        all_callbacks: list[L.Callback] = [history]
        if grid_update and hasattr(model, "update_grid"):
            all_callbacks.append(GridUpdate(**(dict(grid_update) if isinstance(grid_update, Mapping) else {})))
        if patience is not None:
            from lightning.pytorch.callbacks import EarlyStopping

            all_callbacks.append(EarlyStopping(monitor=monitor, patience=int(patience), min_delta=min_delta, mode="min", verbose=False))
        best = _BestWeights() if (restore_best and has_val) else None
        if best is not None:
            all_callbacks.append(best)
        all_callbacks.extend(callbacks)

        n_batches = math.ceil(x_train.shape[0] / batch_size)
        with _quiet(not verbose):
            if self.seed is not None:
                L.seed_everything(self.seed, verbose=False)
            trainer = self._lightning_trainer(epochs, all_callbacks, verbose, n_batches, **trainer_kwargs)
            self.trainer = trainer
            trainer.fit(self.module, datamodule=datamodule)
        if best is not None:
            restored = best.restore()
            if restored is not None:
                self.module.model = restored
        for key, values in history.history.items():
            self.history.setdefault(key, []).extend(values)
        return history.history

    # -- inference --------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 65536) -> Tensor:
        """Predictions ``(N, d_out)`` in the original units, on ``x``'s device."""
        x = _as_2d(x, "x")
        _check_widths(self.model, x, None, ("x", "y"))
        module = self.inference_module()
        param = next(module.parameters())
        was_training = module.training
        module.eval()
        try:
            out = [module(chunk.to(device=param.device, dtype=param.dtype)) for chunk in x.split(batch_size)]
        finally:
            module.train(was_training)
        return torch.cat(out).to(x.device)

    def evaluate(self, x: Tensor, y: Tensor) -> float:
        """Mean squared error of the predictions on ``(x, y)``, in the targets' units."""
        return self.metrics(x, y)["mse"]

    def metrics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """``mse``, ``rmse``, ``mae`` and ``r2`` on ``(x, y)``."""
        y = _as_2d(y, "y")
        if torch.as_tensor(x).shape[:1] != y.shape[:1]:
            raise ValueError(f"x and y need the same length: {torch.as_tensor(x).shape[0]} vs {y.shape[0]}")
        pred = self.predict(x).to(torch.float64)
        y = y.to(device=pred.device, dtype=torch.float64)
        if pred.shape != y.shape:
            raise ValueError(f"y has shape {tuple(y.shape)}, predictions {tuple(pred.shape)}")
        mse = float((pred - y).pow(2).mean())
        var = float(y.var(correction=0))
        return {
            "mse": mse,
            "rmse": math.sqrt(mse),
            "mae": float((pred - y).abs().mean()),
            "r2": 1 - mse / var if var > 0 else math.nan,
        }

    # -- saving -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Save the complete model: weights, model config, normalization, training history
        and optimizer settings, as plain containers (``torch.load(..., weights_only=True)``
        reads it; :func:`load_model` rebuilds the network without any training code)."""
        model_class, config = _model_record(self.model)
        record = {
            "format": SAVE_FORMAT,
            "version": SAVE_VERSION,
            "model_class": model_class,
            "model_config": config,
            "model_state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "normalization": _plain(self.normalization),
            "training_history": _plain(self.history),
            "trainer_config": _plain(
                {
                    "optimizer_name": self.optimizer_name,
                    "lr": self.lr,
                    "weight_decay": self.weight_decay,
                    "optimizer_kwargs": self.optimizer_kwargs,
                }
            ),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> "KANTrainer":
        """A trainer for the model saved at ``path`` (its optimizer settings unless overridden
        in ``kwargs``), with its normalization and history."""
        record = _read(path)
        model = _build_model(record)
        options = record.get("trainer_config") or {}
        if not isinstance(options, dict):
            raise ValueError(f"{record['path']!r}: trainer_config is a {type(options).__name__}, not a mapping")
        # only the settings save() writes: a file must not choose where anything is written
        unknown = [k for k in options if k not in SAVED_TRAINER_KEYS]
        if unknown:
            raise ValueError(f"{record['path']!r}: trainer_config.{unknown[0]} is not one of the saved settings {SAVED_TRAINER_KEYS}")
        options = {**options, **kwargs}
        trainer = cls(model, **options)
        trainer.normalization = record.get("normalization")
        trainer.history = {k: list(v) for k, v in (record.get("training_history") or {}).items()}
        return trainer

    # -- export -----------------------------------------------------------------------------

    def export_torchscript(self, path: str | Path, example: Tensor | None = None, atol: float = 1e-6) -> Path:
        """Trace the inference network (normalization included) to TorchScript at ``path``,
        then load it back and check it against the eager network on ``example`` and on a batch
        of another size; raises ``RuntimeError`` on a mismatch.

        When the layers' forward cannot be traced (a custom autograd kernel), the same function
        is traced through the layers' plain-PyTorch basis evaluation instead."""
        module = copy.deepcopy(self.inference_module()).eval()
        param = next(module.parameters())
        d_in = self.model.layers_hidden[0]
        if example is None:
            example = torch.rand(8, d_in, dtype=param.dtype, device=param.device) * 2 - 1
        example = _as_2d(example, "example").to(device=param.device, dtype=param.dtype)
        other = torch.cat([example, example[:1] * 0.5])  # another batch size
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for candidate in (module, _traceable(module)):
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                    traced = torch.jit.trace(candidate, (example,), check_inputs=[(other,)])
                torch.jit.save(traced, str(path))
                break
            except RuntimeError as err:  # e.g. "Could not export Python function call"
                errors.append(err)
        else:
            raise RuntimeError(f"cannot trace the model to TorchScript: {errors[-1]}") from errors[-1]
        loaded = torch.jit.load(str(path), map_location=param.device)
        with torch.no_grad():
            for inputs in (example, other):
                err = float((loaded(inputs) - module(inputs)).abs().max())
                if not err <= atol:
                    raise RuntimeError(f"TorchScript export differs from the eager model by {err:g} (> {atol:g})")
        return path

    def export_onnx(self, path: str | Path, example: Tensor | None = None, opset_version: int = 17) -> Path:
        """Export the inference network to ONNX (needs the ``onnx`` package)."""
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ImportError(
                "export_onnx needs the 'onnx' package (pip install onnx); TorchScript export "
                "(export_torchscript) works without it"
            ) from None
        module = copy.deepcopy(self.inference_module()).eval()
        param = next(module.parameters())
        if example is None:
            example = torch.rand(8, self.model.layers_hidden[0], dtype=param.dtype, device=param.device) * 2 - 1
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # ONNX has no op for the custom autograd kernel: export the plain-PyTorch formulation.
        torch.onnx.export(
            _traceable(module, full_grid=True),
            (example.to(device=param.device, dtype=param.dtype),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=opset_version,
            dynamo=False,
        )
        return path


# ---------------------------------------------------------------------------------------------
# Loading


def _read(path: str | Path) -> dict[str, Any]:
    """The record of a saved model: unpickled with ``weights_only=True``, refused (naming the
    file) when empty, corrupt, foreign, or naming any ``_target_`` (the record is plain data)."""
    path = Path(path)
    record = load_plain(path, "model file")
    check_stored_targets(record, path)
    if not isinstance(record, dict) or record.get("format") != SAVE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a model saved by KANTrainer.save")
    version = record.get("version", 0)
    if not isinstance(version, int) or version > SAVE_VERSION:
        raise ValueError(f"{str(path)!r} has format version {version!r}, newer than this package reads")
    record["path"] = str(path)
    return record


def _build_model(record: Mapping[str, Any]) -> nn.Module:
    path = record.get("path", "model file")
    name = record.get("model_class")
    cls = MODEL_CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{str(path)!r}: unknown model_class {name!r}; known: {', '.join(MODEL_CLASSES)}")
    model = build_from_plain(cls, record.get("model_config"), "model_config", path)
    state = record.get("model_state_dict")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{str(path)!r}: model_state_dict is not a mapping of tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{str(path)!r}: its weights do not fit its model_config: {str(err).splitlines()[0]}") from None
    return model


def load_model(path: str | Path) -> nn.Module:
    """The network saved by :meth:`KANTrainer.save`, mapping raw inputs to raw outputs: the
    :class:`~kan_lightning.nn.KAN` itself, or a :class:`NormalizedModel` around it when training
    normalized the data. Read with ``weights_only=True``; in eval mode."""
    record = _read(path)
    model = _build_model(record)
    normalization = record.get("normalization")
    module = model if _is_identity(normalization) else NormalizedModel(model, normalization)
    return module.eval()


# ---------------------------------------------------------------------------------------------
# More from the guide: transfer, ensembles, cross-validation


@torch.no_grad()
def transfer_weights(
    src: KAN, dst: KAN, layer_mapping: Mapping[int, int] | None = None, x: Tensor | None = None
) -> KAN:
    """Copy ``src``'s layers into ``dst`` (``layer_mapping``: src index -> dst index; default
    all, in order), refitting the spline coefficients when the grid sizes differ.

    Each mapped ``dst`` layer takes ``src``'s grid, refined or coarsened to its own grid size
    like :meth:`KANLayer.extend_grid` (least squares on dense samples of the grid range; exact
    there when the finer grid contains the coarser one), and ``src``'s base weights, spline
    scales and masks. With data ``x`` (all layers, in order) the grids are instead fitted to
    each layer's inputs on ``x`` (:meth:`KAN.extend_grid` with ``x``), which also keeps the
    functions where hidden activations leave the grid range. Layers must have the same in/out
    widths and spline order. Returns ``dst``.
    """
    if layer_mapping is None:
        if len(src.layers) != len(dst.layers):
            raise ValueError(f"src has {len(src.layers)} layers and dst {len(dst.layers)}: give layer_mapping")
        layer_mapping = {i: i for i in range(len(src.layers))}
    for s, d in layer_mapping.items():
        a, b = src.layers[s], dst.layers[d]
        if (a.in_features, a.out_features, a.spline_order) != (b.in_features, b.out_features, b.spline_order):
            raise ValueError(
                f"layer {s} -> {d}: shapes differ ((in, out, order) {(a.in_features, a.out_features, a.spline_order)} "
                f"vs {(b.in_features, b.out_features, b.spline_order)})"
            )
    param = dst.layers[0].spline_weight
    sources = {s: src.layers[s] for s in layer_mapping}
    if x is not None:
        if dict(layer_mapping) != {i: i for i in range(len(src.layers))}:
            raise ValueError("transfer with data x maps all layers in order")
        sizes = {layer.grid_size for layer in dst.layers}
        if len(sizes) != 1:
            raise ValueError(f"transfer with data x needs one grid size in dst, got {sorted(sizes)}")
        tmp = copy.deepcopy(src).to(device=param.device, dtype=param.dtype)
        tmp.extend_grid(sizes.pop(), x=x.to(device=param.device, dtype=param.dtype))
        sources = dict(enumerate(tmp.layers))
    for s, d in layer_mapping.items():
        b = dst.layers[d]
        a = copy.deepcopy(sources[s]).to(device=param.device, dtype=param.dtype)
        if a.grid_size != b.grid_size:
            a.extend_grid(b.grid_size)
        b.grid = a.grid.clone()
        b.uniform_grid = a.uniform_grid
        b.spline_weight.copy_(a.spline_weight)
        b.base_weight.copy_(a.base_weight)
        b.spline_scaler.copy_(a.spline_scaler)
        b.mask.copy_(a.mask)
    if all(layer.grid_size == dst.layers[0].grid_size for layer in dst.layers):
        dst.config["grid_size"] = dst.layers[0].grid_size
    return dst


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
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
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
