"""The plain-Python way in: ``KANTrainer``, ``create_dataset`` and friends.

The usage guide's workflow, on the same pipeline as ``kan-train``::

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

``KANTrainer`` composes the config ``kan-train`` composes (``optimizer_name`` picks
``conf/optimizer/<name>.yaml``, ``lr_schedule`` ``conf/scheduler/<name>.yaml``, ``patience``
``conf/callbacks/early_stopping.yaml``), builds the ``KANRegressor`` and the Lightning ``Trainer``
with ``kan_lightning.pipeline``, and saves the checkpoint format ``kan-train`` writes. Any
Lightning callback (:class:`~kan_lightning.lit.GridExtension`, :class:`~kan_lightning.lit.Pruning`...)
can be passed in ``callbacks``. Nothing is written unless asked (a logger, checkpointing).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import lightning as L
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from kan_lightning import pipeline
from kan_lightning.api_config import optimizer_config, schedule_choice, set_fit, set_regularization
from kan_lightning.data.arrays import ArrayDataModule, as_2d, check_widths, create_dataset, training_arrays
from kan_lightning.data.normalization import NormalizedModel, fit_normalization, raw_units_network
from kan_lightning.export import export_onnx, export_torchscript
from kan_lightning.lit import History
from kan_lightning.lit.checkpoint import model_file_record, model_from_file, read_model_file, restore_network
from kan_lightning.lit.metrics import regression_metrics
from kan_lightning.logs import quiet_library_noise, quiet_lightning
from kan_lightning.resolver_functions import kan_data_dtype
from kan_lightning.transfer import transfer_weights

__all__ = ["KANTrainer", "NormalizedModel", "create_dataset", "load_model", "transfer_weights"]

# what save() keeps of the trainer: a file must not choose where anything is written
SAVED_TRAINER_KEYS = ("optimizer_name", "lr", "weight_decay", "optimizer_kwargs")
class KANTrainer:
    """Train, evaluate, save and export a KAN (or the MLP baseline) from plain tensors.

    Args:
        model: the network (:class:`~kan_lightning.nn.KAN`, :class:`~kan_lightning.nn.MLP`...).
        optimizer_name: a config of ``conf/optimizer/`` (any case): ``"Adam"``, ``"AdamW"``,
            ``"SGD"`` or ``"LBFGS"``; its settings are the defaults of the ones below.
        lr, weight_decay: the optimizer's (``None``: the config's; LBFGS has no weight decay).
        optimizer_kwargs: more optimizer arguments (e.g. ``{"momentum": 0.0}`` for SGD).
        accelerator, devices, precision: passed to ``lightning.Trainer``.
        default_root_dir: where Lightning may write (logs, checkpoints); nothing is written
            unless ``logger`` or ``enable_checkpointing`` asks for it.
        logger: ``False`` (default), ``True`` (TensorBoard under ``default_root_dir``) or
            Lightning logger(s).
        enable_checkpointing: keep the best checkpoint in ``default_root_dir/checkpoints``.
        seed: seeds Lightning (shuffling, dropout) at every ``train``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer_name: str = "Adam",
        lr: float | None = None,
        weight_decay: float | None = None,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        accelerator: str = "cpu",
        devices: int | str = 1,
        precision: str | int = "32-true",
        default_root_dir: str | Path | None = None,
        logger: Any = False,
        enable_checkpointing: bool = False,
        seed: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1):
            raise ValueError(f"seed must be an integer from 0 to 4294967295 (Lightning's bounds) or None, got {seed!r}")
        if (logger is True or enable_checkpointing) and default_root_dir is None:
            raise ValueError("a logger or checkpointing writes files: give default_root_dir")
        self.optimizer_name, self.lr, self.weight_decay = optimizer_name, lr, weight_decay
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.accelerator, self.devices, self.precision = accelerator, devices, precision
        self.default_root_dir = None if default_root_dir is None else str(default_root_dir)
        self.logger, self.enable_checkpointing, self.seed = logger, enable_checkpointing, seed
        self.module = pipeline.build_module(self._config(), model)
        self.normalization: dict[str, Tensor] | None = None
        self.history: dict[str, list[float]] = {}
        self.trainer: L.Trainer | None = None

    def _config(self, *overrides: str) -> DictConfig:
        """``kan-train``'s config for this trainer's optimizer; ``overrides`` choose other groups."""
        cfg = optimizer_config(self.optimizer_name, self.lr, self.weight_decay, self.optimizer_kwargs, *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir, cfg.seed = self.default_root_dir, self.seed
        return cfg

    @property
    def model(self) -> nn.Module:
        """The network (a new object after a :class:`~kan_lightning.lit.Pruning` callback)."""
        return self.module.model

    def inference_module(self) -> nn.Module:
        """Raw inputs to raw outputs: the network, wrapped in :class:`NormalizedModel` when
        training normalized the data."""
        return raw_units_network(self.model, self.normalization)

    create_dataset = staticmethod(create_dataset)

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
        grid_update: bool | Mapping[str, Any] | None = None,
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
            lr_schedule: a config of ``conf/scheduler/`` (``"cosine"``: to 1e-6 over ``epochs``;
                ``"plateau"``: halve after 10 stale epochs), ``None``, or a factory
                ``optimizer -> scheduler`` (stepped per epoch).
            verbose: progress bar and model summary; ``False`` is silent.
            grid_update: the config's grid updates (every 20 steps until step 200; a dict
                changes :class:`~kan_lightning.lit.GridUpdate` arguments; ``False``: off).
                ``None``: on in the first call only; a later call (or one after :meth:`load`)
                continues the trained network without moving its knots, each of which refits
                its splines and can undo some of the training.
            normalize_inputs, normalize_targets: fit x -> [-1, 1] and y -> mean 0, std 1 on the
                training data (first call only); predictions stay in the original units.
            restore_best: with validation data, end with the weights of the best validation loss
                (Lightning's ``ModelCheckpoint``, in a temporary directory unless checkpointing).
            callbacks: more Lightning callbacks (e.g. ``GridExtension``, ``Pruning``).
            trainer_kwargs: more ``lightning.Trainer`` arguments (e.g. ``gradient_clip_val``).

        Returns:
            ``{"epoch", "train_loss", "val_loss", "train_mse", "val_mse", "lr": [...]}``; also
            appended to :attr:`history`. Losses are on the (normalized) training targets and
            include the regularization for ``train_loss``; ``*_mse`` are in original units.
        """
        widths = getattr(self.model, "layers_hidden", None)
        (x_train, y_train), val = training_arrays(x_train, y_train, x_val, y_val, widths)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        batch_size = x_train.shape[0] if batch_size in (None, "full") else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, 'full' or None, got {batch_size!r}")
        set_regularization(self.model, regularize_activation, regularize_entropy)
        if grid_update is None:
            grid_update = not self.history.get("epoch")
        cfg = self._config(f"scheduler={schedule_choice(lr_schedule)}", f"callbacks={'default' if patience is None else 'early_stopping'}")
        if self.normalization is None and (normalize_inputs or normalize_targets):
            self.normalization = fit_normalization(x_train.double(), y_train.double(), normalize_inputs, normalize_targets)
        # the network's dtype once Lightning has applied the precision (64-true converts it)
        dtype = torch.float64 if kan_data_dtype(self.precision) == "float64" else next(self.model.parameters()).dtype
        datamodule = ArrayDataModule((x_train, y_train), val, batch_size, self.normalization, self.seed, dtype)
        trainer = dict(max_epochs=epochs, accelerator=self.accelerator, devices=self.devices, precision=self.precision,
                       enable_progress_bar=verbose, enable_model_summary=verbose, default_root_dir=self.default_root_dir)
        best = restore_best and val is not None
        with tempfile.TemporaryDirectory(prefix="kan-best-") as tmp:
            checkpoints = str(Path(self.default_root_dir) / "checkpoints") if self.enable_checkpointing else tmp if best else None
            set_fit(cfg, trainer, math.ceil(x_train.shape[0] / batch_size), "val/loss" if val is not None else "train/objective_epoch",
                    grid_update if hasattr(self.model, "update_grid") else False, patience, min_delta, checkpoints)
            self.module = pipeline.build_module(cfg, self.model)
            if callable(lr_schedule):
                self.module.scheduler_factory = lr_schedule
            loggers = pipeline.build_loggers(cfg) if self.logger is True else [] if self.logger in (False, None) else self.logger
            loggers = list(loggers) if isinstance(loggers, (list, tuple)) else [loggers]
            history = History()
            named = pipeline.build_callbacks(cfg, with_loggers=bool(loggers))
            with quiet_lightning(not verbose):
                if self.seed is not None:
                    L.seed_everything(self.seed, verbose=False)
                quiet_library_noise()  # Lightning's litlogger tip, srun hint, pytree deprecation
                self.trainer = pipeline.build_trainer(cfg, [history, *named.values(), *callbacks], loggers, **trainer_kwargs)
                self.trainer.fit(self.module, datamodule=datamodule)
            found = pipeline.best_checkpoint(self.trainer) if checkpoints else None
            if best and found and found["path"]:
                restore_network(self.module, found["path"])
        for key, values in history.history.items():
            self.history.setdefault(key, []).extend(values)
        return history.history

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 65536) -> Tensor:
        """Predictions ``(N, d_out)`` in the original units, on ``x``'s device."""
        x = as_2d(x, "x")
        check_widths(getattr(self.model, "layers_hidden", None), x, None, ("x", "y"))
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
        """``mse``, ``rmse``, ``mae`` and ``r2`` on ``(x, y)`` (the metrics ``KANRegressor`` logs)."""
        y = as_2d(y, "y")
        if torch.as_tensor(x).shape[:1] != y.shape[:1]:
            raise ValueError(f"x and y need the same length: {torch.as_tensor(x).shape[0]} vs {y.shape[0]}")
        pred = self.predict(x).detach().cpu().double()
        if pred.shape != y.shape:
            raise ValueError(f"y has shape {tuple(y.shape)}, predictions {tuple(pred.shape)}")
        values = regression_metrics().set_dtype(torch.float64)(pred, y.cpu().double())
        return {name: float(value) for name, value in values.items()}

    def save(self, path: str | Path) -> Path:
        """Save the model as a checkpoint in ``kan-train``'s format (:func:`load_model` and
        :meth:`load` read it; ``kan-eval`` and ``kan-symbolic`` also need a run's data config,
        which only ``kan-train``'s checkpoints hold), with the normalization, the training
        history and the optimizer settings, as plain containers (``torch.load(..., weights_only=True)``)."""
        settings = {key: getattr(self, key) for key in SAVED_TRAINER_KEYS}
        record = model_file_record(self.module, normalization=self.normalization, training_history=self.history, trainer_config=settings)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> "KANTrainer":
        """A trainer for the model saved at ``path`` (its optimizer settings unless overridden
        in ``kwargs``), with its normalization and history."""
        record = read_model_file(path)
        options = record.get("trainer_config") or {}
        if not isinstance(options, dict):
            raise ValueError(f"{record['path']!r}: trainer_config is a {type(options).__name__}, not a mapping")
        unknown = [k for k in options if k not in SAVED_TRAINER_KEYS]
        if unknown:
            raise ValueError(f"{record['path']!r}: trainer_config.{unknown[0]} is not one of the saved settings {SAVED_TRAINER_KEYS}")
        trainer = cls(model_from_file(record), **{**options, **kwargs})
        trainer.normalization = record.get("normalization")
        trainer.history = {k: list(v) for k, v in (record.get("training_history") or {}).items()}
        return trainer

    def export_torchscript(self, path: str | Path, example: Tensor | None = None, atol: float = 1e-6) -> Path:
        """The inference network (normalization included) traced to TorchScript and checked
        against the eager one (:func:`kan_lightning.export.export_torchscript`)."""
        return export_torchscript(self.inference_module(), path, self.model.layers_hidden[0], example, atol)

    def export_onnx(self, path: str | Path, example: Tensor | None = None, opset_version: int = 17) -> Path:
        """The inference network exported to ONNX (needs the ``onnx`` package; checked against
        the eager one where ``onnxruntime`` is installed: :func:`kan_lightning.export.export_onnx`)."""
        return export_onnx(self.inference_module(), path, self.model.layers_hidden[0], example, opset_version)


def load_model(path: str | Path) -> nn.Module:
    """The network saved by :meth:`KANTrainer.save` (or by ``kan-train``), mapping raw inputs to
    raw outputs: the network itself, or a :class:`NormalizedModel` around it when training
    normalized the data, in the dtype it was saved in (a float64 network takes float64 inputs).
    Read with ``weights_only=True``; in eval mode."""
    record = read_model_file(path)
    model = model_from_file(record)
    normalization = record.get("normalization")
    return raw_units_network(model, normalization).eval()
