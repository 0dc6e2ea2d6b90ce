"""Levenberg-Marquardt on a KAN: the chain-rule Jacobian against autograd, the structured
``J^T J`` against the dense product, the iterates against the dense implementation, the fit, and
the GridExtension option under a real Lightning trainer."""

import lightning as L
import pytest
import torch
from torch.func import functional_call, jacrev

from kan_lightning.data.datamodule import SyntheticFunctionDataModule
from kan_lightning.lit import KANRegressor
from kan_lightning.commands.bench_lm import reference_levenberg_marquardt
from kan_lightning.lit.callbacks import GridExtension, Pruning
from kan_lightning.lit.callbacks.polish import CHECK_EVERY, ValidationWatch
from kan_lightning.nn import KAN
from kan_lightning.nn.gauss_newton import gram, grouped_jacobian
from kan_lightning.nn.levenberg_marquardt import PROGRESS_WINDOW, jacobian, levenberg_marquardt, penalty_matrix
from kan_lightning.nn.refit import difference_matrix
from kan_lightning.nn.sample_space import sample_space_pays, solve_in_sample_space, symmetric_product


def _net(extrapolate="bases", grid_size=5):
    torch.manual_seed(0)
    model = KAN([2, 3, 1], grid_size=grid_size, extrapolate=extrapolate).double()
    with torch.no_grad():
        for layer in model.layers:  # non-trivial scalers and a switched-off edge
            layer.spline_scaler.uniform_(0.5, 1.5)
            layer.spline_weight.normal_()
        model.layers[0].mask[1, 0] = 0.0
    return model


@pytest.mark.parametrize("extrapolate", ["bases", "linear"])
def test_jacobian_matches_autograd(extrapolate):
    model = _net(extrapolate)
    x = torch.rand(40, 2, dtype=torch.float64) * 2.4 - 1.2  # some inputs past the grid
    expected = jacobian(model, x)
    for layer in model.layers:
        layer.basis = "reference"  # plain autograd, an independent path
    params = dict(model.named_parameters())
    ref = jacrev(lambda ps: functional_call(model, ps, (x,)).reshape(-1))(params)
    ref = torch.cat([ref[n].reshape(x.shape[0], -1) for n in params], 1)
    assert expected.shape == (40, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(expected, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid_size", [5, 13])  # a dense group and a chunked one
@pytest.mark.parametrize("extrapolate", ["bases", "linear"])
def test_gram_is_the_dense_product(extrapolate, grid_size):
    model = _net(extrapolate, grid_size=grid_size)
    x = torch.rand(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    dense = jacobian(model, x)
    grouped = grouped_jacobian(model, x)
    assert torch.equal(grouped.matrix, dense[:, grouped.order])
    assert torch.equal(grouped.order.sort().values, torch.arange(dense.shape[1]))
    expected = (dense.T @ dense)[grouped.order][:, grouped.order]
    torch.testing.assert_close(gram(grouped), expected, rtol=0, atol=1e-13 * float(expected.abs().max()))


@pytest.mark.parametrize("grid_size", [5, 13])
@pytest.mark.parametrize("smoothness", [0.0, 1e-3])
@pytest.mark.parametrize("extrapolate", ["bases", "linear"])
def test_levenberg_marquardt_follows_the_dense_reference(extrapolate, smoothness, grid_size):
    # a switched-off edge, inputs past the grid; the same damping sequence and iterates up to
    # rounding (measured <= 1e-9 relative: the Hessian is singular along each edge's scaler /
    # coefficient trade-off, where only the damping fixes the step)
    x = torch.rand(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2.4 - 1.2
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:2] ** 2)
    fits = []
    for fit in (reference_levenberg_marquardt, levenberg_marquardt):
        model = _net(extrapolate, grid_size)
        out = fit(model, x, y, 5, smoothness=smoothness)
        fits.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), out))
    (ref, ref_out), (new, new_out) = fits
    assert new_out["iterations"] == ref_out["iterations"] == 5 and new_out["damping"] == ref_out["damping"]
    assert new_out["solves"] == ref_out["solves"] >= 5
    assert float((new - ref).norm() / ref.norm()) < 1e-8
    assert new_out["rmse_after"] == pytest.approx(ref_out["rmse_after"], rel=1e-8)


