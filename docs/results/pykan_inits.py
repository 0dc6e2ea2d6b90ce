"""pykan 0.2.8 from several initializations on kan-train's grid-extension toy data for one seed.

KAN [2, 1, 1] (``KAN(width, grid=3, k=3, seed=P)`` for each pykan seed P), float64,
``fit(opt="LBFGS", steps=200)`` and ``refine(G)`` per grid 3 -> 100, as in toy_side_by_side.py.
Prints test RMSE per grid, overall and on the test points whose hidden value sin(pi x) + y^2
lies within the training sample's range (the others need extrapolation).

    OMP_NUM_THREADS=1 python docs/results/pykan_inits.py --seed 2 --pykan-seeds 0-6
"""
import argparse, json, time
import torch
from hydra.utils import instantiate
from kan_lightning.compose import compose_config

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=2); p.add_argument("--pykan-seeds", default="0-6")
p.add_argument("--width", default="2,1,1"); p.add_argument("--dir", default="/tmp/pykan_inits")
a = p.parse_args()
lo, _, hi = a.pykan_seeds.partition("-")
torch.set_num_threads(1)
dm = instantiate(compose_config(["experiment=paper_grid_extension", f"seed={a.seed}"]).data)
dm.setup("fit")
data = {s: (getattr(dm, f"x_{s}").double(), getattr(dm, f"y_{s}").double()) for s in ("train", "val", "test")}
torch.set_default_dtype(torch.float64)
from kan import KAN  # noqa: E402  (pykan)

hidden = lambda x: torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2
inside = hidden(data["test"][0]) <= hidden(data["train"][0]).max()
dataset = {"train_input": data["train"][0], "train_label": data["train"][1],
           "test_input": data["test"][0], "test_label": data["test"][1]}
for init in range(int(lo), int(hi or lo) + 1):
    model = KAN(width=[int(v) for v in a.width.split(",")], grid=3, k=3, seed=init, ckpt_path=f"{a.dir}/{init}")
    for i, G in enumerate([3, 5, 10, 20, 50, 100]):
        t0 = time.perf_counter()
        if i:
            model = model.refine(G)
        model.fit(dataset, opt="LBFGS", steps=200, log=1000)
        with torch.no_grad():
            err = (model(data["test"][0]) - data["test"][1]).squeeze(-1)
            train = (model(data["train"][0]) - data["train"][1]).square().mean().sqrt()
        print(json.dumps({"pykan_seed": init, "grid": G, "train/rmse": float(train),
                          "test/rmse": float(err.square().mean().sqrt()),
                          "test/rmse_inside": float(err[inside].square().mean().sqrt()),
                          "s": round(time.perf_counter() - t0, 1)}), flush=True)
