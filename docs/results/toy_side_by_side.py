"""kan-lightning against pykan 0.2.8 on the KAN paper's grid-extension toy, on the same data.

For one width and seed: ``kan-train experiment=paper_grid_extension seed=S model.layers_hidden=W``
(a subprocess; its metrics.json stage table), then pykan's README toy on kan-train's own
train / val / test tensors for that seed (``KAN(width=W, grid=3, k=3, seed=S)``, float64,
``fit(opt="LBFGS", steps=200)`` and ``refine(G)`` per grid, its other defaults; a subprocess
killed after --timeout s). One thread each, one after the other. ``--override`` (repeatable)
adds a kan-train override, ``--experiment`` takes another preset on the same data (its own
number of steps), and ``--label`` names that variant in the tables. Results go to
toy_side_by_side.json and the tables of toy_side_by_side.md (rewritten after every run; the file
is read again before each write, so runs for different seeds can go at the same time).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python docs/results/toy_side_by_side.py --width 2,5,1 --seed 1
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python docs/results/toy_side_by_side.py --width 2,1,1 --seed 2 \
        --label "polish, 4 restarts" --override callbacks.grid_extension.polish_iterations=100 \
        --override callbacks.grid_extension.polish_smoothness=1e-9 --override callbacks.multi_start.restarts=4
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python docs/results/toy_side_by_side.py --width 2,1,1 --seed 2 \
        --experiment paper_grid_extension_lm --label "experiment=paper_grid_extension_lm"
    PYTHONPATH=$PWD python docs/results/toy_side_by_side.py --report   # tables only
"""
import argparse, json, os, resource, statistics, subprocess, sys, time
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
JSON, MD = HERE / "toy_side_by_side.json", HERE / "toy_side_by_side.md"
GRIDS = [3, 5, 10, 20, 50, 100]
p = argparse.ArgumentParser()
p.add_argument("--width", default="2,5,1"); p.add_argument("--seed", type=int, default=1)
p.add_argument("--timeout", type=int, default=1200); p.add_argument("--steps", type=int, default=200); p.add_argument("--report", action="store_true")
p.add_argument("--override", action="append", default=[]); p.add_argument("--experiment", default="paper_grid_extension")
p.add_argument("--label", default="")
p.add_argument("--pykan_out", help=argparse.SUPPRESS)  # internal: the pykan child writes here
a = p.parse_args()
width = [int(v) for v in a.width.split(",")]
tag = a.width.replace(",", "-")  # Hydra reads commas in an override as a sweep
env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parents[1]))


def our_data(seed):
    """kan-train's datamodule for the seed (same composed config), as float64 tensors."""
    from hydra.utils import instantiate
    from kan_lightning.compose import compose_config
    dm = instantiate(compose_config(["experiment=paper_grid_extension", f"seed={seed}"]).data)
    dm.setup("fit")
    # normalize_inputs maps the domain [-1, 1]^2 onto itself: both models see the raw inputs
    norm = dm.normalization
    assert torch.equal(norm["x_shift"], torch.zeros(2)) and torch.equal(norm["x_scale"], torch.ones(2))
    return {s: (getattr(dm, f"x_{s}").double(), getattr(dm, f"y_{s}").double()) for s in ("train", "val", "test")}


def run_pykan(out):
    torch.set_num_threads(1); torch.set_default_dtype(torch.float64)
    from kan import KAN
    data = our_data(a.seed)
    dataset = {"train_input": data["train"][0], "train_label": data["train"][1],
               "test_input": data["test"][0], "test_label": data["test"][1]}
    rec = {"stages": []}
    model = KAN(width=width, grid=GRIDS[0], k=3, seed=a.seed, ckpt_path=f"/tmp/sbs/pykan_model_{tag}_{a.seed}")
    for i, G in enumerate(GRIDS):
        t0, c0 = time.perf_counter(), time.process_time()
        if i: model = model.refine(G)
        model.fit(dataset, opt="LBFGS", steps=a.steps)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        with torch.no_grad():
            r = {f"{s}/rmse": float(((model(x) - y) ** 2).mean().sqrt()) for s, (x, y) in data.items()}
        rec["stages"].append({"grid": G, "dt": dt, "cpu": cpu, **r})
        Path(out).write_text(json.dumps(rec))  # partial results survive a kill


