"""The grid stage that ``GridExtension(keep_best=True)`` delivers: the one with the lowest
validation RMSE, its network kept in memory and restored at the end of fit."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.utilities import rank_zero_info

from ..module import measure_network
from .common import network as _network
from .common import rebuild_optimizers as _rebuild


class BestStage:
    """The best stage so far: its record (``record``), a copy of its network's state and widths;
    after :meth:`restore`, the delivered network's ``train/*`` and ``val/*`` figures
    (``measured``)."""

    def __init__(self) -> None:
        self.record: dict | None = None
        self._state: dict | None = None
        self._widths: list | None = None
        self.measured: dict[str, float] = {}

    def consider(self, pl_module, record: dict) -> None:
        """Keep ``record``'s network if its validation RMSE is the lowest so far."""
        value = record.get("val/rmse")
        if value is None or not math.isfinite(value):
            return
        model = _network(pl_module)
        widths = list(getattr(model, "layers_hidden", []))
        # a network pruned since the best stage cannot take its state back: only the stages of
        # the current widths compete
        if self.record is None or widths != self._widths or value < self.record["val/rmse"]:
            self.record, self._widths = dict(record), widths
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, trainer, pl_module, last: dict | None) -> None:
        """Load the best stage's network (its grids too) unless ``last``, the current one, is it;
        measure the delivered network either way (the last stage's polish ran after the last
        validation epoch, so even its logged figures are not the delivered network's)."""
        if self.record is None or self._state is None:
            rank_zero_info("GridExtension: keep_best found no finite validation RMSE; delivering the last stage")
            return
        if last is None or last["stage"] != self.record["stage"] or last["step"] != self.record["step"]:
            model = _network(pl_module)
            model.load_state_dict(self._state)
            if isinstance(getattr(model, "config", None), dict) and "grid_size" in model.config:
                model.config["grid_size"] = model.grid_size
            _rebuild(pl_module)  # the optimizers held the last stage's parameters
            rank_zero_info(
                f"GridExtension: delivering stage {self.record['stage']} (grid {self.record['grid']}, "
                f"val RMSE {self.record['val/rmse']:.4g}); the last stage had val RMSE "
                f"{(last or {}).get('val/rmse', math.nan):.4g}"
            )
        self.measured = self.measure(trainer, pl_module)

    @staticmethod
    def measure(trainer, pl_module) -> dict[str, float]:
        """The delivered network's ``train/*`` and ``val/*`` epoch metrics and ``grid/size``: the
        trainer's last logged ones are from the last validation epoch, before the last stage's
        polish (and of another network when an earlier stage is delivered), and the run record
        must not pair them with the delivered network's test figures."""
        model = _network(pl_module)
        measured = {"grid/size": float(model.grid_size)}
        datamodule = getattr(trainer, "datamodule", None)
        denormalize = getattr(pl_module, "denormalize", None) or (lambda t: t)
        for split in ("train", "val"):
            x, y = getattr(datamodule, f"x_{split}", None), getattr(datamodule, f"y_{split}", None)
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
                measured.update(measure_network(model, x, y, split, denormalize))
        return measured

    def state_dict(self) -> dict:
        return {"delivered": self.record, "best_state": self._state, "best_widths": self._widths}

    def load_state_dict(self, state_dict: dict) -> None:
        self.record = state_dict.get("delivered")
        self._state = state_dict.get("best_state")
        self._widths = state_dict.get("best_widths")
