"""Mixed and half precision through the spline kernel: autocast on CPU, real Lightning Trainers."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from kan_lightning.api import KANTrainer
from kan_lightning.nn import KAN, KANLayer
from kan_lightning.nn.kernels import spline_contract
from kan_lightning.commands.train import train

FAST = ["debug=fast", "trainer.enable_progress_bar=false"]
HALF = [torch.bfloat16, torch.float16]


def _layer(grid_size: int = 8, extrapolate: str = "bases") -> KANLayer:
    torch.manual_seed(0)
    layer = KANLayer(3, 4, grid_size=grid_size, extrapolate=extrapolate)
    with torch.no_grad():
        layer.spline_weight.normal_()
    return layer


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("contraction", ["dense", "local"])
def test_half_input_is_computed_in_float32(dtype, contraction) -> None:
    """A half-precision ``x`` gives exactly the float32 result at the rounded input: bases and
    contraction in float32, whatever the half type or an active autocast."""
    layer = _layer()
    x = torch.rand(50, 3) * 2.4 - 1.2
    coef = layer.scaled_coefficients().detach()
    expected = spline_contract(x.to(dtype).float(), layer.grid, coef, 3, uniform=True, contraction=contraction)
    got = spline_contract(x.to(dtype), layer.grid, coef, 3, uniform=True, contraction=contraction)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    with torch.autocast("cpu", dtype=dtype):
        under_autocast = spline_contract(x.to(dtype), layer.grid, coef, 3, uniform=True, contraction=contraction)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, expected)
    # all three in half precision (a model converted with .to(dtype)): output in that dtype
    half = spline_contract(x.to(dtype), layer.grid.to(dtype), coef.to(dtype), 3, uniform=True, contraction=contraction)
    assert half.dtype == dtype and torch.isfinite(half).all()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("extrapolate", ["bases", "linear"])
def test_layer_under_autocast_matches_float32(dtype, extrapolate) -> None:
    """Forward and gradients of a layer under CPU autocast stay within the half type's rounding
    of the float32 ones (only the base branch's matmul runs in the autocast dtype)."""
    layer = _layer(extrapolate=extrapolate)
    x = (torch.rand(200, 3) * 2.4 - 1.2).requires_grad_(True)
    ref = layer(x)
    ref.square().sum().backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    tol = 4 * torch.finfo(dtype).eps
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= tol
    for got, want in zip([x.grad] + [p.grad for p in layer.parameters()], ref_grads):
        assert got.dtype == want.dtype
        assert ((got - want).abs().max() / want.abs().max()).item() <= 8 * tol


def test_float32_path_unchanged_by_autocast_off() -> None:
    """Outside autocast, float32/float64 go straight through; mixing them stays an error."""
    layer = _layer().double()
    x = torch.rand(20, 3, dtype=torch.float64, requires_grad=True)
    coef = layer.scaled_coefficients().detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, c: spline_contract(a, layer.grid, c, 3, uniform=True), (x, coef))
    with pytest.raises(TypeError, match="one dtype"):
        spline_contract(x.float(), layer.grid, coef, 3)
    with pytest.raises(TypeError, match="float tensors"):
        spline_contract(x.long(), layer.grid, coef, 3)


def _fit(precision, **kwargs):
    torch.manual_seed(0)
    x = torch.rand(256, 2) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + x[:, 1:] ** 2
    trainer = KANTrainer(KAN([2, 5, 1], grid_size=5), precision=precision, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning: 16-mixed on CPU runs as bf16-mixed
        history = trainer.train(x[:200], y[:200], x[200:], y[200:], epochs=30, batch_size=64, verbose=False)
        metrics = trainer.metrics(x[200:], y[200:])
    return history, metrics


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_kantrainer_trains_in_mixed_precision(precision) -> None:
    history, metrics = _fit(precision)
    assert all(math.isfinite(v) for v in history["train_loss"])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert math.isfinite(metrics["rmse"])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_kan_train_runs_in_mixed_precision(make_cfg, precision) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = train(make_cfg(*FAST, f"trainer.precision={precision}"))
    assert record["status"] == "completed"
    assert math.isfinite(record["metrics"]["test/rmse"])


def test_float16_autocast_trainer_on_cpu() -> None:
    """Real fp16 autocast with a gradient scaler (Lightning itself maps ``16-mixed`` on CPU to
    bf16): a plugin forced to float16."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from kan_lightning.lit import KANRegressor

    torch.manual_seed(0)
    x = torch.rand(128, 2) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + x[:, 1:] ** 2
    module = KANRegressor(KAN([2, 5, 1], grid_size=5), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    seen = []

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            with trainer.precision_plugin.forward_context():
                seen.append(torch.get_autocast_dtype("cpu"))

    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", plugins=[plugin], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Recorder()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
        (result,) = trainer.test(module, dataloaders=loader, verbose=False)
    assert seen and all(d == torch.float16 for d in seen)
    assert math.isfinite(result["test/rmse"])
