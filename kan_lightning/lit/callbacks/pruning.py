"""Pruning: prune the KAN once while training, and load checkpoints of either width."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from .common import fit_inputs, network, rebuild_optimizers


class Pruning(L.Callback):
    """Prune the KAN once, at the start of epoch ``at_epoch``, on the training inputs.

    Hidden nodes whose incoming or outgoing activation score is at most ``threshold`` are
    removed (:meth:`KAN.prune`); with ``edge_threshold`` weak edges of the result are then
    masked. The smaller network replaces ``pl_module.model`` and the optimizers are rebuilt;
    with ``drop_penalties`` its regularization weights are set to 0 (the paper's pruned KANs:
    sparsify, prune, then fit the smaller network on the data alone).
    Logs ``prune/width_<l>`` for every width and ``prune/num_parameters``; :attr:`widths` keeps
    the widths before and after.

    Checkpoints keep working: while this callback is attached, loading a state dict whose
    KAN widths differ from the module's (resuming after the pruning, or testing a "best"
    checkpoint from before it) first rebuilds ``pl_module.model`` with the saved widths.
    """

    def __init__(
        self,
        at_epoch: int = 0,
        threshold: float = 1e-2,
        edge_threshold: float | None = None,
        max_samples: int | None = None,
        drop_penalties: bool = False,
    ) -> None:
        if at_epoch < 0:
            raise ValueError(f"at_epoch must be >= 0, got {at_epoch!r}")
        if not threshold >= 0 or (edge_threshold is not None and not edge_threshold >= 0):
            raise ValueError(f"thresholds must be >= 0, got {threshold!r}, {edge_threshold!r}")
        self.at_epoch = int(at_epoch)
        self.threshold = float(threshold)
        self.edge_threshold = edge_threshold
        self.max_samples = max_samples
        self.drop_penalties = bool(drop_penalties)
        self.done = False
        self.widths: dict[str, list[int]] = {}
        self._hooked: set[int] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        if id(pl_module) not in self._hooked:
            pl_module.register_load_state_dict_pre_hook(_match_saved_widths)
            self._hooked.add(id(pl_module))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.done or trainer.current_epoch < self.at_epoch:
            return
        self.prune(trainer, pl_module, batch)

    def prune(self, trainer, pl_module, batch=None) -> None:
        model = network(pl_module)
        if not hasattr(model, "prune"):
            raise TypeError(f"Pruning needs a model with prune (a KAN), got {type(model).__name__}")
        param = next(model.parameters())
        x = fit_inputs(trainer, batch, self.max_samples).to(device=param.device, dtype=param.dtype)
        pruned = model.prune(x, threshold=self.threshold)
        if self.edge_threshold is not None:
            pruned.prune_edges(self.edge_threshold, x)
        if self.drop_penalties:
            for term in pruned.regularization:
                pruned.regularization[term] = 0.0
        pl_module.model = pruned
        rebuild_optimizers(pl_module)
        self.done = True
        self.widths = {"before": list(model.layers_hidden), "after": list(pruned.layers_hidden)}
        for l, width in enumerate(pruned.layers_hidden):
            pl_module.log(f"prune/width_{l}", float(width), on_step=False, on_epoch=True)
        pl_module.log("prune/num_parameters", float(sum(p.numel() for p in pruned.parameters())), on_step=False, on_epoch=True)
        rank_zero_info(f"Pruning: widths {self.widths['before']} -> {self.widths['after']} at epoch {trainer.current_epoch}")

    def report(self) -> dict:
        """For the run's record: ``{at_epoch, threshold, drop_penalties, widths}`` (``widths``
        ``{before, after}``, empty until pruned)."""
        return {"at_epoch": self.at_epoch, "threshold": self.threshold, "drop_penalties": self.drop_penalties, "widths": dict(self.widths)}

    def state_dict(self) -> dict:
        return {"done": self.done, "widths": self.widths}

    def load_state_dict(self, state_dict: dict) -> None:
        self.done = state_dict.get("done", False)
        self.widths = dict(state_dict.get("widths", {}))


def _match_saved_widths(module, state_dict, prefix, *args) -> None:
    """A load_state_dict pre-hook: rebuild ``module.model`` (a KAN) with the widths stored in
    ``state_dict`` when they differ (grids and weights are then loaded as usual)."""
    from kan_lightning.nn import KAN

    model = getattr(module, "model", None)
    if not isinstance(model, KAN):
        return
    key = prefix + "model.layers.{}.base_weight"
    n = len(model.layers)
    shapes = [state_dict.get(key.format(i)) for i in range(n)]
    if any(s is None for s in shapes) or key.format(n) in state_dict:
        return  # another depth: let loading report it
    widths = [int(shapes[0].shape[1])] + [int(s.shape[0]) for s in shapes]
    if widths == list(model.layers_hidden):
        return
    config = {**model.config, "layers_hidden": widths, "regularization": dict(model.regularization)}
    if "base_activation" not in config:
        config["base_activation"] = model.layers[0].base_activation
    param = next(model.parameters())
    module.model = KAN(**config).to(device=param.device, dtype=param.dtype)
    rank_zero_info(f"Pruning: rebuilt the network with the saved widths {widths}")
