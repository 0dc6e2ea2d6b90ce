"""One-at-a-time measurements of grid-extension options on the paper toy (README "Results").

The data of ``kan-train experiment=paper_grid_extension seed=S`` (same module, seed and split),
the preset's KAN and full-batch LBFGS without Lightning: the stages up to ``--from_grid`` are
trained once with the preset's settings and cached, then each variant continues the extension
from that same network, so that only the option under test differs.

    python docs/results/grid_extension_ab.py --width 2,1,1 --seed 2 --tag base
    python docs/results/grid_extension_ab.py --width 2,1,1 --seed 2 --frac 0.04 --smooth 1e-6 --tag both
"""
import argparse, json, math, os, time, torch
from kan_lightning.data.datamodule import SyntheticFunctionDataModule
from kan_lightning.nn import KAN
p = argparse.ArgumentParser()
p.add_argument("--width", default="2,1,1"); p.add_argument("--seed", type=int, default=2)
p.add_argument("--grids", default="3,5,10,20,50,100"); p.add_argument("--steps", type=int, default=200)
p.add_argument("--from_grid", type=int, default=20)
p.add_argument("--updates", type=int, default=0); p.add_argument("--every", type=int, default=5)
p.add_argument("--smooth", type=float, default=0.0); p.add_argument("--margin", type=float, default=0.5)
p.add_argument("--frac", type=float, default=0.0, help="hidden-grid margin as a fraction of the range (frac * G intervals) instead of --margin intervals")
p.add_argument("--eps", type=float, default=None, help="grid_eps of the switches past --from_grid (preset: 0.5; pykan: 0.02)")
p.add_argument("--hist", type=int, default=100); p.add_argument("--tag", default="")
p.add_argument("--extrapolate", default="bases"); p.add_argument("--cache_dir", default="sweeps"); p.add_argument("--train_smooth", type=float, default=0.0)
a = p.parse_args()
torch.set_default_dtype(torch.float64)
dm = SyntheticFunctionDataModule(function="paper_exp_sin", n_samples=2500, split=(0.4, 0.2, 0.4), batch_size="full", seed=a.seed, normalize_inputs=True, normalize_targets=False)
dm.setup("fit")
xtr, ytr = dm.x_train.double(), dm.y_train.double(); xva, yva = dm.x_val.double(), dm.y_val.double(); xte, yte = dm.x_test.double(), dm.y_test.double()
grids = [int(v) for v in a.grids.split(",")]
width = [int(v) for v in a.width.split(",")]
rmse = lambda m, xx, yy: float(((m(xx) - yy) ** 2).mean().sqrt())
def train(model, steps, G):
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=20, history_size=a.hist, line_search_fn="strong_wolfe", tolerance_grad=1e-32, tolerance_change=1e-32)
    def closure():
        opt.zero_grad(); loss = ((model(xtr) - ytr) ** 2).mean()
        if a.train_smooth:
            from kan_lightning.nn.regularization import smoothness
            loss = loss + a.train_smooth * G ** 3 * smoothness(model.layers)
        loss.backward(); return loss
    for s in range(steps):
        if a.updates and s % a.every == 0 and s < a.updates * a.every:
            with torch.no_grad(): model.update_grid(xtr, keep_input_range=True, margin=margin(G))
        opt.step(closure)
margin = lambda G: a.frac * G if a.frac else a.margin
cache = os.path.join(a.cache_dir, f"grid_ab_{a.width}_{a.seed}_{a.from_grid}.pt")
t0 = time.time(); out = []
start = grids.index(a.from_grid)
if os.path.exists(cache):  # plain tensors and numbers only: nothing in the file runs
    saved = torch.load(cache, weights_only=True)
    model, out = KAN(**saved["config"]), [tuple(r) for r in saved["out"]]
    model.load_state_dict(saved["state"])
else:
    torch.manual_seed(a.seed)
    model = KAN(width, grid_size=grids[0], grid_eps=0.5)
    for i, G in enumerate(grids[: start + 1]):
        if i: model.extend_grid(G, x=xtr, keep_input_range=True, margin=0.5)
        train(model, a.steps, G)
        with torch.no_grad(): out.append((G, rmse(model, xtr, ytr), rmse(model, xva, yva), rmse(model, xte, yte)))
    torch.save({"config": model.config, "state": model.state_dict(), "out": out}, cache)
for l in model.layers:
    l.extrapolate = a.extrapolate
    if a.eps is not None: l.grid_eps = a.eps
for G in grids[start + 1 :]:
    model.extend_grid(G, x=xtr, keep_input_range=True, margin=margin(G), smoothness=a.smooth)
    train(model, a.steps, G)
    with torch.no_grad(): out.append((G, rmse(model, xtr, ytr), rmse(model, xva, yva), rmse(model, xte, yte)))
best = min(out, key=lambda r: r[2])
print(a.tag, a.width, a.seed, "test:", " ".join(f"{r[3]:.2e}" for r in out), "| train", " ".join(f"{r[1]:.1e}" for r in out[start:]), "| delivered", f"{best[3]:.2e} (G={best[0]})", f"{time.time()-t0:.0f}s", flush=True)
