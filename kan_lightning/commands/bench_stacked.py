"""Time a sweep of small KANs stacked against one by one: ``python -m kan_lightning.commands.bench_stacked``.

Runs the same ``kan-train -m`` sweep twice, end to end in fresh processes: with Hydra's basic
launcher (one job after the other) and with ``launcher=stacked``, then compares wall times and
every job's metrics (with grid extension also each stage's validation RMSE and the delivered
grid). Default: the KAN paper's toy (``experiment=paper_toy``: [2, 5, 1], G = 5, full batch, grid
updates) with Adam (``--optimizer lbfgs``: the toy's own L-BFGS), ``--jobs`` seeds; more sweep
values as overrides (e.g. two widths).

    python -m kan_lightning.commands.bench_stacked --jobs 16 --epochs 200
    python -m kan_lightning.commands.bench_stacked --jobs 16 --epochs 20 --optimizer lbfgs
    python -m kan_lightning.commands.bench_stacked --experiment paper_grid_extension --optimizer lbfgs \
        --precision 64-true --first-seed 1 --jobs 3 --epochs 1200 'model.layers_hidden=[2,5,1],[2,1,1]'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPARED = ("test/rmse", "test/r2", "val/loss", "train/loss")


def run_sweep(overrides: list[str], sweep_dir: Path, threads: int) -> float:
    """Wall time of ``kan-train -m <overrides>`` into ``sweep_dir``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "kan_lightning.commands.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def records(sweep_dir: Path) -> dict[str, dict]:
    """The jobs' metrics.json by job directory (the same job numbers in both sweeps)."""
    return {path.parent.name: json.loads(path.read_text()) for path in sweep_dir.glob("*/metrics.json")}


def _stages(record: dict) -> dict | None:
    return ((record.get("callbacks") or {}).get("grid_extension")) or None


def compare(alone: dict[str, dict], stacked: dict[str, dict]) -> dict[str, float]:
    """Per metric, the largest relative difference over the jobs (stacked vs one by one); with
    grid extension also over every stage's ``val/rmse`` and the count of delivered grids that differ."""
    worst: dict[str, float] = {}
    for job, record in alone.items():
        pairs = [(key, record["metrics"][key], stacked[job]["metrics"][key]) for key in COMPARED]
        mine, theirs = _stages(stacked[job]), _stages(record)
        if mine and theirs:
            pairs += [("stage val/rmse", a["val/rmse"], b["val/rmse"]) for a, b in zip(theirs["stages"], mine["stages"])]
            worst["delivered grids differing"] = worst.get("delivered grids differing", 0) + (
                (theirs.get("delivered") or {}).get("grid") != (mine.get("delivered") or {}).get("grid"))
        for key, a, b in pairs:
            worst[key] = max(worst.get(key, 0.0), abs(a - b) / max(abs(a), 1e-12))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="number of jobs (seeds) in the sweep")
    parser.add_argument("--epochs", type=int, default=200, help="trainer.max_epochs (full batch: one step each)")
    parser.add_argument("--experiment", default="paper_toy", help="the experiment preset of both sweeps")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + jobs - 1")
    parser.add_argument("--optimizer", default="adam", help="the optimizer group (adam, lbfgs, ...)")
    parser.add_argument("--precision", default="32-true", help="trainer.precision (32-true or 64-true)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both sweeps")
    parser.add_argument("--out", type=Path, default=None, help="where the sweeps go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="more kan-train overrides for both sweeps")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.epochs < 1:
        parser.error("--jobs and --epochs must be >= 1")
    seeds = ",".join(str(s) for s in range(args.first_seed, args.first_seed + args.jobs))
    common = [
        f"experiment={args.experiment}", f"optimizer={args.optimizer}", f"seed={seeds}", f"trainer.max_epochs={args.epochs}",
        f"trainer.precision={args.precision}", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        t_alone = run_sweep(common, root / "one_by_one", args.threads)
        t_stacked = run_sweep([*common, "launcher=stacked"], root / "stacked", args.threads)
        alone, stacked = records(root / "one_by_one"), records(root / "stacked")
    if len(alone) < args.jobs or set(alone) != set(stacked):
        raise RuntimeError(f"expected the same >= {args.jobs} jobs in both sweeps, got {sorted(alone)} and {sorted(stacked)}")
    unstacked = [job for job, r in stacked.items() if "stacked" not in r]
    result = {
        "experiment": args.experiment,
        "jobs": len(alone),
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "precision": args.precision,
        "threads": args.threads,
        "one_by_one_s": round(t_alone, 2),
        "stacked_s": round(t_stacked, 2),
        "speedup": round(t_alone / t_stacked, 2),
        "max_relative_difference": {k: float(f"{v:.3g}") for k, v in compare(alone, stacked).items()},
        "jobs_not_stacked": unstacked,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
