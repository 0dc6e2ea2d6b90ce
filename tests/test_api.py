"""The Python API: the usage guide's code as written, saving, loading and exporting."""

from __future__ import annotations

import math

import pytest
import torch

from kan_lightning import KAN, KANTrainer, create_dataset
from kan_lightning.api import NormalizedModel, load_model, transfer_weights
from kan_lightning.ensemble import KANEnsemble, cross_validate
from kan_lightning.lit import GridExtension
from kan_lightning.lit.metrics import regression_metrics

# The guide trains for 1000 epochs; the test keeps every argument but trains for fewer.
GUIDE_EPOCHS = 3


def target_function(x):
    return torch.sin(x[:, 0]) * torch.exp(-x[:, 1] ** 2)


def test_usage_guide_as_written(capsys, tmp_path, monkeypatch):
    """The guide's "usage guide" section with only the import lines changed."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)

    # -- basic setup
    model = KAN(
        layers_hidden=[2, 20, 20, 1],
        grid_size=5,
        spline_order=3,
        scale_base=1.0,
        scale_spline=1.0
    )
    trainer = KANTrainer(
        model=model,
        optimizer_name="Adam",
        lr=0.01,
        weight_decay=1e-4
    )

    # -- data preparation
    x_train, y_train = trainer.create_dataset(
        func=target_function,
        n_samples=5000,
        input_dim=2,
        noise_level=0.01,
        x_range=(-2, 2)
    )
    train_size = int(0.8 * len(x_train))
    x_val, y_val = x_train[train_size:], y_train[train_size:]
    x_train, y_train = x_train[:train_size], y_train[:train_size]

    # -- training configuration
    config = {
        'epochs': GUIDE_EPOCHS,
        'batch_size': 256,
        'regularize_activation': 1e-3,
        'regularize_entropy': 1e-4,
        'patience': 50,  # early stopping
        'lr_schedule': 'cosine'  # learning rate scheduling
    }
    history = trainer.train(
        x_train, y_train,
        x_val, y_val,
        **config,
        verbose=True
    )

    # -- model evaluation (the guide leaves x_test undefined: a fresh draw)
    x_test, y_test = trainer.create_dataset(
        func=target_function, n_samples=1000, input_dim=2, noise_level=0.0, x_range=(-2, 2)
    )
    test_loss = trainer.evaluate(x_test, y_test)
    predictions = trainer.predict(x_test)

    mse = torch.mean((predictions - y_test) ** 2)
    mae = torch.mean(torch.abs(predictions - y_test))
    r2 = 1 - mse / torch.var(y_test)

    print(f"test mse: {mse:.6f}")
    print(f"test mae: {mae:.6f}")
    print(f"r² score: {r2:.6f}")

    out = capsys.readouterr().out
    assert "test mse:" in out and "r² score:" in out
    assert x_train.shape == (4000, 2) and y_train.shape == (4000, 1) and x_val.shape == (1000, 2)
    assert float(x_train.min()) >= -2 and float(x_train.max()) <= 2
    assert isinstance(test_loss, float) and test_loss == pytest.approx(float(mse), rel=1e-5)
    assert predictions.shape == y_test.shape
    assert float(r2) > 0.9, f"r2={float(r2)} after {GUIDE_EPOCHS} epochs"
    for key in ("train_loss", "val_loss", "lr"):
        assert len(history[key]) == GUIDE_EPOCHS and all(math.isfinite(v) for v in history[key])
    assert history["lr"][0] == pytest.approx(0.01)  # cosine schedule from the base rate
    assert history["lr"][-1] < history["lr"][0]
    assert model.regularization["l1"] == 1e-3 and model.regularization["entropy"] == 1e-4
    assert trainer.model is model
    assert not any(tmp_path.iterdir()), "training wrote files"


def test_quiet_when_not_verbose(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 200, 2, x_range=(-2, 2))
    trainer = KANTrainer(KAN([2, 3, 1]), lr=0.01)
    history = trainer.train(x, y, epochs=2, batch_size=100, verbose=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert len(history["train_loss"]) == 2 and all(math.isnan(v) for v in history["val_loss"])
    assert not any(tmp_path.iterdir())


def test_create_dataset_shapes_noise_and_seed():
    x, y = create_dataset(lambda x: x[:, :1] * 2, n_samples=100, input_dim=3, x_range=[(-1, 1), (0, 2), (5, 6)], seed=3)
    assert x.shape == (100, 3) and y.shape == (100, 1) and x.dtype == torch.float32
    assert float(x[:, 2].min()) >= 5 and float(x[:, 1].max()) <= 2
    torch.testing.assert_close(y, 2 * x[:, :1])
    x2, y2 = create_dataset(lambda x: x[:, :1] * 2, n_samples=100, input_dim=3, x_range=[(-1, 1), (0, 2), (5, 6)], seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    a, _ = create_dataset(target_function, 50, 2)
    b, _ = create_dataset(target_function, 50, 2)
    assert not torch.equal(a, b)  # without a seed: independent draws (train vs test)
    xn, yn = create_dataset(target_function, 4000, 2, noise_level=0.1, x_range=(-2, 2), seed=1)
    residual = yn - target_function(xn).unsqueeze(1)
    assert float(residual.std()) == pytest.approx(0.1 * float(yn.std()), rel=0.1)  # relative noise
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        create_dataset(lambda x: x, 10, 2)


@pytest.mark.parametrize(
    "name,kwargs",
    [("LBFGS", dict(batch_size="full")), ("sgd", dict(batch_size=50)), ("AdamW", dict(batch_size=50, lr_schedule="plateau"))],
)
def test_optimizers_by_name(name, kwargs):
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 300, 2, seed=0)
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=3), optimizer_name=name)
    before = trainer.evaluate(x, y)
    trainer.train(x[:200], y[:200], x[200:], y[200:], epochs=3, verbose=False, **kwargs)
    assert type(trainer.trainer.optimizers[0]).__name__.lower() == name.lower()
    assert trainer.evaluate(x, y) < before


def test_grid_extension_keep_best_sees_the_validation_data():
    """The arrays' datamodule names its splits as kan-train's does: GridExtension records the
    validation RMSE of every stage and keep_best delivers the lowest."""
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 400, 2, seed=0)
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=3), optimizer_name="LBFGS")
    extension = GridExtension(grids=[3, 5, 10], at_epochs=[2, 4], keep_best=True, delivered_path=None)
    trainer.train(x[:300], y[:300], x[300:], y[300:], epochs=6, batch_size="full", verbose=False, callbacks=[extension], grid_update=False)
    stages, delivered = extension.report()["stages"], extension.report()["delivered"]
    assert len(stages) == 3 and all(math.isfinite(s["val/rmse"]) for s in stages)
    assert delivered["val/rmse"] == min(s["val/rmse"] for s in stages)
    assert trainer.model.grid_size == delivered["grid"]


def test_a_second_train_call_keeps_the_knots():
    """Grid updates adapt the knots in the first call; a later call continues the trained
    network as it is, unless asked (grid_update=True)."""
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 300, 2, seed=0)
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=4), lr=0.01)
    grids = lambda: [layer.grid.clone() for layer in trainer.model.layers]  # noqa: E731
    start = grids()
    trainer.train(x, y, epochs=1, batch_size=10, verbose=False)  # 30 steps: one update at step 20
    first = grids()
    assert not all(torch.equal(a, b) for a, b in zip(start, first))
    trainer.train(x, y, epochs=1, batch_size=10, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(first, grids()))
    trainer.train(x, y, epochs=1, batch_size=10, verbose=False, grid_update=True)
    assert not all(torch.equal(a, b) for a, b in zip(first, grids()))


def test_64_bit_precision_gets_float64_data():
    """precision="64-true" converts a float32 network to float64: its data are not float32 roundings."""
    torch.manual_seed(0)
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2)
    trainer = KANTrainer(KAN([2, 3, 1]), optimizer_name="LBFGS", precision="64-true")
    trainer.train(x[:150], y[:150], x[150:], y[150:], epochs=1, batch_size="full", verbose=False, normalize_targets=True)
    data, norm = trainer.trainer.datamodule, trainer.normalization
    assert next(trainer.model.parameters()).dtype == data.x_train.dtype == data.y_val.dtype == torch.float64
    assert norm["y_mean"].dtype == torch.float64
    torch.testing.assert_close(data.y_train, (y[:150] - norm["y_mean"]) / norm["y_std"], rtol=1e-15, atol=0)


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(regression_metrics().set_dtype(torch.float64)(pred, y)["r2"])


def _r2_two_pass(pred: torch.Tensor, y: torch.Tensor) -> float:
    """The textbook R^2 with centred targets (no cancellation), averaged over the outputs."""
    y, pred = y.double().numpy(), pred.double().numpy()
    sse, sst = ((y - pred) ** 2).sum(0), ((y - y.mean(0)) ** 2).sum(0)
    return float((1 - sse / sst).mean())


def test_r2_is_not_one_for_small_targets():
    """R^2 against the two-pass formula, also where the residuals are tiny in absolute terms
    (torchmetrics' R2Score reads 1 below a residual sum of 1e-4); constant targets score 1 when
    fitted exactly, else 0 (scikit-learn's convention)."""
    torch.manual_seed(0)
    y = 5 + 1e-4 * torch.randn(300, 1, dtype=torch.float64)
    for pred in (torch.full_like(y, 5.0), y + 3e-5 * torch.randn_like(y), y):
        # (one-pass sums: SST cancels at mean / std = 5e4, hence the absolute tolerance)
        assert _r2(pred, y) == pytest.approx(_r2_two_pass(pred, y), abs=1e-6)
    assert _r2(torch.full_like(y, 5.0), y) < 0.01
    constant = torch.ones(10, 1, dtype=torch.float64)
    assert _r2(constant, constant) == 1.0
    assert _r2(constant + 0.1, constant) == 0.0
    two = torch.randn(50, 2, dtype=torch.float64)
    noisy = two + 0.3 * torch.randn_like(two)
    assert _r2(noisy, two) == pytest.approx(_r2_two_pass(noisy, two), rel=1e-12)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="unknown optimizer_name"):
        KANTrainer(KAN([2, 1]), optimizer_name="Adagrad")
    with pytest.raises(ValueError, match="LBFGS has no weight_decay"):
        KANTrainer(KAN([2, 1]), optimizer_name="LBFGS", weight_decay=1e-4)
    with pytest.raises(ValueError, match="default_root_dir"):
        KANTrainer(KAN([2, 1]), logger=True)


def test_restore_best_and_callbacks():
    """With validation data the final weights are the best epoch's; package callbacks plug in."""
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 400, 2, seed=0)
    trainer = KANTrainer(KAN([2, 3, 1], grid_size=3), lr=0.05)
    extension = GridExtension(grids=[3, 6], at_epochs=[2])
    history = trainer.train(x[:300], y[:300], x[300:], y[300:], epochs=4, batch_size=100, verbose=False, callbacks=[extension])
    assert trainer.model.grid_size == 6 and len(extension.history) == 1
    assert trainer.evaluate(x[300:], y[300:]) == pytest.approx(min(history["val_mse"]), rel=1e-4)


