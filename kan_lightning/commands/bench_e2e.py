"""``kan-bench --mode e2e``: a training step under a Lightning Trainer against a bare PyTorch loop."""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kan_lightning.nn import KAN

from .bench_layer import sync_device


def _e2e_data(n: int, dtype, device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _bare_loop(model: nn.Module, x: Tensor, y: Tensor, steps: int, device: str) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        sync_device(device)
        times.append(time.perf_counter() - start)
    return times


def _minimal_module(model: nn.Module):
    """A LightningModule whose training step is the bare loop's (MSE, no logging, no metrics):
    the floor of any Lightning loop. (Lightning is imported only in e2e mode.)"""
    import lightning as L

    class Minimal(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return F.mse_loss(self.model(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Minimal()


def _lightning_steps(module, x: Tensor, y: Tensor, steps: int, device: str) -> list[float]:
    """Wall time between consecutive training-batch starts of a Lightning fit of ``module``
    (full batch, so one step per epoch: epoch-end work is included, as it is in such a run)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from kan_lightning.data.datamodule import BatchedTensorDataset, keep_batch

    starts: list[float] = []

    class StepClock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync_device(device)
            starts.append(time.perf_counter())

    loader = DataLoader(BatchedTensorDataset(x, y), batch_size=x.shape[0], collate_fn=keep_batch)
    trainer = L.Trainer(
        max_steps=steps + 1,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[StepClock()],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in zip(starts[:-1], starts[1:])]


def run_e2e(args) -> dict:
    """A KAN [2, 5, 1] (G = 5) trained full-batch on 1000 points with Adam: seconds per step
    in a bare loop, under a Lightning Trainer with a minimal LightningModule (Lightning's own
    per-step cost) and with KANRegressor (no logger/checkpoints/progress bar/summary; its
    metrics and logging on top), each on an identical copy of the model."""
    from kan_lightning.lit import KANRegressor

    dtype = getattr(torch, args.dtype[0])
    if args.threads:
        torch.set_num_threads(args.threads[0] or torch.get_num_threads())
    torch.manual_seed(0)
    x, y = _e2e_data(1000, dtype, args.device)
    model = KAN([2, 5, 1], grid_size=5, spline_order=args.order).to(device=args.device, dtype=dtype)
    steps = args.warmup + args.repeats
    regressor = KANRegressor(copy.deepcopy(model), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    times = {
        "lightning_ms": _lightning_steps(regressor, x, y, steps, args.device),
        "minimal_lightning_ms": _lightning_steps(_minimal_module(copy.deepcopy(model)), x, y, steps, args.device),
        "bare_ms": _bare_loop(copy.deepcopy(model), x, y, steps, args.device),
    }
    rec = {name: 1e3 * statistics.median(t[args.warmup :]) for name, t in times.items()}
    rec["ratio"] = rec["lightning_ms"] / rec["bare_ms"]
    rec["minimal_ratio"] = rec["minimal_lightning_ms"] / rec["bare_ms"]
    markdown = "\n".join(
        [
            "Median wall time per training step (ms): KAN [2,5,1], G=5, 1000 points full batch, Adam; "
            "Lightning: time between consecutive batch starts (includes epoch-end work). The minimal "
            "LightningModule does the bare loop's step (no metrics, no logging): Lightning's own cost.",
            "",
            "| KANRegressor | minimal LightningModule | bare loop | KANRegressor / bare | minimal / bare |",
            "|---:|---:|---:|---:|---:|",
            f"| {rec['lightning_ms']:.2f} | {rec['minimal_lightning_ms']:.2f} | {rec['bare_ms']:.2f} "
            f"| {rec['ratio']:.2f}x | {rec['minimal_ratio']:.2f}x |",
        ]
    )
    return {"mode": "e2e", "results": rec, "markdown": markdown}


