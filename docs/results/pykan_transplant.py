"""Path or optimizer? pykan 0.2.8's networks continued by kan-lightning's optimizer, and back.

On kan-train's data for the seed (``experiment=paper_grid_extension``): ``--pykan`` trains pykan's
README protocol (``KAN(width, grid=3, k=3, seed=S)``, float64, ``fit(opt="LBFGS", steps=200)`` and
``refine(G)`` per grid) and saves every stage's network. The other modes load pykan's network of
stage ``--at`` into our ``KAN`` (same edge functions: coef, scale_base, scale_sp and knots copied,
checked to 1e-12) and continue it: ``--mode lm`` by Levenberg-Marquardt
(:mod:`kan_lightning.nn.levenberg_marquardt`), ``--mode preset`` by the preset's switches and
full-batch LBFGS (history 100) without Lightning, from ``--at`` through the grids ``--to``.
(The figures in grid_extension_numerics.md were made when this script, which sets a float64
default dtype first, drew other points than kan-train for the seed; samples no longer follow
the default.)

    python docs/results/pykan_transplant.py --pykan --seed 1 --upto 50      # pykan's stages
    python docs/results/pykan_transplant.py --seed 1 --at 50 --mode lm --iters 200   # LM on pykan's G=50 net
    python docs/results/pykan_transplant.py --init ours --at 3 --mode preset --to 3,5,10,20,50 --seed 1 \
        --save /tmp/tp/ours_init_1                                           # the preset's path, no Lightning
    python docs/results/pykan_transplant.py --load /tmp/tp/ours_init_1 --at 50 --mode lm --iters 200
"""
import argparse, json, time
from pathlib import Path
import torch

p = argparse.ArgumentParser()
p.add_argument("--width", default="2,5,1"); p.add_argument("--seed", type=int, default=1)
p.add_argument("--pykan", action="store_true"); p.add_argument("--upto", type=int, default=50)
p.add_argument("--at", type=int, default=50); p.add_argument("--to", default="50")
p.add_argument("--mode", default="lm", choices=["preset", "lm"])
p.add_argument("--init", default="pykan", choices=["pykan", "ours"], help="--at 3: whose initial network")
p.add_argument("--load", default=None, help="a state saved by --save (ours) instead of pykan's")
p.add_argument("--save", default=None, help="save our network after each stage to SAVE_G<G>.pt")
p.add_argument("--iters", type=int, default=100, help="--mode lm: Levenberg-Marquardt iterations")
p.add_argument("--steps", type=int, default=200); p.add_argument("--hist", type=int, default=100)
p.add_argument("--dir", default="/tmp/tp")
a = p.parse_args()
torch.set_num_threads(1); torch.set_default_dtype(torch.float64)
width = [int(v) for v in a.width.split(",")]
GRIDS = [3, 5, 10, 20, 50, 100]
stem = f"{a.dir}/pykan_{a.width.replace(',', '-')}_{a.seed}"


def our_data(seed):
    from hydra.utils import instantiate
    from kan_lightning.compose import compose_config
    dm = instantiate(compose_config(["experiment=paper_grid_extension", f"seed={seed}"]).data)
    dm.setup("fit")
    return {s: (getattr(dm, f"x_{s}").double(), getattr(dm, f"y_{s}").double()) for s in ("train", "val", "test")}


data = our_data(a.seed)
rmse = lambda m, s: float(((m(data[s][0]) - data[s][1]) ** 2).mean().sqrt())
line = lambda tag, G, m: print(f"{tag} G={G} train {rmse(m, 'train'):.3e} val {rmse(m, 'val'):.3e} test {rmse(m, 'test'):.3e}", flush=True)


def pykan_state(model):
    return [{"grid": l.grid.data.clone(), "coef": l.coef.data.clone(), "scale_base": l.scale_base.data.clone(),
             "scale_sp": l.scale_sp.data.clone(), "mask": l.mask.data.clone()} for l in model.act_fun]