def timed(cmd, **kw):
    """Run ``cmd``; its wall and CPU seconds (user + system, the machine is shared) and whether it ended."""
    used = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN))
    t0, c0, finished = time.perf_counter(), used(), True
    try:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        finished = False
    return {"wall_s": time.perf_counter() - t0, "cpu_s": used() - c0, "finished": finished}


def run_ours():
    run_dir = f"/tmp/sbs/ours_{tag}_{a.seed}_{int(time.time())}"
    steps = [f"trainer.max_epochs={6 * a.steps}"] if a.experiment == "paper_grid_extension" else []
    cmd = [sys.executable, "-m", "kan_lightning.commands.train", f"experiment={a.experiment}", f"seed={a.seed}",
           f"model.layers_hidden=[{a.width}]", f"hydra.run.dir={run_dir}", *steps, *a.override]
    t = timed(cmd)
    stages = json.loads(Path(run_dir, "metrics.json").read_text())["callbacks"]["grid_extension"]["stages"]
    prev = 0.0
    for s in stages:  # time_s: seconds since fit started, at the end of each stage
        s["dt"], prev = s["time_s"] - prev, s["time_s"]
    return {"stages": stages, **t, "run_dir": run_dir}


def pykan_side():
    out = f"/tmp/sbs/pykan_{tag}_{a.seed}.json"
    Path(out).unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--width", a.width, "--seed", str(a.seed), "--steps", str(a.steps), "--pykan_out", out]
    t = timed(cmd, timeout=a.timeout)
    return {**(json.loads(Path(out).read_text()) if Path(out).exists() else {"stages": []}), **t}


def delivered(rec):
    return min(rec["stages"], key=lambda s: s["val/rmse"]) if rec and rec["stages"] else None


def fmt(v, f=".2e"):
    return "—" if v is None else format(v, f)


