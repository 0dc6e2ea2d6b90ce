"""End to end: train(cfg) with real Trainers, TensorBoard files read back, kan-eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from kan_lightning.commands.evaluate import evaluate
from kan_lightning.commands.train import train

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
    cfg = make_cfg(*FAST, "logger=many", "model.regularization.l1=1e-3", "tags=[smoke]")
    record = train(cfg)
    events = EventAccumulator(_event_dir(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/objective_epoch", "val/loss", "val/rmse", "reg/l1_step", "reg/l1_epoch", "test/rmse"} <= scalars
    assert {"run/num_parameters", "run/wall_time_s", "val/loss_best"} <= scalars
    assert not any(tag == "hp_metric" or tag.startswith("hp/") for tag in scalars)  # no duplicates
    lr_tags = [t for t in scalars if t.startswith("lr-")]
    assert lr_tags, scalars
    assert events.Scalars("run/num_parameters")[-1].value == record["num_parameters"]
    # the objective is the loss plus the penalty: larger on a regularized run
    objective, loss = events.Scalars("train/objective_epoch")[-1].value, events.Scalars("train/loss_epoch")[-1].value
    assert objective == pytest.approx(loss + 1e-3 * events.Scalars("reg/l1_epoch")[-1].value, rel=1e-4) and objective > loss

    content = events.PluginTagToContent("hparams")
    infos = [plugin_data_pb2.HParamsPluginData.FromString(blob) for blob in content.values()]
    starts = [i.session_start_info for i in infos if i.HasField("session_start_info")]
    assert len(starts) == 1, "exactly one hparams session per run"
    hparams = starts[0].hparams
    assert hparams["model.grid_size"].number_value == 5
    assert hparams["model.regularization.l1"].number_value == pytest.approx(1e-3)
    assert hparams["model"].string_value == "kan" and hparams["trainer"].string_value == "debug"
    assert hparams["trainer.max_epochs"].number_value == cfg.trainer.max_epochs
    assert hparams["tags"].string_value == "smoke"
    experiments = [i.experiment for i in infos if i.HasField("experiment")]
    metric_tags = [m.name.tag for m in experiments[0].metric_infos]
    assert metric_tags[:5] == ["test/rmse", "val/rmse", "test/r2", "run/num_parameters", "run/wall_time_s"]
    assert set(metric_tags) <= scalars, "every HPARAMS metric is a scalar tag of the run"
    swept = [h.name for h in experiments[0].hparam_infos if h.differs]
    # a single run: its overridden keys (a config group: its choice) differ, which TensorBoard lists first
    assert set(swept) == {"debug", "trainer.enable_progress_bar", "logger", "model.regularization.l1", "tags"}

    # the CSV logger gets the same hyperparameters and final values
    csv_hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert csv_hparams["model.grid_size"] == 5 and csv_hparams["trainer.max_epochs"] == cfg.trainer.max_epochs
    tb_hparams = yaml.safe_load((tmp_path / "tensorboard" / "hparams.yaml").read_text())
    assert tb_hparams == csv_hparams
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"run/num_parameters", "test/rmse"} <= set(header)


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
