"""On a CUDA device, against the same work on the CPU: kan-train, mixed precision, the compiled
kernel, Levenberg-Marquardt in both spaces, stacked training and a parallel sweep sharing one GPU.
Skipped where no CUDA device is visible (the CPU paths are tested everywhere else)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from kan_lightning.commands.train import train
from kan_lightning.nn import KAN
from kan_lightning.nn.kernels import spline_contract
from kan_lightning.nn.levenberg_marquardt import levenberg_marquardt
from kan_lightning.stacked.training import Job, train_stack

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = [
    "model.layers_hidden=[2,3,1]",
    "data.n_samples=200",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
]


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _same_metrics(got: dict, expected: dict, tolerance: float) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        # torchmetrics keeps MSE/MAE sums in float32 states, also at 64-bit precision
        bound = max(tolerance, 5e-7) if key.rsplit("/", 1)[-1] in ("mse", "rmse", "mae") else tolerance
        assert _relative(got[key], value) < bound, (key, got[key], value)


def test_kan_train_on_the_gpu_equals_the_cpu(make_cfg, tmp_path):
    runs = {
        accelerator: train(make_cfg(*SMALL, "trainer.precision=64-true", f"trainer.accelerator={accelerator}",
                                    output_dir=tmp_path / accelerator))
        for accelerator in ("cpu", "gpu")
    }
    assert runs["gpu"]["status"] == "completed"
    _same_metrics(runs["gpu"]["metrics"], runs["cpu"]["metrics"], 1e-8)


def test_bf16_mixed_on_the_gpu_trains_like_float32(make_cfg, tmp_path):
    rmse = {
        precision: train(make_cfg(*SMALL, f"trainer.precision={precision}", "trainer.accelerator=gpu",
                                  output_dir=tmp_path / precision))["metrics"]["test/rmse"]
        for precision in ("32-true", "bf16-mixed")
    }
    assert math.isfinite(rmse["bf16-mixed"]) and rmse["bf16-mixed"] < 1.5 * rmse["32-true"], rmse


@pytest.mark.parametrize("contraction", ["dense", "local", "fused"])
@pytest.mark.parametrize("uniform", [True, False])
def test_every_contraction_on_the_gpu_equals_the_cpu(contraction, uniform):
    """Outputs and gradients in float64 (``fused``: compiled by inductor's Triton backend)."""
    torch.manual_seed(0)
    model = KAN([3, 4, 2], grid_size=7).double()
    if not uniform:
        model.update_grid(torch.rand(500, 3, dtype=torch.float64) ** 2 * 2 - 1)
    layer = model.layers[0]
    x = torch.rand(300, 3, dtype=torch.float64) * 2.6 - 1.3
    coef = torch.randn(4, 3, layer.num_bases, dtype=torch.float64)
    results = []
    for device, how in (("cpu", "dense"), ("cuda", contraction)):
        xs, cs = x.to(device).requires_grad_(True), coef.to(device).requires_grad_(True)
        out = spline_contract(xs, layer.grid.to(device), cs, 3, uniform=uniform, contraction=how)
        grads = torch.autograd.grad((out * torch.arange(4.0, dtype=out.dtype, device=device)).sum(), (xs, cs))
        results.append([t.cpu() for t in (out, *grads)])
    for a, b in zip(*results):
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize("grid_size, points", [(5, 200), (40, 60)])  # (P, P) solves; the samples' space
def test_levenberg_marquardt_on_the_gpu_follows_the_cpu(grid_size, points):
    torch.manual_seed(1)
    x = torch.rand(points, 2, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2)
    fits = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(2)
        model = KAN([2, 5, 1], grid_size=grid_size).double().to(device)
        info = levenberg_marquardt(model, x.to(device), y.to(device), iterations=15, smoothness=1e-6)
        fits[device] = (info, model(x.to(device)).detach().cpu())
    (cpu, out_cpu), (gpu, out_gpu) = fits["cpu"], fits["cuda"]
    assert (gpu["iterations"], gpu["solves"]) == (cpu["iterations"], cpu["solves"])
    assert gpu["rmse_after"] < 0.1 * gpu["rmse_before"]
    assert (out_gpu - out_cpu).abs().max().item() <= 1e-6 * out_cpu.abs().max().item()


def test_stacked_training_on_the_gpu_equals_the_cpu(make_cfg, tmp_path):
    results = {}
    for accelerator in ("cpu", "gpu"):
        jobs = [Job(make_cfg(*SMALL, "trainer.precision=64-true", f"trainer.accelerator={accelerator}", f"seed={s}",
                             output_dir=tmp_path / f"{accelerator}{s}")) for s in (1, 2, 3)]
        results[accelerator] = train_stack(jobs)
    for cpu, gpu in zip(results["cpu"], results["gpu"]):
        assert gpu["status"] == "completed" and gpu["stacked"]["models"] == 3
        _same_metrics(gpu["metrics"], cpu["metrics"], 1e-8)


def test_a_parallel_sweep_shares_one_gpu_between_two_slots(tmp_path):
    """Two slots on one GPU: both jobs run at the same time on ``cuda:0`` and complete."""
    command = [sys.executable, "-m", "kan_lightning.commands.train", "-m", *SMALL, "trainer.accelerator=gpu",
               "launcher=parallel", "device_pool.slots=2", f"device_pool.dir={tmp_path / 'pool'}", "seed=1,2",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert sorted(r["device_lease"]["slot"] for r in records) == [0, 1]
