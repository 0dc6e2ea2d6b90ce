"""Stacked grid extension against real separate ``kan-train`` runs of the same configs."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from kan_lightning.commands.evaluate import evaluate
from kan_lightning.commands.train import train
from kan_lightning.stacked.plan import plan, why_not_stackable
from kan_lightning.stacked.training import Job, train_stack

# experiment=paper_grid_extension at a tiny size: 80 training points, grids 3 -> 5 -> 30 over 9
# epochs, validation every 2 epochs (not at the switches), keep_best
TINY = [
    "experiment=paper_grid_extension",
    "data.n_samples=200",
    "callbacks.grid_extension.grids=[3,5,30]",
    "trainer.max_epochs=9",
    "trainer.check_val_every_n_epoch=2",
    "callbacks.last_checkpoint.every_n_epochs=1",
]
# without the preset's hidden-grid margin in range fractions: a well-conditioned refit
NO_RANGE_MARGIN = ["callbacks.grid_extension.grid_margin_range=0.0"]
ADAM = ["optimizer=adam", "~optimizer.history_size", "optimizer.lr=0.2"]
STAGE_KEYS = ("stage", "grid", "epoch", "step", "num_parameters")


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _assert_same_run(stacked: dict, alone: dict, tolerance: float, float32_bound: float) -> None:
    assert stacked["status"] == "completed" and set(stacked["metrics"]) == set(alone["metrics"])
    for key, value in alone["metrics"].items():
        # torchmetrics keeps MSE/MAE sums in float32 states: an ulp may flip where float64 agrees
        name = key.rsplit("/", 1)[-1]
        bound = max(tolerance, float32_bound) if name in ("mse", "rmse", "mae") else tolerance
        mine = stacked["metrics"][key]
        if name == "r2":  # 1 - R^2 is the relative error (R^2 itself may be near 0)
            mine, value = 1 - mine, 1 - value
        assert _relative(mine, value) < bound, (key, stacked["metrics"][key], value)
    mine, theirs = stacked["callbacks"]["grid_extension"], alone["callbacks"]["grid_extension"]
    assert len(mine["stages"]) == len(theirs["stages"]) and len(mine["history"]) == len(theirs["history"])
    for a, b in zip(mine["stages"], theirs["stages"]):
        assert {k: a[k] for k in STAGE_KEYS} == {k: b[k] for k in STAGE_KEYS}
        for split in ("train", "val", "test"):
            assert _relative(a[f"{split}/rmse"], b[f"{split}/rmse"]) < tolerance, (a, b)
    for a, b in zip(mine["history"], theirs["history"]):
        assert {k: a[k] for k in ("from", "to", "epoch", "step")} == {k: b[k] for k in ("from", "to", "epoch", "step")}
        assert _relative(a["val/loss"], b["val/loss"]) < tolerance
    assert mine["delivered"]["stage"] == theirs["delivered"]["stage"] and mine["delivered"]["grid"] == theirs["delivered"]["grid"]
    assert stacked["num_parameters"] == alone["num_parameters"]
    assert stacked["best"]["path"].rsplit("/", 1)[1] == alone["best"]["path"].rsplit("/", 1)[1]


@pytest.mark.parametrize("margin, tolerance", [(NO_RANGE_MARGIN, 1e-6), ([], 1e-3)], ids=["margin0", "preset_margin"])
def test_stacked_grid_extension_equals_separate_kan_train_runs(make_cfg, tmp_path, margin, tolerance):
    """Adam, float64: per stage (grid, epoch, step, train/val/test RMSE), the switches, the
    delivered stage (keep_best: here a different grid per seed), the test metrics and the best
    checkpoint of each stacked job equal its separate run. The models differ only in the order
    of float sums (one batched matmul instead of one per model), ~1e-16 per operation, grown by
    27 Adam steps at lr 0.2 and two least-squares refits. Without the range margin the last
    refit (G = 30 on 80 points) is ill-conditioned but tame: ~7e-7 relative at most (measured,
    float32 MSE sums included; ~1e-10 with G = 10); 1e-6 bounds it. With the preset's margin
    (0.04 of the range per side) and refit smoothness 1e-6 the refit's least squares is far
    worse conditioned (wide data-free intervals held by a weak penalty) and amplifies the same
    rounding to ~1e-4 (measured 9.8e-5; smoothness 0: 1.9e-6, 1e-3: 9e-7), so 1e-3 bounds it:
    conditioning, not a stacking error."""
    seeds = [1, 2, 3]
    overrides = [*TINY, *margin, *ADAM]
    separate = [train(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"alone{s}")) for s in seeds]
    jobs = [Job(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"stacked{s}")) for s in seeds]
    assert plan([OmegaConf.to_container(j.cfg, resolve=True) for j in jobs]) == ([[0, 1, 2]], {})
    results = train_stack(jobs)
    for alone, stacked in zip(separate, results):
        assert stacked["stacked"]["models"] == 3
        _assert_same_run(stacked, alone, tolerance, tolerance)
    delivered = {r["callbacks"]["grid_extension"]["delivered"]["grid"] for r in results}
    assert len(delivered) > 1, delivered  # the models end on different grids
    record = json.loads((tmp_path / "stacked1" / "metrics.json").read_text())
    assert record["callbacks"]["grid_extension"]["delivered"] == results[0]["callbacks"]["grid_extension"]["delivered"]
    # the best checkpoints (on a finer grid than the configured one) read back as the separate run's
    for name, record in (("alone3", separate[2]), ("stacked3", results[2])):
        cfg = make_cfg(f"ckpt_path={record['best']['path']}", "split=test", config_name="eval", output_dir=tmp_path / name / "eval")
        record["eval"] = evaluate(cfg)
    assert _relative(results[2]["eval"]["test/rmse"], separate[2]["eval"]["test/rmse"]) < tolerance
    # the delivered networks on disk are the ones each run tested (test_ckpt=last: the delivered)
    for name, record in (("alone2", separate[1]), ("stacked2", results[1])):
        saved = record["callbacks"]["grid_extension"]["delivered_checkpoint"]
        assert saved == str(tmp_path / name / "checkpoints" / "delivered.ckpt")
        cfg = make_cfg(f"ckpt_path={saved}", "split=test", config_name="eval", output_dir=tmp_path / name / "eval_delivered")
        assert _relative(evaluate(cfg)["test/rmse"], record["metrics"]["test/rmse"]) < 1e-6


def test_stacked_grid_extension_lbfgs_follows_separate_runs(make_cfg, tmp_path):
    """L-BFGS, one optimizer per model: the same stages, switches and delivered grid; the
    values within 1e-3 relative (L-BFGS's line search and curvature pairs amplify the rounding
    differences of the batched evaluation: measured up to ~6e-5 after 3 stages)."""
    seeds = [1, 2]
    overrides = [*TINY, *NO_RANGE_MARGIN, "optimizer.max_iter=5", "trainer.max_epochs=6"]
    separate = [train(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"alone{s}")) for s in seeds]
    jobs = [Job(make_cfg(*overrides, f"seed={s}", output_dir=tmp_path / f"stacked{s}")) for s in seeds]
    for alone, stacked in zip(separate, train_stack(jobs)):
        _assert_same_run(stacked, alone, 1e-3, 1e-3)


def test_formulas_of_other_widths_train_in_separate_stacks(make_cfg, tmp_path):
    """experiment=feynman: formulas with two and three inputs (first width ``auto``) plan as one
    group and train as two stacks, one per width."""
    functions = ["feynman_I.12.11", "feynman_I.29.16", "feynman_II.35.18"]  # 2, 3, 2 inputs
    common = ["experiment=feynman", "data.n_samples=100", "callbacks.grid_extension.grids=[3,5]", "trainer.max_epochs=2",
              "optimizer.max_iter=2"]
    jobs = [Job(make_cfg(*common, f"data.function={f}", output_dir=tmp_path / f)) for f in functions]
    assert plan([OmegaConf.to_container(j.cfg, resolve=True) for j in jobs]) == ([[0, 1, 2]], {})
    results = train_stack(jobs)
    assert [r["stacked"] for r in results] == [{"models": 2, "slot": 0}, {"models": 1, "slot": 0}, {"models": 2, "slot": 1}]
    assert [r["config"]["model"]["layers_hidden"][0] for r in results] == [2, 3, 2]
    assert all(len(r["callbacks"]["grid_extension"]["stages"]) == 2 for r in results)


def test_grid_extension_options_that_cannot_stack_are_named():
    """``patience`` and ``stage_patience`` cannot stack (each model would switch or stop at its own
    time); the range margin can."""
    base = {"model": {"_target_": "kan_lightning.nn.KAN"}, "optimizer": {"_target_": "torch.optim.Adam"},
            "trainer": {"max_epochs": 3, "check_val_every_n_epoch": 10}}
    extension = {"_target_": "kan_lightning.lit.callbacks.GridExtension", "grids": [3, 5]}
    data = {"_target_": "kan_lightning.data.SyntheticFunctionDataModule"}
    assert why_not_stackable({**base, "data": data, "callbacks": {"grid_extension": extension}}) is None
    patience = {**base, "data": data, "callbacks": {"grid_extension": {**extension, "patience": 2}}}
    assert "callbacks.grid_extension.patience=2" in why_not_stackable(patience)
    ranged = {**base, "data": data, "callbacks": {"grid_extension": {**extension, "grid_margin_range": 0.04}}}
    assert why_not_stackable(ranged) is None
    polished = {**base, "data": data, "callbacks": {"grid_extension": {**extension, "polish_iterations": 10}}}
    assert "callbacks.grid_extension.polish_iterations=10" in why_not_stackable(polished)
    stopping = {**base, "data": data, "callbacks": {"grid_extension": {**extension, "keep_best": True, "stage_patience": 1}}}
    assert "callbacks.grid_extension.stage_patience=1" in why_not_stackable(stopping)
    assert "check_val_every_n_epoch" in why_not_stackable({**base, "trainer": {"max_epochs": 3, "check_val_every_n_epoch": 0}})