if a.pykan:
    from kan import KAN as PyKAN
    ds = {"train_input": data["train"][0], "train_label": data["train"][1], "test_input": data["test"][0], "test_label": data["test"][1]}
    model = PyKAN(width=list(width), grid=3, k=3, seed=a.seed, ckpt_path=f"{stem}_ckpt")
    for i, G in enumerate([g for g in GRIDS if g <= a.upto]):
        if i: model = model.refine(G)
        t0 = time.time(); model.fit(ds, opt="LBFGS", steps=a.steps)
        with torch.no_grad(): line(f"pykan ({time.time() - t0:.0f}s)", G, lambda x: model(x))
        torch.save(pykan_state(model), f"{stem}_G{G}.pt")
    raise SystemExit


def to_ours(state):
    """Our KAN with pykan's edge functions (its node/subnode affines are fixed at 1 / 0 by default)."""
    from kan_lightning.nn import KAN
    G = state[0]["grid"].shape[1] - 7
    model = KAN(width, grid_size=G, grid_eps=0.5)
    sd = model.state_dict()
    for i, s in enumerate(state):
        sd[f"layers.{i}.grid"] = s["grid"]
        sd[f"layers.{i}.spline_weight"] = s["coef"].permute(1, 0, 2).contiguous()
        sd[f"layers.{i}.base_weight"] = (s["scale_base"] * s["mask"]).T.contiguous()
        sd[f"layers.{i}.spline_scaler"] = (s["scale_sp"] * s["mask"]).T.contiguous()
    model.load_state_dict(sd)
    return model


def train(model, steps):
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=20, history_size=a.hist, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-32, tolerance_change=1e-32)
    xtr, ytr = data["train"]
    def closure():
        opt.zero_grad(); loss = ((model(xtr) - ytr) ** 2).mean(); loss.backward(); return loss
    for _ in range(steps): opt.step(closure)


def save(model, G):
    if a.save: torch.save({"config": model.config, "state": model.state_dict()}, f"{a.save}_G{G}.pt")


from kan_lightning.nn import KAN
if a.load:
    saved = torch.load(f"{a.load}_G{a.at}.pt", weights_only=True)
    model = KAN(**saved["config"]); model.load_state_dict(saved["state"])
    line(f"loaded {a.load}", a.at, model)
elif a.init == "ours":
    torch.manual_seed(a.seed)
    model = KAN(width, grid_size=a.at, grid_eps=0.5)
    line("our init", a.at, model)
else:
    from kan import KAN as PyKAN  # the reference forward, for the transplant check
    if a.at == GRIDS[0]:
        ref = PyKAN(width=list(width), grid=a.at, k=3, seed=a.seed, auto_save=False)
        state = pykan_state(ref)
    else:
        state = torch.load(f"{stem}_G{a.at}.pt", weights_only=True)
        ref = PyKAN(width=list(width), grid=a.at, k=3, seed=a.seed, auto_save=False)
        for l, s in zip(ref.act_fun, state):
            for k, v in s.items(): getattr(l, k).data = v.clone()
    model = to_ours(state)
    with torch.no_grad():
        gap = float((model(data["train"][0]) - ref(data["train"][0])).abs().max())
    assert gap < 1e-12, gap
    line(f"pykan loaded (max |ours - pykan| {gap:.1e})", a.at, model)
xtr = data["train"][0]
if a.mode == "lm":
    from kan_lightning.nn.levenberg_marquardt import levenberg_marquardt
    t0 = time.time(); out = levenberg_marquardt(model, xtr, data["train"][1], a.iters)
    with torch.no_grad(): line(f"LM {out['iterations']} iterations ({time.time() - t0:.0f}s)", a.at, model)
    raise SystemExit
for G in [int(g) for g in a.to.split(",")]:
    if G != model.layers[0].grid_size:  # the preset's switch: grids fitted to the data, margins, penalized refit
        model.extend_grid(G, x=xtr, keep_input_range=True, margin=0.5 + 0.04 * G, smoothness=1e-6)
        with torch.no_grad(): line(f"{a.mode} switched", G, model)
    t0 = time.time(); train(model, a.steps)
    with torch.no_grad(): line(f"{a.mode} ours-LBFGS h{a.hist} ({time.time() - t0:.0f}s)", G, model)
    save(model, G)
