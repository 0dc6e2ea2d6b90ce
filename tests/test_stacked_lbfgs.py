"""PerModelLBFGS against one torch.optim.LBFGS per separate model (float64)."""

from __future__ import annotations

import torch
from torch.func import functional_call

from kan_lightning.nn import KAN
from kan_lightning.nn.stacked import StackedKAN
from kan_lightning.stacked.lbfgs import PerModelLBFGS


def _lbfgs(params):
    return torch.optim.LBFGS(params, lr=1.0, max_iter=6, history_size=5, line_search_fn="strong_wolfe")


def _models(seeds):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(KAN([2, 3, 1], grid_size=4).double())
    return out


def test_per_model_lbfgs_follows_each_separate_lbfgs():
    seeds = [0, 1, 2]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 100, 2, generator=gen, dtype=torch.float64) * 2 - 1
    # different targets: the models need different numbers of line-search evaluations
    y = torch.stack([torch.sin(3 * x[0, :, :1]), x[1, :, :1] * x[1, :, 1:], torch.exp(x[2, :, 1:])])
    stack = StackedKAN(_models(seeds))
    driver = PerModelLBFGS(stack, _lbfgs)

    def evaluate(params):
        out = functional_call(stack, params, (x,))
        return ((out - y) ** 2).mean(dim=(1, 2)), out

    separate = _models(seeds)
    optimizers = [_lbfgs(list(m.parameters())) for m in separate]
    evaluations = [0] * 3
    active = [True, True, False]  # the third sits out the second step (a diverged job)
    for step in range(2):
        first_loss, _ = driver.step(evaluate, active if step else [True] * 3)
        driver.push()
        for m, (model, opt) in enumerate(zip(separate, optimizers)):
            if step and not active[m]:
                continue

            def closure(model=model, m=m):
                opt.zero_grad()
                evaluations[m] += 1
                loss = ((model(x[m]) - y[m]) ** 2).mean()
                loss.backward()
                return loss

            start = opt.step(closure)
            torch.testing.assert_close(first_loss[m], start.detach(), rtol=1e-10, atol=0)
    assert len(set(evaluations)) > 1  # the line searches did differ
    for m, model in enumerate(separate):
        for name, p in model.named_parameters():
            torch.testing.assert_close(dict(stack.named_parameters())[name][m], p.detach(), rtol=1e-8, atol=1e-12, msg=name)
        assert driver.states[m].func_evals == optimizers[m].state[optimizers[m]._params[0]]["func_evals"]