def test_the_samples_space_solves_the_damped_system():
    # against a dense solve of (J^T J + A) s = J^T t + c, A = Q + lambda S block-diagonal: two
    # groups of 3 edges with 7 bases each (the penalty Q on them), a diagonal elsewhere; c = Q theta
    # as in the fit (the penalty's gradient); the damping down to the smallest the fit takes
    gen = torch.Generator().manual_seed(5)
    n, p = 30, 60
    jac = torch.randn(n, p, generator=gen, dtype=torch.float64)
    d = difference_matrix(7, 4, dtype=torch.float64)
    blocks = [(18, 7, 3, 1e-3 * d.T @ d), (39, 7, 3, 2e-3 * d.T @ d)]
    q = torch.zeros(p, p, dtype=torch.float64)
    for start, m, out, penalty in blocks:
        for o in range(out):
            columns = start + o + out * torch.arange(m)
            q[columns[:, None], columns] += penalty
    t, c = torch.randn(n, generator=gen, dtype=torch.float64), q @ torch.randn(p, generator=gen, dtype=torch.float64)
    scale = jac.square().sum(0) + q.diagonal()
    for lam in (1e-2, 1e-8, 1e-15):
        a = q + torch.diag(lam * scale)
        h = jac.T @ jac + a
        step = solve_in_sample_space(jac, blocks, lam * scale, t, c)
        rhs = jac.T @ t + c
        assert float((h @ step - rhs).norm() / rhs.norm()) < 1e-10
        if lam > 1e-10:  # below, the solution itself is ill-determined: the residual says it all
            expected = torch.linalg.solve(h, rhs)
            assert float((step - expected).norm() / expected.norm()) < 1e-6  # (condition ~1 / lambda)
    a = torch.randn(7, 13, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(symmetric_product(a), a.T @ a, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("smoothness", [0.0, 1e-3])
@pytest.mark.parametrize("extrapolate", ["bases", "linear"])
def test_levenberg_marquardt_in_the_samples_space_follows_the_dense_reference(extrapolate, smoothness):
    # 162 parameters on 60 points: the steps are solved in the samples' space; the same damping
    # sequence and fit as the dense reference, up to the rounding of a singular Hessian (measured:
    # outputs <= 3e-7 relative, on the training points and on others)
    x = torch.rand(60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2.4 - 1.2
    x_other = torch.rand(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:2] ** 2)
    fits = []
    for fit in (reference_levenberg_marquardt, levenberg_marquardt):
        model = _net(extrapolate, 13)
        assert sample_space_pays(x.shape[0], sum(p.numel() for p in model.parameters()))
        out = fit(model, x, y, 8, smoothness=smoothness)
        with torch.no_grad():
            fits.append((torch.cat([model(x), model(x_other)]), out))
    (ref, ref_out), (new, new_out) = fits
    assert new_out["damping"] == ref_out["damping"] and new_out["solves"] == ref_out["solves"]
    assert float((new - ref).norm() / ref.norm()) < 3e-6
    assert new_out["rmse_after"] == pytest.approx(ref_out["rmse_after"], rel=1e-6)


def test_levenberg_marquardt_recovers_a_perturbed_network():
    teacher, student = _net(), _net()
    x = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        y = teacher(x)
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = levenberg_marquardt(student, x, y, 100)
    assert out["rmse_after"] < 1e-5 * out["rmse_before"]  # (0.14 -> 4e-8 measured)
    with torch.no_grad():
        assert float((student(x) - y).square().mean().sqrt()) == pytest.approx(out["rmse_after"])
    with pytest.raises(ValueError, match="single-output"):
        jacobian(KAN([2, 2]).double(), x)


def test_min_progress_ends_at_the_first_window_that_lowers_the_error_too_little():
    # the objective after k iterations from fresh runs of the plain method, then the first k
    # past the window whose objective is above (1 - p) x the one PROGRESS_WINDOW iterations before
    x = torch.rand(300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:2] ** 2)
    objective = {}
    for k in range(1, 41):
        out = levenberg_marquardt(_net(), x, y, k)
        assert out["iterations"] == k
        objective[k] = out["rmse_after"] ** 2 * x.shape[0]
    p, w = 0.5, PROGRESS_WINDOW
    expected = next(k for k in range(w + 1, 41) if objective[k] > (1 - p) * objective[k - w])
    model = _net()
    out = levenberg_marquardt(model, x, y, 40, min_progress=p)
    assert out["iterations"] == expected < 40
    assert out["rmse_after"] == pytest.approx(objective[expected] ** 0.5 / x.shape[0] ** 0.5, rel=1e-9)
    assert levenberg_marquardt(_net(), x, y, 40, min_progress=0.0)["iterations"] == 40


def test_validation_watch_keeps_the_lowest_validation_iterate_and_stops_after_patience():
    # noisy training targets on few points: validation falls, then rises as the fit chases the
    # noise. The validation RMSE after k iterations from fresh runs, every CHECK_EVERY; the
    # watched fit must stop at the first check `patience` past the lowest and hold its iterate.
    g = torch.Generator().manual_seed(5)
    x = torch.rand(60, 2, dtype=torch.float64, generator=g) * 2 - 1
    f = lambda x: torch.sin(2 * x[:, :1]) + x[:, 1:2] ** 2  # noqa: E731
    y = f(x) + 0.1 * torch.randn(60, 1, dtype=torch.float64, generator=g)
    x_val = torch.rand(200, 2, dtype=torch.float64, generator=g) * 2 - 1

    def fresh(iterations):
        torch.manual_seed(0)
        model = KAN([2, 3, 1], grid_size=15).double()
        return model, levenberg_marquardt(model, x, y, iterations) if iterations else None

    def val_rmse(model):
        with torch.no_grad():
            return float((model(x_val) - f(x_val)).square().mean().sqrt())

    patience = 10
    curve = {k: val_rmse(fresh(k)[0]) for k in range(0, 41, CHECK_EVERY)}
    best_at = stop = 0
    for k, value in curve.items():
        best_at = k if value < curve[best_at] else best_at
        if k - best_at >= patience:
            stop = k
            break
    assert 0 < best_at < stop < 40  # (the case tests something: a minimum inside, a rise after)
    torch.manual_seed(0)
    model = KAN([2, 3, 1], grid_size=15).double()
    watch = ValidationWatch(model, x_val, f(x_val), patience)
    out = levenberg_marquardt(model, x, y, 40, after_iteration=watch)
    watch.restore(out["iterations"])
    assert (out["iterations"], watch.best_at) == (stop, best_at)
    assert val_rmse(model) == pytest.approx(curve[best_at], rel=1e-12) == watch.best


def test_penalty_matrix_is_the_refits_difference_penalty_per_edge():
    model = _net()
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    got = penalty_matrix(model, x, 1e-3) @ theta
    expected, h = [], x
    with torch.no_grad():
        for layer in model.layers:
            b = layer.spline_bases(h)
            d = difference_matrix(b.shape[-1], 4)
            for o in range(layer.out_features):
                for i in range(layer.in_features):
                    lam = 1e-3 * float(b[:, i].square().sum()) / b.shape[-1]
                    expected.append(lam**0.5 * d @ layer.spline_weight[o, i])
            h = layer(h)
    torch.testing.assert_close(got, torch.cat(expected), rtol=1e-12, atol=1e-14)


def _fit(polish, l1=0.0, callbacks=(), patience=None, split="train"):
    L.seed_everything(0, verbose=False)
    data = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=300, split=(0.5, 0.2, 0.3), batch_size="full", seed=3)
    model = KAN([2, 3, 1], grid_size=3, regularization={"l1": l1})
    module = KANRegressor(model, optimizer=lambda p: torch.optim.LBFGS(p, line_search_fn="strong_wolfe"))
    extension = GridExtension(grids=[3, 5], at_epochs=[4], evaluate_splits=["train", "val"], polish_iterations=polish,
                              polish_patience=patience)
    trainer = L.Trainer(
        max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, precision="64-true", callbacks=[extension, *callbacks],
    )
    trainer.fit(module, datamodule=data)
    x, y = data.x_train.double(), data.y_train.double()
    with torch.no_grad():
        final = float((module.model(x) - y).square().mean().sqrt())
    return [s[f"{split}/rmse"] for s in extension.stages], final, module.model


