"""How far the paper toy's test points lie beyond the training range of its hidden function
t = sin(pi x) + y^2, for kan-lightning's data (seeds 1-3) and pykan's create_dataset (seeds 0-3;
needs pykan). No training: docs/results/grid_extension_numerics.md.

    python docs/results/offgrid_draws.py
"""
import math, torch
from kan_lightning.data.datamodule import SyntheticFunctionDataModule
from kan import create_dataset
f = lambda x: torch.exp(torch.sin(math.pi * x[:, [0]]) + x[:, [1]] ** 2)
t = lambda x: torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2   # the hidden function (range [-1, 2])
def show(name, xtr, xte):
    ttr, tte = t(xtr), t(xte)
    hi, lo = ttr.max(), ttr.min()
    beyond = ((tte - hi).clamp(min=0) + (lo - tte).clamp(min=0))
    print(f"{name}: train range [{lo:.4f}, {hi:.4f}]; test points beyond it: {(beyond>0).sum().item()}, max excess {beyond.max():.4f} (range 3: half an interval at G=20/50/100 = {0.075:.3f}/{0.03:.3f}/{0.015:.3f})")
for s in (1, 2, 3):
    dm = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=2500, split=(0.4, 0.2, 0.4), batch_size="full", seed=s, normalize_inputs=True, normalize_targets=False); dm.setup("fit")
    show(f"kan-lightning seed {s}", dm.x_train, dm.x_test)
for s in (0, 1, 2, 3):
    ds = create_dataset(f, n_var=2, train_num=1000, test_num=1000, seed=s)
    show(f"pykan create_dataset seed {s}", ds["train_input"], ds["test_input"])
