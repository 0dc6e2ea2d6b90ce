"""End to end: train(cfg) with real Trainers, TensorBoard files read back, kan-eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from kan_lightning.evaluate import evaluate
from kan_lightning.train import train

FAST = ["debug=fast", "trainer.enable_progress_bar=false"]


def test_train_writes_metrics_and_checkpoints(make_cfg, tmp_path):
    record = train(make_cfg(*FAST))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "completed" == record["status"]
    for name in ("train/rmse", "val/rmse", "test/rmse", "test/mse", "test/mae", "test/r2"):
        assert math.isfinite(saved["metrics"][name]), name
    assert saved["num_parameters"] == 2 * 20 * 10 + 20 * 20 * 10 + 20 * 1 * 10
    assert saved["seed"] == 42 and saved["wall_time_s"] > 0
    assert saved["config"]["model"]["grid_size"] == 5
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert Path(saved["best"]["path"]).is_file()


def _event_dir(root: Path) -> str:
    files = sorted(root.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {root}"
    return str(files[0].parent)


def test_tensorboard_scalars_and_hparams_read_back(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "logger=tensorboard", "model.regularization.l1=1e-3")
    record = train(cfg)
    events = EventAccumulator(_event_dir(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "val/loss", "val/rmse", "reg/l1_step", "reg/l1_epoch", "hp/test_rmse"} <= scalars
    assert not any(tag == "hp_metric" for tag in scalars)  # no placeholder metric
    lr_tags = [t for t in scalars if t.startswith("lr-")]
    assert lr_tags, scalars
    hp_value = events.Scalars("hp/test_rmse")[-1].value
    assert hp_value == pytest.approx(record["metrics"]["test/rmse"], rel=1e-6)

    content = events.PluginTagToContent("hparams")
    infos = [plugin_data_pb2.HParamsPluginData.FromString(blob) for blob in content.values()]
    starts = [i.session_start_info for i in infos if i.HasField("session_start_info")]
    assert len(starts) == 1, "exactly one hparams session per run"
    hparams = starts[0].hparams
    assert hparams["model/grid_size"].number_value == 5
    assert hparams["model/regularization/l1"].number_value == pytest.approx(1e-3)
    experiments = [i.experiment for i in infos if i.HasField("experiment")]
    metric_tags = {m.name.tag for m in experiments[0].metric_infos}
    assert "hp/test_rmse" in metric_tags


def test_eval_reproduces_test_metrics(make_cfg, tmp_path):
    record = train(make_cfg(*FAST, "test_ckpt=last"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    cfg = make_cfg(f"ckpt_path={ckpt}", "trainer.enable_progress_bar=false", config_name="eval", output_dir=tmp_path / "eval")
    metrics = evaluate(cfg)
    for name in ("test/rmse", "test/mae", "test/r2"):
        assert metrics[name] == pytest.approx(record["metrics"][name], rel=1e-5, abs=1e-7), name
    assert json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["metrics"] == metrics


def test_eval_other_split_and_data_override(make_cfg, tmp_path):
    train(make_cfg(*FAST))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    cfg = make_cfg(f"ckpt_path={ckpt}", "split=val", "+data.n_samples=300", config_name="eval", output_dir=tmp_path / "e")
    metrics = evaluate(cfg)
    assert set(metrics) >= {"val/rmse", "val/mse"}


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=lbfgs", "data.batch_size=full"],
        ["optimizer=adamw", "scheduler=cosine"],
        ["optimizer=sgd", "scheduler=warmup_cosine", "scheduler.factory.warmup_steps=2", "scheduler.factory.total_steps=6"],
        ["scheduler=plateau", "callbacks=early_stopping"],
        ["model=mlp", "logger=csv"],
        ["trainer.precision=64-true", "data.normalize_inputs=true", "data.normalize_targets=true"],
        ["data=formula", "data.formula='exp(sin(pi*x0)+x1**2)'", "data.domain=[[-1,1],[-1,1]]"],
        ["model.regularization.entropy=1e-3", "model.regularization.smoothness=1e-3", "model.regularization.coef_l1=1e-3"],
    ],
    ids=["lbfgs-full-batch", "adamw-cosine", "sgd-warmup", "plateau-early-stop", "mlp-csv", "float64-normalized", "formula", "regularized"],
)
def test_training_variants_run(make_cfg, overrides):
    record = train(make_cfg(*FAST, *overrides))
    assert record["status"] == "completed"
    assert math.isfinite(record["metrics"]["test/rmse"])


def test_layers_must_match_data(make_cfg):
    cfg = make_cfg(*FAST, "model.layers_hidden=[3,4,1]")
    with pytest.raises(ValueError, match=r"layers_hidden=\[3, 4, 1\].*input dimension 2"):
        train(cfg)
    for widths in ("[auto,4,auto,1]", "[0,4,1]"):  # auto only at the ends
        with pytest.raises(ValueError, match=r"model.layers_hidden.*auto"):
            train(make_cfg(*FAST, f"model.layers_hidden={widths}"))


@pytest.mark.parametrize("model", ["kan", "mlp"])
def test_default_widths_follow_the_data(make_cfg, model):
    """A 3-input formula with the default model: its first width (auto) becomes 3."""
    cfg = make_cfg(*FAST, f"model={model}", "data=formula", "data.formula='x0*x1+sin(x2)'", "data.domain=[-1,1]")
    record = train(cfg)
    assert record["status"] == "completed" and math.isfinite(record["metrics"]["test/rmse"])
    assert record["config"]["model"]["layers_hidden"] == [3, *cfg.model.layers_hidden[1:-1], 1]


@pytest.mark.slow
def test_default_config_learns_the_guide_example(make_cfg):
    """The README's main command: the guide's usage example to a small test error."""
    record = train(make_cfg("trainer.enable_progress_bar=false", "logger=none"))
    assert record["metrics"]["test/rmse"] < 1e-2
