"""Time a sweep of small KANs stacked against one by one: ``python -m kan_lightning.commands.bench_stacked``.

Runs the same ``kan-train -m`` sweep twice, end to end in fresh processes: with Hydra's basic
launcher (one job after the other) and with ``launcher=stacked``, then compares wall times and
every job's metrics. Default: the KAN paper's toy (``experiment=paper_toy``: [2, 5, 1], G = 5,
full batch, grid updates) with Adam (``--optimizer lbfgs``: the toy's own L-BFGS), ``--jobs`` seeds.

    python -m kan_lightning.commands.bench_stacked --jobs 16 --epochs 200
    python -m kan_lightning.commands.bench_stacked --jobs 16 --epochs 20 --optimizer lbfgs
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


def records(sweep_dir: Path) -> dict[int, dict]:
    """The jobs' metrics.json by seed."""
    out = {}
    for path in sweep_dir.glob("*/metrics.json"):
        record = json.loads(path.read_text())
        out[int(record["seed"])] = record
    return out


def compare(alone: dict[int, dict], stacked: dict[int, dict]) -> dict[str, float]:
    """Per metric, the largest relative difference over the jobs (stacked vs one by one)."""
    worst = {}
    for key in COMPARED:
        diffs = []
        for seed, record in alone.items():
            a, b = record["metrics"][key], stacked[seed]["metrics"][key]
            diffs.append(abs(a - b) / max(abs(a), 1e-12))
        worst[key] = max(diffs)
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16, help="number of jobs (seeds) in the sweep")
    parser.add_argument("--epochs", type=int, default=200, help="trainer.max_epochs (full batch: one step each)")
    parser.add_argument("--optimizer", default="adam", help="the optimizer group (adam, lbfgs, ...)")
    parser.add_argument("--precision", default="32-true", help="trainer.precision (32-true or 64-true)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both sweeps")
    parser.add_argument("--out", type=Path, default=None, help="where the sweeps go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="more kan-train overrides for both sweeps")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.epochs < 1:
        parser.error("--jobs and --epochs must be >= 1")
    seeds = ",".join(str(s) for s in range(args.jobs))
    common = [
        "experiment=paper_toy", f"optimizer={args.optimizer}", f"seed={seeds}", f"trainer.max_epochs={args.epochs}",
        f"trainer.precision={args.precision}", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        t_alone = run_sweep(common, root / "one_by_one", args.threads)
        t_stacked = run_sweep([*common, "launcher=stacked"], root / "stacked", args.threads)
        alone, stacked = records(root / "one_by_one"), records(root / "stacked")
    if len(alone) != args.jobs or len(stacked) != args.jobs:
        raise RuntimeError(f"expected {args.jobs} records per sweep, got {len(alone)} and {len(stacked)}")
    unstacked = [s for s, r in stacked.items() if "stacked" not in r]
    result = {
        "jobs": args.jobs,
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
