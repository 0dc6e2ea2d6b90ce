"""CPU time of the grid-extension toy: kan-train from given source trees and pykan 0.2.8, back to back.

Each entry runs as its own process, one thread, on the same data and schedule (grids 3 -> 100,
``--steps`` L-BFGS steps per grid, KAN [2, 5, 1], seed 1): a source tree runs
``kan-train experiment=paper_grid_extension trainer.max_epochs=6*steps`` with that tree first on
``PYTHONPATH``; ``pykan`` runs the pykan side of ``toy_side_by_side.py`` (its child mode, which
writes nothing under docs/). Prints, per entry, the process's CPU seconds (user + system, start-up
included: the machine is shared, wall times are not comparable), its wall seconds, pykan's own
fitting CPU seconds, and the test RMSE per grid; nothing is written under docs/.

    OMP_NUM_THREADS=1 python docs/results/toy_speed.py --steps 100 pykan /path/to/checkout ...
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=100)
p.add_argument("entries", nargs="+", help="'pykan' or a source tree holding kan_lightning")
a = p.parse_args()
out_dir = Path(tempfile.mkdtemp(prefix="toy_speed_"))


def run(cmd, tree):
    """CPU (user + system) and wall seconds of ``cmd`` with ``tree`` on PYTHONPATH, from a neutral
    working directory (``python -m`` would put the current one first)."""
    used = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
    t0, c0 = time.perf_counter(), used()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out_dir)
    return {"cpu_s": used() - c0, "wall_s": time.perf_counter() - t0}


for i, entry in enumerate(a.entries):
    if entry == "pykan":
        out = out_dir / f"pykan_{i}.json"
        cmd = [sys.executable, str(HERE / "toy_side_by_side.py"), "--seed", "1", "--steps", str(a.steps), "--pykan_out", str(out)]
        rec = run(cmd, HERE.parents[1])
        stages = json.loads(out.read_text())["stages"]
        rec["fit_cpu_s"] = sum(s["cpu"] for s in stages)
    else:
        run_dir = out_dir / f"ours_{i}"
        cmd = [sys.executable, "-m", "kan_lightning.commands.train", "experiment=paper_grid_extension", "seed=1",
               f"trainer.max_epochs={6 * a.steps}", f"hydra.run.dir={run_dir}"]
        rec = run(cmd, Path(entry).resolve())
        stages = json.loads((run_dir / "metrics.json").read_text())["callbacks"]["grid_extension"]["stages"]
    rec["test_rmse"] = {s["grid"]: s["test/rmse"] for s in stages}
    print(entry, json.dumps(rec), flush=True)
