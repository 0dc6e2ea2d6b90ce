"""The best a cubic spline can do past its data on the grid-extension toy, per seed.

For kan-train's data (``experiment=paper_grid_extension seed=S``), f = exp(t) with the hidden
value t = sin(pi x) + y^2 exact: the test points whose t lies above the training sample's largest
can only be reached by continuing the outer spline's last cubic piece. The exact continuation
(exp's cubic Taylor polynomial at the training maximum, the limit of a perfectly fitted last
piece) gives the test RMSE those points alone contribute; a KAN [2, 1, 1] with cubic splines
is not expected to go below it.

    python docs/results/extrapolation_floor.py
    python docs/results/extrapolation_floor.py --checkpoint RUN/checkpoints/delivered.ckpt --seed 2

With ``--checkpoint`` (a run of that seed), also that network's test RMSE split between the
test points inside the training sample's hidden range and those past it.
"""
import argparse
import math

import torch
from hydra.utils import instantiate

from kan_lightning.api import load_model
from kan_lightning.compose import compose_config


def hidden(x):
    return torch.sin(torch.pi * x[:, 0].double()) + x[:, 1].double() ** 2


def data(seed):
    dm = instantiate(compose_config(["experiment=paper_grid_extension", f"seed={seed}"]).data)
    dm.setup("fit")
    dm.setup("test")
    return dm


def floor(seed):
    dm = data(seed)
    top, t = hidden(dm.x_train).max(), hidden(dm.x_test)
    d = (t - top).clamp_min(0)
    continued = math.exp(top) * (1 + d + d**2 / 2 + d**3 / 6)
    err = torch.where(d > 0, torch.exp(t) - continued, torch.zeros_like(t))
    print(f"seed {seed}: {int((d > 0).sum())} of {len(t)} test points past the training maximum "
          f"{float(top):.4f} (by up to {float(d.max()):.4f}); exact cubic continuation: test RMSE "
          f"{float(err.square().mean().sqrt()):.2e}, largest error {float(err.abs().max()):.2e}")


def split(checkpoint, seed):
    dm = data(seed)
    model = load_model(checkpoint)  # in the dtype it was trained in
    with torch.no_grad():
        x = dm.x_test.to(next(model.parameters()).dtype)
        err = (model(x) - dm.y_test.to(x.dtype)).squeeze(-1).double()
    past = hidden(dm.x_test) > hidden(dm.x_train).max()
    share = lambda mask: float((err[mask].square().sum() / len(err)).sqrt())  # noqa: E731
    largest = f" (largest error {float(err[past].abs().max()):.2e})" if past.any() else ""
    print(f"{checkpoint}: test RMSE {float(err.square().mean().sqrt()):.2e}; the {int((~past).sum())} points inside "
          f"the training range: RMSE {float(err[~past].square().mean().sqrt()):.2e}; the {int(past.sum())} past it "
          f"contribute {share(past):.2e}{largest}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    if args.checkpoint:
        split(args.checkpoint, args.seed)
    else:
        for seed in (1, 2, 3):
            floor(seed)