def test_grid_extension_polishes_every_stage():
    plain, _, _ = _fit(0)
    polished, final, _ = _fit(20)
    assert len(polished) == 2
    assert all(p < 0.5 * q for p, q in zip(polished, plain))  # LBFGS for 4 steps is far from done
    assert polished[-1] == pytest.approx(final)  # the stage record is the polished network
    with pytest.raises(ValueError, match="polish_iterations"):
        GridExtension(grids=[3, 5], polish_iterations=-1)
    with pytest.raises(ValueError, match="polish_smoothness"):
        GridExtension(grids=[3, 5], polish_smoothness=-1.0)
    with pytest.raises(ValueError, match="polish_min_progress"):
        GridExtension(grids=[3, 5], polish_min_progress=1.0)


def test_polish_patience_delivers_the_polishs_lowest_validation_iterate():
    """Stage 0 starts from the same network either way: with early stopping its validation RMSE
    is at most that of the polish's last iterate (which the watch also considers)."""
    plain, _, _ = _fit(40, split="val")
    watched, _, _ = _fit(40, patience=5, split="val")
    assert watched[0] <= plain[0]
    with pytest.raises(ValueError, match="polish_patience"):
        GridExtension(grids=[3, 5], polish_patience=0)


def test_the_polish_waits_for_the_penalty_to_be_dropped_at_the_pruning():
    """LM fits the squared error alone: while a sparsification penalty is on, a stage is not
    polished; ``Pruning(drop_penalties=True)`` turns the penalty off, and later stages are."""
    plain, _, _ = _fit(0, l1=1e-3)
    pruning = Pruning(at_epoch=4, threshold=0.0, drop_penalties=True)  # threshold 0: keeps every node
    polished, final, model = _fit(20, l1=1e-3, callbacks=[pruning])
    assert polished[0] == pytest.approx(plain[0], rel=1e-9)  # the penalized stage: no polish
    assert polished[1] < 0.5 * plain[1] and polished[1] == pytest.approx(final)
    assert pruning.widths["after"] == [2, 3, 1] and model.regularization["l1"] == 0.0
