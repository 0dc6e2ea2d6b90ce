"""The generator L-BFGS against ``torch.optim.LBFGS`` itself, in float64: the same parameters,
losses, evaluation counts and stopping, step after step, with the history ring wrapping."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from kan_lightning.commands.bench_lbfgs import direction_times, stacked_times
from kan_lightning.nn import KAN
from kan_lightning.stacked.lbfgs_steps import LBFGSHistory, lbfgs_step


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def kan_problem():
    """A [2, 3, 1] KAN regression: the loss of its flat parameters (several tensors)."""
    torch.manual_seed(0)
    model = KAN([2, 3, 1], grid_size=4).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 2, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    x0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(flat):
        params = dict(zip(names, (v.view(s) for v, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return ((functional_call(model, params, (x,)) - y) ** 2).mean()

    return loss, x0


def run_torch(f, x0, steps, **settings):
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], **settings)
    calls, out = [0], []

    def closure():
        opt.zero_grad()
        calls[0] += 1
        loss = f(p)
        loss.backward()
        return loss

    for _ in range(steps):
        out.append((float(opt.step(closure).detach()), p.detach().clone(), calls[0]))
    return out, opt.state[p]


def run_generator(f, x0, steps, **settings):
    group = torch.optim.LBFGS([torch.zeros(0, dtype=x0.dtype)], **settings).param_groups[0]
    x = x0.clone()
    state = LBFGSHistory(x.numel(), group["history_size"], x.dtype)
    calls, out = 0, []
    for _ in range(steps):
        step = lbfgs_step(state, x, group)
        with torch.no_grad():
            point = next(step)
            while True:
                calls += 1
                with torch.enable_grad():
                    p = point.clone().requires_grad_(True)
                    loss = f(p)
                    loss.backward()
                try:
                    point = step.send((loss.detach(), p.grad))
                except StopIteration as stop:
                    first = stop.value
                    break
        out.append((float(first), x.clone(), calls))
    return out, state


def assert_same_runs(f, x0, steps, **settings):
    theirs, their_state = run_torch(f, x0, steps, **settings)
    mine, state = run_generator(f, x0, steps, **settings)
    for k, ((loss_a, x_a, calls_a), (loss_b, x_b, calls_b)) in enumerate(zip(theirs, mine)):
        assert calls_a == calls_b, f"step {k}: {calls_a} vs {calls_b} evaluations"
        assert loss_b == pytest.approx(loss_a, rel=1e-9, abs=0), f"step {k}"
        torch.testing.assert_close(x_b, x_a, rtol=1e-9, atol=1e-12, msg=f"step {k}")
    assert (state.func_evals, state.n_iter) == (their_state["func_evals"], their_state["n_iter"])
    return theirs, state


ROSENBROCK_X0 = torch.linspace(-1.5, 1.2, 10, dtype=torch.float64)


@pytest.mark.parametrize("settings", [
    dict(line_search_fn="strong_wolfe", max_iter=4, history_size=4),
    dict(line_search_fn="strong_wolfe", max_iter=7, history_size=3, tolerance_grad=1e-32, tolerance_change=1e-32),
    dict(line_search_fn=None, max_iter=4, history_size=4),
    dict(line_search_fn=None, max_iter=5, history_size=3, lr=1e-3),
], ids=["wolfe", "wolfe-tiny-tolerances", "fixed-step", "fixed-step-small-lr"])
def test_rosenbrock_follows_torch_lbfgs(settings):
    _, state = assert_same_runs(rosenbrock, ROSENBROCK_X0, 8, **settings)
    assert state.n_iter > state.size  # the ring of pairs wrapped


@pytest.mark.parametrize("line_search_fn", ["strong_wolfe", None])
def test_kan_regression_follows_torch_lbfgs(line_search_fn):
    f, x0 = kan_problem()
    lr = 1.0 if line_search_fn else 0.1
    _, state = assert_same_runs(f, x0, 6, line_search_fn=line_search_fn, max_iter=5, history_size=4, lr=lr)
    assert state.n_iter > state.size


def test_max_eval_bounds_the_line_search_as_torch_does():
    runs, _ = assert_same_runs(rosenbrock, ROSENBROCK_X0, 3, line_search_fn="strong_wolfe", max_iter=50, max_eval=9, history_size=5)
    assert [calls for _, _, calls in runs] == [9, 18, 27]  # each step ends at max_eval (max_iter would take more)


def test_stopping_tests_follow_torch():
    # tolerance_grad: a gradient below it ends the step after its first evaluation
    runs, state = assert_same_runs(rosenbrock, torch.ones(10, dtype=torch.float64), 2, line_search_fn="strong_wolfe")
    assert [calls for _, _, calls in runs] == [1, 2] and state.n_iter == 0
    # tolerance_change: steps stop early on a tiny change of the loss or the parameters
    runs, _ = assert_same_runs(rosenbrock, ROSENBROCK_X0, 3, line_search_fn="strong_wolfe", tolerance_change=1e-1, max_iter=100)
    assert runs[-1][2] < 100
    runs, _ = assert_same_runs(rosenbrock, ROSENBROCK_X0, 3, line_search_fn=None, lr=1e-4, tolerance_change=1e-2, max_iter=100)
    assert runs[-1][2] < 100


def test_benchmark_times_both_ways_and_agrees():
    direction = direction_times(n=40, history=6, repeats=1)
    assert direction["relative_difference"] < 1e-12 and direction["two_loop_us"] > 0
    assert direction["lean_equal"] and direction["lean_two_loop_us"] > 0
    stacked = stacked_times(models=2, points=20, steps=1, repeats=1)
    assert stacked["stacked_s"] > 0 and stacked["final_loss_relative_difference"] < 1e-2
