"""Stacked training against real separate ``kan-train`` runs of the same configs."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from kan_lightning.commands.evaluate import evaluate
from kan_lightning.stacked.plan import plan, why_not_stackable
from kan_lightning.stacked.training import Job, train_stack
from kan_lightning.commands.train import train

SMALL = [
    "model.layers_hidden=[2,3,1]",
    "data.function=paper_exp_sin",
    "data.n_samples=200",
    "data.batch_size=32",
    "trainer.max_epochs=3",
    "callbacks.grid_update.every_n_steps=4",
    "callbacks.grid_update.stop_step=10",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("precision, tolerance", [("64-true", 1e-8), pytest.param("32-true", 1e-3, marks=pytest.mark.slow)])
def test_stacked_runs_equal_separate_kan_train_runs(make_cfg, tmp_path, precision, tolerance):
    """float64: the separate and stacked models differ only in the order of float sums (one
    batched matmul vs one matmul per model), ~1e-16 per operation; after 21 Adam steps and 3
    grid updates every metric agrees to 1e-9 relative. float32: the same differences start at
    ~1e-7 and grow through Adam's division by sqrt(v) and the grid refits; 1e-3 relative bounds
    them here (the float64 case is the exactness check)."""
    seeds = [1, 2, 3]
    overrides = [*SMALL, f"trainer.precision={precision}"]
    separate = [train(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"alone{s}")) for s in seeds]
    jobs = [Job(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"stacked{s}")) for s in seeds]
    assert plan([OmegaConf.to_container(j.cfg, resolve=True) for j in jobs]) == ([[0, 1, 2]], {})
    results = train_stack(jobs)
    for seed, alone, stacked in zip(seeds, separate, results):
        assert stacked["status"] == "completed" and stacked["stacked"]["models"] == 3
        assert set(stacked["metrics"]) == set(alone["metrics"])
        for key, value in alone["metrics"].items():
            # torchmetrics keeps MSE/MAE sums in float32 states, also at 64-bit precision: an
            # ulp of float32 may flip where the float64 values differ at 1e-10
            bound = max(tolerance, 5e-7) if key.rsplit("/", 1)[-1] in ("mse", "rmse", "mae") else tolerance
            assert _relative(stacked["metrics"][key], value) < bound, (seed, key, stacked["metrics"][key], value)
        assert stacked["best"]["path"].endswith(alone["best"]["path"].rsplit("/", 1)[1])
        assert _relative(stacked["best"]["value"], alone["best"]["value"]) < tolerance
        run = tmp_path / f"stacked{seed}"
        assert json.loads((run / "metrics.json").read_text())["seed"] == seed
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
        # the best checkpoint is one kan-eval reads, with the test metrics of the record
        eval_cfg = make_cfg(f"ckpt_path={stacked['best']['path']}", "split=test", config_name="eval", output_dir=run / "eval")
        result = evaluate(eval_cfg)
        assert _relative(result["test/rmse"], stacked["metrics"]["test/rmse"]) < 1e-5


def test_jobs_that_cannot_stack_are_named():
    base = {"model": {"_target_": "kan_lightning.nn.KAN", "extrapolate": "bases"}, "optimizer": {"_target_": "my.Optimizer"},
            "trainer": {"max_epochs": 3}}
    assert "my.Optimizer" in why_not_stackable(base)
    assert "regularization" in why_not_stackable({**base, "model": {**base["model"], "regularization": {"l1": 0.1}}})
    adam = {**base, "optimizer": {"_target_": "torch.optim.Adam"}}
    assert "max_epochs" in why_not_stackable({**adam, "trainer": {"max_epochs": -1}})
    assert "mlp" in why_not_stackable({**base, "model": {"_target_": "kan_lightning.nn.mlp.MLP"}}).lower()
    configs = [
        {**base, "optimizer": {"_target_": "torch.optim.Adam"}, "data": {"_target_": "kan_lightning.data.SyntheticFunctionDataModule", "function": f}, "seed": s}
        for f, s in (("a", 1), ("b", 2))
    ] + [base]
    groups, alone = plan(configs)
    assert groups == [[0, 1]] and "my.Optimizer" in alone[2]
    configs[1]["model"] = {**configs[1]["model"], "grid_size": 7}
    groups, alone = plan(configs)
    assert groups == [] and set(alone) == {0, 1, 2}


@pytest.mark.slow
def test_launcher_stacks_a_sweep_and_runs_failing_jobs_alone(make_cfg, tmp_path):
    """``kan-train -m launcher=stacked``: the two jobs of one shape train stacked and match a
    separate run; the jobs whose data fails run alone and record the failure as usual."""
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    common = ["model.layers_hidden=[2,3,1]", "data.n_samples=200", "trainer.max_epochs=2", "trainer.precision=64-true",
              "data.input_dim=2", "data.domain=[-1,1]", "callbacks.grid_update.every_n_steps=2"]
    formulas = "data.formula='exp(sin(pi*x0)+x1**2)','log(x0-5)'"
    done = subprocess.run(
        [sys.executable, "-m", "kan_lightning.commands.train", "-m", "launcher=stacked", "seed=1,2", formulas, *common, f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert "training 2 jobs stacked" in done.stderr + done.stdout, done.stderr[-3000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert len(records) == 4
    good = {k: v for k, v in records.items() if "exp" in k}
    bad = {k: v for k, v in records.items() if "log" in k}
    assert all(r["status"] == "completed" and r["stacked"]["models"] == 2 for r in good.values())
    assert all(r["status"] == "failed" and "non-finite" in r["error"] and "stacked" not in r for r in bad.values())
    assert sorted(r["job"] for r in good.values()) == [0, 2]
    alone = train(make_cfg(*common, "seed=2", "data.formula='exp(sin(pi*x0)+x1**2)'", output_dir=tmp_path / "alone"))
    stacked = next(r for r in good.values() if r["seed"] == 2)
    for key, value in alone["metrics"].items():
        assert _relative(stacked["metrics"][key], value) < 5e-7, key


def test_stacked_lbfgs_equals_separate_kan_train_runs(make_cfg, tmp_path):
    """Full-batch L-BFGS with strong-Wolfe line search, one optimizer per model: the models
    take different numbers of line-search evaluations, yet each matches its separate run. The
    rounding-level differences of the batched evaluation pass through L-BFGS's curvature pairs and
    line-search step lengths, which grow them more than Adam does: 1e-6 relative after 15
    iterations in float64 (measured: ~1e-8)."""
    seeds = [4, 5]
    overrides = [*SMALL, "trainer.precision=64-true", "optimizer=lbfgs", "optimizer.max_iter=5", "data.batch_size=full",
                 "callbacks.grid_update.every_n_steps=1", "callbacks.grid_update.stop_step=2"]
    separate = [train(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"alone{s}")) for s in seeds]
    jobs = [Job(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"stacked{s}")) for s in seeds]
    for alone, stacked in zip(separate, train_stack(jobs)):
        assert stacked["stacked"]["models"] == 2
        assert set(stacked["metrics"]) == set(alone["metrics"])
        for key, value in alone["metrics"].items():
            assert _relative(stacked["metrics"][key], value) < 1e-6, (key, stacked["metrics"][key], value)


@pytest.mark.slow
def test_benchmark_compares_a_sweep_stacked_and_one_by_one(tmp_path):
    from kan_lightning.commands.bench_stacked import main

    result = main(["--jobs", "2", "--epochs", "2", "--precision", "64-true", "--out", str(tmp_path)])
    assert result["jobs_not_stacked"] == [] and result["one_by_one_s"] > 0 and result["stacked_s"] > 0
    assert max(result["max_relative_difference"].values()) < 1e-6
    assert len(list((tmp_path / "stacked").glob("*/metrics.json"))) == 2


@pytest.mark.slow
def test_sigterm_stops_a_stacked_sweep_and_records_its_jobs(tmp_path):
    """SIGTERM during stacked training: every job records ``interrupted`` and the sweep exits
    with 128 + 15 without starting more jobs, as ``kan-train`` does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "kan_lightning.commands.train", "-m", "launcher=stacked", "seed=1,2", "model.layers_hidden=[2,3,1]",
               "data.function=paper_exp_sin", "trainer.max_epochs=100000", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in process.stdout:
            if "jobs stacked" in line:
                break
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    records = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(records) == 2 and all(r["status"] == "interrupted" and r["signal"] == "SIGTERM" for r in records)


def test_a_diverging_job_stops_alone(make_cfg, tmp_path):
    """One job's squared errors overflow float32 at the first step: it is recorded ``diverged``
    (as the divergence guard records a separate run) and the other job completes."""
    common = [*SMALL, "data.input_dim=2", "data.domain=[-1,1]", "trainer.max_epochs=2"]
    formulas = ["x0*x1", "exp(60*x0)"]  # the targets reach 1e26: squares past float32's 3e38
    jobs = [Job(make_cfg(*common, f"data.formula='{f}'", output_dir=tmp_path / str(i))) for i, f in enumerate(formulas)]
    fine, diverged = train_stack(jobs)
    assert fine["status"] == "completed" and math.isfinite(fine["metrics"]["test/rmse"])
    assert type(diverged).__name__ == "TrainingDiverged" and diverged.step == 0
    record = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["step"] == 0 and "not finite" in record["error"]