def _same_history(a: dict, b: dict) -> bool:
    same = lambda u, v: u == v or (math.isnan(u) and math.isnan(v))  # noqa: E731
    return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) and all(map(same, a[k], b[k])) for k in a)


def _trained(normalize: bool) -> tuple[KANTrainer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 300, 2, x_range=(-2, 2), seed=0)
    y = 3 * y + 5
    trainer = KANTrainer(KAN([2, 4, 1], grid_size=4), lr=0.02)
    trainer.train(x, y, epochs=2, batch_size=100, verbose=False, normalize_inputs=normalize, normalize_targets=normalize)
    return trainer, x, y


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_save_load_round_trip(tmp_path, normalize):
    trainer, x, y = _trained(normalize)
    path = trainer.save(tmp_path / "kan_model.pth")
    record = torch.load(path, weights_only=True)  # plain containers only
    assert {"model_state_dict", "model_config", "training_history", "normalization"} <= set(record)
    assert record["model_config"]["layers_hidden"] == [2, 4, 1]
    assert len(record["training_history"]["train_loss"]) == 2

    model = load_model(path)
    assert isinstance(model, NormalizedModel if normalize else KAN) and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.predict(x), rtol=0, atol=0)
    again = KANTrainer.load(path)
    torch.testing.assert_close(again.predict(x), trainer.predict(x), rtol=0, atol=0)
    assert _same_history(again.history, trainer.history) and again.optimizer_name == "Adam"
    assert again.evaluate(x, y) == pytest.approx(trainer.evaluate(x, y))
    # the guide's loading recipe works on the saved record too
    kan = KAN(**record["model_config"])
    kan.load_state_dict(record["model_state_dict"])