def report(results):
    """The md file: a table per run, then the summary; text after the END marker is kept."""
    end = "<!-- end of generated tables -->"
    tail = MD.read_text().split(end, 1)[1] if MD.exists() and end in MD.read_text() else "\n"
    lines = ["# kan-lightning and pykan 0.2.8 side by side on the grid-extension toy", "",
             "Generated by `docs/results/toy_side_by_side.py` (command and protocol in its docstring). Test RMSE",
             "on kan-train's test split (1000 points), both trained on its 1000 training points; delivered:",
             "the stage with the lowest RMSE on its 500 validation points. Times: seconds of fitting",
             "(pykan: `refine` + `fit`; ours: GridExtension's `time_s`, switch included), one thread, same",
             "machine (shared 2-core VM, other jobs running), the two runs one after the other.", ""]
    summary = []
    for key, r in results.items():
        ours, py = r.get("ours"), r.get("pykan")
        by_g = lambda rec: {s["grid"]: s for s in rec["stages"]} if rec else {}
        o, k = by_g(ours), by_g(py)
        note = "" if py is None or py["finished"] else f" (pykan stopped after {py['wall_s']:.0f} s, not finished)"
        lines += [f"## {key}{note}", "", "| G | pykan train | ours train | pykan test | ours test | pykan s | ours s | pykan / ours time |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for G in GRIDS:
            po, oo = k.get(G, {}), o.get(G, {})
            ratio = po["dt"] / oo["dt"] if po and oo else None
            lines.append(f"| {G} | {fmt(po.get('train/rmse'))} | {fmt(oo.get('train/rmse'))} | {fmt(po.get('test/rmse'))} | "
                         f"{fmt(oo.get('test/rmse'))} | {fmt(po.get('dt'), '.0f')} | {fmt(oo.get('dt'), '.0f')} | {fmt(ratio, '.2f')} |")
        dp, do = delivered(py), delivered(ours)
        tp = sum(s["dt"] for s in py["stages"]) if py else None
        to = sum(s["dt"] for s in ours["stages"]) if ours else None
        lines += [f"| delivered | | | {fmt(dp and dp['test/rmse'])} (G={dp and dp['grid']}) | {fmt(do and do['test/rmse'])} "
                  f"(G={do and do['grid']}) | {fmt(tp, '.0f')} | {fmt(to, '.0f')} | {fmt(tp / to if tp and to and py['finished'] else None, '.2f')} |", "",
                  f"Whole process incl. start-up, wall / CPU: pykan {fmt(py and py['wall_s'], '.0f')} / {fmt(py and py.get('cpu_s'), '.0f')} s, "
                  f"ours {fmt(ours and ours['wall_s'], '.0f')} / {fmt(ours and ours.get('cpu_s'), '.0f')} s.", ""]
        cp, co = py and py.get("cpu_s"), ours and ours.get("cpu_s")
        summary.append((key, k.get(50, {}).get("test/rmse"), o.get(50, {}).get("test/rmse"), k.get(100, {}).get("test/rmse"),
                        o.get(100, {}).get("test/rmse"), dp["test/rmse"] if dp and py["finished"] else None, do and do["test/rmse"],
                        tp / to if tp and to and py["finished"] else None, cp / co if cp and co and py["finished"] else None))
    better = lambda x, y: "—" if x is None or y is None else ("ours" if y < x else "pykan") + f" {max(x, y) / min(x, y):.1f}x"
    lines += ["## Summary (test RMSE; better: who is lower, by what factor)", "",
              "| run | G=50 pykan / ours | better | G=100 pykan / ours | better | delivered pykan / ours | better | time pykan / ours | CPU pykan / ours |",
              "|---|---|---|---|---|---|---|---:|---:|"]
    for key, p50, o50, p100, o100, pd, od, tr, cr in summary:
        lines.append(f"| {key} | {fmt(p50)} / {fmt(o50)} | {better(p50, o50)} | {fmt(p100)} / {fmt(o100)} | {better(p100, o100)} | "
                     f"{fmt(pd)} / {fmt(od)} | {better(pd, od)} | {fmt(tr, '.2f')} | {fmt(cr, '.2f')} |")
    for w in sorted({k.split(" seed")[0] for k, *_ in summary}):
        rows = [r for r in summary if r[0].startswith(w + " seed")]
        # over the seeds where both sides have the figure
        med = lambda i, j=None: (lambda v: statistics.median(v) if v else None)(
            [r[i] for r in rows if r[i] is not None and r[j if j else i] is not None])
        lines.append(f"| {w} median over seeds | {fmt(med(1, 2))} / {fmt(med(2, 1))} | | {fmt(med(3, 4))} / {fmt(med(4, 3))} | | "
                     f"{fmt(med(5, 6))} / {fmt(med(6, 5))} | | {fmt(med(7), '.2f')} | {fmt(med(8), '.2f')} |")
    MD.write_text("\n".join(lines) + "\n" + end + tail)


if a.pykan_out:
    run_pykan(a.pykan_out); sys.exit()


def saved(key=None, side=None, rec=None):
    """The results on disk, with ``rec`` stored under ``key``/``side`` first when given."""
    results = json.loads(JSON.read_text()) if JSON.exists() else {}
    if key:
        results.setdefault(key, {})[side] = rec
        JSON.write_text(json.dumps(results, indent=1))
    return results


if not a.report:
    label = f", {a.label}" if a.label else ""
    key = f"KAN [{a.width.replace(',', ', ')}]{label} seed {a.seed}"
    saved(key, "pykan", None)
    report(saved(key, "ours", run_ours()))
    saved(key, "pykan", pykan_side())
report(saved())
