"""The batched L-BFGS against ``torch.optim.LBFGS`` itself, one per problem, in float64: the same
parameters, losses, evaluation counts and stopping, step after step, with the history ring
wrapping, for problems batched together that take different numbers of evaluations and stop
at different times."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from kan_lightning.commands.bench_lbfgs import direction_times, stacked_times
from kan_lightning.nn import KAN
from kan_lightning.stacked.lbfgs import BatchedLBFGS


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def kan_problem(seed=0):
    """A [2, 3, 1] KAN regression: the loss of its flat parameters (several tensors)."""
    torch.manual_seed(seed)
    model = KAN([2, 3, 1], grid_size=4).double()
    gen = torch.Generator().manual_seed(1 + seed)
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


def run_batched(problems, steps, **settings):
    """All ``problems`` ((f, x0) pairs of one size) as the rows of one :class:`BatchedLBFGS`."""
    group = torch.optim.LBFGS([torch.zeros(0, dtype=torch.float64)], **settings).param_groups[0]
    driver = BatchedLBFGS(torch.stack([x0 for _, x0 in problems]).clone(), group)
    calls = [0] * len(problems)

    def evaluate(points, mask):
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = torch.stack([f(p) for (f, _), p in zip(problems, points)])
            torch.where(mask, losses, 0.0).sum().backward()
        for m in mask.nonzero().flatten().tolist():
            calls[m] += 1
        return losses.detach(), points.grad, None

    out = []
    for _ in range(steps):
        first, _, _ = driver.step(evaluate, [True] * len(problems))
        out.append([(float(first[m]), driver.x[m].clone(), calls[m]) for m in range(len(problems))])
    return [[step[m] for step in out] for m in range(len(problems))], driver.states


def assert_same_runs(problems, steps, **settings):
    """Each problem's rows follow its own ``torch.optim.LBFGS``: the same first losses,
    parameters and evaluation counts step by step (1e-9 relative), and the same counters."""
    mine, states = run_batched(problems, steps, **settings)
    runs = []
    for (f, x0), my_run, state in zip(problems, mine, states):
        theirs, their_state = run_torch(f, x0, steps, **settings)
        for k, ((loss_a, x_a, calls_a), (loss_b, x_b, calls_b)) in enumerate(zip(theirs, my_run)):
            assert calls_a == calls_b, f"step {k}: {calls_a} vs {calls_b} evaluations"
            assert loss_b == pytest.approx(loss_a, rel=1e-9, abs=0), f"step {k}"
            torch.testing.assert_close(x_b, x_a, rtol=1e-9, atol=1e-12, msg=f"step {k}")
        assert (state.func_evals, state.n_iter) == (their_state.get("func_evals", 0), their_state.get("n_iter", 0))
        runs.append(theirs)
    return runs, states


ROSENBROCK_X0 = torch.linspace(-1.5, 1.2, 10, dtype=torch.float64)
# one batch of problems that differ in line-search evaluations and in when they stop (the last
# is at the minimum: its steps end after their first evaluation)
ROSENBROCKS = [(rosenbrock, x0) for x0 in (ROSENBROCK_X0, torch.linspace(-1.2, 0.8, 10, dtype=torch.float64),
                                            torch.full((10,), -0.5, dtype=torch.float64), torch.cos(torch.arange(10.0, dtype=torch.float64)),
                                            torch.ones(10, dtype=torch.float64))]


@pytest.mark.parametrize("settings", [
    dict(line_search_fn="strong_wolfe", max_iter=4, history_size=4),
    dict(line_search_fn="strong_wolfe", max_iter=7, history_size=3, tolerance_grad=1e-32, tolerance_change=1e-32),
    dict(line_search_fn=None, max_iter=4, history_size=4),
    dict(line_search_fn=None, max_iter=5, history_size=3, lr=1e-3),
], ids=["wolfe", "wolfe-tiny-tolerances", "fixed-step", "fixed-step-small-lr"])
def test_rosenbrock_follows_torch_lbfgs(settings):
    runs, states = assert_same_runs(ROSENBROCKS, 7, **settings)  # rounding grows ~10x a step here
    assert states[0].n_iter > states[0].size  # the ring of pairs wrapped
    if settings["line_search_fn"]:
        assert len({run[-1][2] for run in runs}) > 2  # the rows took different numbers of evaluations


@pytest.mark.parametrize("line_search_fn", ["strong_wolfe", None])
def test_kan_regression_follows_torch_lbfgs(line_search_fn):
    lr = 1.0 if line_search_fn else 0.1
    _, states = assert_same_runs([kan_problem(seed) for seed in (0, 1, 3)], 6, line_search_fn=line_search_fn, max_iter=5, history_size=4, lr=lr)
    assert all(state.n_iter > state.size for state in states)


def test_max_eval_bounds_the_line_search_as_torch_does():
    runs, _ = assert_same_runs(ROSENBROCKS[:1], 3, line_search_fn="strong_wolfe", max_iter=50, max_eval=9, history_size=5)
    assert [calls for _, _, calls in runs[0]] == [9, 18, 27]  # each step ends at max_eval (max_iter would take more)


def test_stopping_tests_follow_torch():
    # tolerance_grad: a gradient below it ends the step after its first evaluation
    runs, states = assert_same_runs(ROSENBROCKS[-1:], 2, line_search_fn="strong_wolfe")
    assert [calls for _, _, calls in runs[0]] == [1, 2] and states[0].n_iter == 0
    # tolerance_change: steps stop early on a tiny change of the loss or the parameters
    runs, _ = assert_same_runs(ROSENBROCKS, 3, line_search_fn="strong_wolfe", tolerance_change=1e-1, max_iter=100)
    assert all(run[-1][2] < 100 for run in runs)
    runs, _ = assert_same_runs(ROSENBROCKS, 3, line_search_fn=None, lr=1e-4, tolerance_change=1e-2, max_iter=100)
    assert all(run[-1][2] < 100 for run in runs)


def test_benchmark_times_both_ways_and_agrees():
    direction = direction_times(n=40, history=6, repeats=1)
    assert direction["relative_difference"] < 1e-12 and direction["two_loops_us"] > 0
    assert direction["lean_equal"] and direction["lean_two_loops_us"] > 0
    stacked = stacked_times(models=2, points=20, steps=1, repeats=1)
    assert stacked["stacked_s"] > 0 and stacked["final_loss_relative_difference"] < 1e-2