def test_float64_model_saved_and_loaded_in_float64(tmp_path):
    """A float64 network comes back float64 from load_model and KANTrainer.load (a float32
    model would round its weights: ~1e-7 relative, above what 64-bit fits reach)."""
    torch.manual_seed(0)
    x, y = create_dataset(target_function, 200, 2, seed=0)
    x, y = x.double(), y.double()
    trainer = KANTrainer(KAN([2, 4, 1], grid_size=4).double(), lr=0.02)
    trainer.train(x, y, epochs=2, batch_size=100, verbose=False, normalize_inputs=True)
    path = trainer.save(tmp_path / "m64.pth")
    model = load_model(path)
    assert next(model.parameters()).dtype == torch.float64 and model.x_shift.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(model(x), trainer.predict(x), rtol=0, atol=0)
    again = KANTrainer.load(path)
    assert next(again.model.parameters()).dtype == torch.float64
    torch.testing.assert_close(again.predict(x), trainer.predict(x), rtol=0, atol=0)
    # ... and a float32 network stays float32
    assert next(load_model(_trained(False)[0].save(tmp_path / "m32.pth")).parameters()).dtype == torch.float32


def test_save_after_grid_extension_and_pruning(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(200, 2) * 2 - 1
    model = KAN([2, 5, 1], grid_size=3)
    model.extend_grid(7, x=x)
    pruned = model.prune(x, threshold=0.05)
    trainer = KANTrainer(pruned)
    loaded = load_model(trainer.save(tmp_path / "m.pth"))
    assert loaded.grid_size == 7 and loaded.layers_hidden == pruned.layers_hidden
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_torchscript_export_equals_eager(tmp_path, normalize):
    trainer, x, _ = _trained(normalize)
    path = trainer.export_torchscript(tmp_path / "kan_model_traced.pt", example=x[:16])
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        for batch in (x[:16], x[:5], x):  # also other batch sizes than the example
            torch.testing.assert_close(scripted(batch), trainer.predict(batch), rtol=1e-6, atol=1e-6)


def test_onnx_export(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    trainer, x, _ = _trained(False)
    path = trainer.export_onnx(tmp_path / "kan.onnx", example=x[:4])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = x[:37].to(torch.float32)  # another batch size than the example
    (onnx_out,) = session.run(None, {"x": inputs.numpy()})
    eager = trainer.predict(inputs)
    assert torch.allclose(torch.from_numpy(onnx_out), eager.to(torch.float32), atol=1e-5)


def test_onnx_export_is_checked_against_the_eager_network(tmp_path):
    """The exported file is run with onnxruntime and compared (a tolerance nothing meets fails)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from kan_lightning.export import export_onnx

    x = torch.rand(4, 2) * 2 - 1
    with pytest.raises(RuntimeError, match="ONNX export differs from the eager model"):
        export_onnx(KAN([2, 3, 1]), tmp_path / "kan.onnx", 2, x, atol=-1.0)


def test_onnx_missing_is_a_clear_error(tmp_path):
    try:
        import onnx  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install onnx"):
            KANTrainer(KAN([2, 1])).export_onnx(tmp_path / "kan.onnx")
    else:
        pytest.skip("onnx is installed")


def test_transfer_weights_between_grid_sizes():
    torch.manual_seed(0)
    src = KAN([2, 3, 1], grid_size=5)
    with torch.no_grad():
        for layer in src.layers:
            layer.spline_weight.normal_(0, 0.5)
    dst = transfer_weights(src, KAN([2, 3, 1], grid_size=10))
    u = torch.rand(500, 3) * 2 - 1  # inside every layer's grid range
    with torch.no_grad():
        for a, b in zip(src.layers, dst.layers):  # nested grids: the same functions
            torch.testing.assert_close(b(u[:, : a.in_features]), a(u[:, : a.in_features]), rtol=1e-4, atol=1e-5)
    coarse = transfer_weights(dst, KAN([2, 3, 1], grid_size=5))
    with torch.no_grad():
        torch.testing.assert_close(coarse.layers[0](u[:, :2]), src.layers[0](u[:, :2]), rtol=1e-4, atol=1e-4)
    # with data: each layer's grid follows its inputs (an adapted grid, fitted by least
    # squares: close, not exact), so the whole network is kept
    x = torch.rand(500, 2) * 2 - 1
    fitted = transfer_weights(src, KAN([2, 3, 1], grid_size=10), x=x)
    with torch.no_grad():
        err, scale = (fitted(x) - src(x)).abs(), float(src(x).abs().max())
        assert float(err.mean()) < 3e-3 * scale and float(err.max()) < 5e-2 * scale
    assert fitted.config["grid_size"] == 10
    with pytest.raises(ValueError, match="shapes differ"):
        transfer_weights(src, KAN([2, 4, 1]))


def test_ensemble_and_cross_validation():
    torch.manual_seed(0)
    ensemble = KANEnsemble([{"layers_hidden": [2, 3, 1], "grid_size": 3}], ensemble_size=3)
    x, y = create_dataset(target_function, 120, 2, seed=0)
    mean, std = ensemble(x)
    assert mean.shape == std.shape == (120, 1) and bool((std > 0).all())
    histories = ensemble.fit(x, y, epochs=1, batch_size=60, verbose=False)
    assert len(histories) == 3
    single_mean, single_std = KANEnsemble({"layers_hidden": [2, 1]}, ensemble_size=1)(x)
    assert torch.equal(single_std, torch.zeros_like(single_mean))
    mean_mse, std_mse = cross_validate(x, y, {"layers_hidden": [2, 3, 1], "grid_size": 3}, cv_folds=3, epochs=1, batch_size=40)
    assert math.isfinite(mean_mse) and mean_mse > 0 and std_mse >= 0


def test_linear_extrapolation_exports_with_inputs_past_the_grid(tmp_path):
    """TorchScript and ONNX (full-grid path) keep extrapolate="linear" for inputs outside the grid."""
    torch.manual_seed(0)
    model = KAN([2, 3, 1], grid_size=4, extrapolate="linear")
    with torch.no_grad():
        model.layers[0].spline_weight.normal_()
    trainer = KANTrainer(model)
    x = torch.rand(64, 2) * 6 - 3  # mostly outside [-1, 1]
    eager = trainer.predict(x)
    scripted = torch.jit.load(str(trainer.export_torchscript(tmp_path / "kan.pt", example=x[:8])))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager, rtol=1e-6, atol=1e-6)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(trainer.export_onnx(tmp_path / "kan.onnx", example=x[:4])), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), eager.to(torch.float32), rtol=1e-5, atol=1e-5)
