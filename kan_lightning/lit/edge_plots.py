"""EdgePlots: the KAN network diagram in TensorBoard and as PNGs while training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from kan_lightning.analysis.plots import figure_to_array, plot_layer_edges, plot_network, save_figure


class EdgePlots(L.Callback):
    """Draw the network (every edge function, faded by importance; see
    :func:`kan_lightning.analysis.plots.plot_network`) every ``every_n_epochs`` training epochs
    and once more when fitting ends.

    Each figure is logged as an image under ``tag`` to every :class:`TensorBoardLogger`, with
    one more image per layer of at most ``max_layer_edges`` edges (``<tag>_layer<l>``: a panel
    per edge, legible where the network diagram is too wide), and, with ``save_png``, written to
    ``<dirpath>/network_epoch<NNN>.png`` (``network_final.png`` at the end). Saved files also go
    to MLflow as artifacts (``figures/``) and to W&B as images. ``dirpath`` defaults to ``<trainer.default_root_dir>/
    figures``. The edges are evaluated on the first ``n_points`` training inputs of the
    datamodule. Models without KAN layers (the MLP) are skipped. Only rank 0 draws.
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        n_points: int = 500,
        dirpath: str | None = None,
        tag: str = "kan/network",
        save_png: bool = True,
        plot_on_fit_end: bool = True,
        dpi: int = 80,
        max_layer_edges: int = 64,
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs!r}")
        if n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {n_points!r}")
        self.every_n_epochs = every_n_epochs
        self.n_points = n_points
        self.dirpath = dirpath
        self.tag = tag
        self.save_png = save_png
        self.plot_on_fit_end = plot_on_fit_end
        self.dpi = dpi
        self.max_layer_edges = max_layer_edges
        self.saved: list[Path] = []
        self._last_step: int | None = None
        self._warned = False

    def _inputs(self, trainer: L.Trainer) -> torch.Tensor | None:
        x = getattr(getattr(trainer, "datamodule", None), "x_train", None)
        return None if x is None else x[: self.n_points]

    def _directory(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "figures"

    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        """Draw now; log to TensorBoard and save ``<dirpath>/network_<name>.png``."""
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, "model", pl_module)
        x = self._inputs(trainer)
        if not hasattr(model, "layers") or not hasattr(model, "activations") or x is None:
            if not self._warned:
                rank_zero_warn("EdgePlots: needs a KAN model and a datamodule with x_train; not plotting")
                self._warned = True
            return
        fig = plot_network(model, x, title=f"epoch {trainer.current_epoch}, step {trainer.global_step}", dpi=self.dpi)
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if boards:
            images = {self.tag: figure_to_array(fig)}
            images.update(self._layer_images(model, x))
            for logger in boards:
                for tag, image in images.items():
                    logger.experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="HWC")
        if self.save_png:
            path = save_figure(fig, self._directory(trainer) / f"network_{name}.png")
            self.saved.append(path)
            _to_file_loggers(trainer, path, self.tag)
        self._last_step = trainer.global_step

    @torch.no_grad()
    def _layer_images(self, model: torch.nn.Module, x: torch.Tensor) -> dict:
        images, h = {}, x.to(next(model.parameters()))
        for index, layer in enumerate(model.layers):
            if layer.in_features * layer.out_features <= self.max_layer_edges:
                fig = plot_layer_edges(layer, h, title=f"layer {index}: {layer.in_features} -> {layer.out_features}", panel_size=1.6)
                images[f"{self.tag}_layer{index}"] = figure_to_array(fig)
            h = layer(h)
        return images

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.plot(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plot_on_fit_end and self._last_step != trainer.global_step:
            self.plot(trainer, pl_module, "final")


def _to_file_loggers(trainer: L.Trainer, path: Path, tag: str) -> None:
    """A saved figure to the loggers that keep files: MLflow (an artifact under ``figures/``)
    and W&B (an image under ``tag``)."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="figures")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[str(path)], step=trainer.global_step)
