"""Reliability: clear errors for bad input, nothing lost on crashes, reproducible runs, safe loading.

Fast tests run ``train(cfg)`` in-process; the ``slow`` ones drive the real command line in
subprocesses (each pays ~6 s of imports): exit codes, SIGKILL + resume, SIGTERM, a sweep with a
failing job, determinism across processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from kan_lightning.config_checks import ConfigError, instantiate_node, validate_config
from kan_lightning.data.datamodule import EpochShuffleSampler, ResumableDataLoader
from kan_lightning.commands.evaluate import evaluate
from kan_lightning.lit.checkpoint import read_checkpoint
from kan_lightning.lit.safety import TrainingDiverged, TrainingInterrupted
from kan_lightning.commands.train import train

FAST = ["debug=fast", "trainer.enable_progress_bar=false"]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Bad input: every mistake names its key and value


BAD_INPUTS = [
    # (overrides, fragments the message must contain)
    (["model.grid_size=0"], ["model.grid_size=0", ">= 1"]),
    (["model.grid_size=abc"], ["model.grid_size='abc'", "integer"]),
    (["model.grid_size=2.5"], ["model.grid_size=2.5", "integer"]),
    (["model.spline_order=-1"], ["model.spline_order=-1", ">= 0"]),
    (["model.grid_range=[1,-1]"], ["model.grid_range=[1, -1]", "reversed"]),
    (["model.grid_range=[1,1]"], ["model.grid_range=[1, 1]", "empty"]),
    (["model.grid_range=[1]"], ["model.grid_range=[1]", "pair"]),
    (["model.layers_hidden=[3,4,1]"], ["model.layers_hidden=[3, 4, 1]", "input dimension 2"]),
    (["model.layers_hidden=[2,4,3]"], ["model.layers_hidden=[2, 4, 3]", "output dimension 1"]),
    (["model.layers_hidden=abc"], ["model.layers_hidden='abc'", "positive integer widths"]),
    (["+model.grid_sze=3"], ["model.grid_sze", "did you mean model.grid_size"]),
    (["model.base_activation=swish"], ["model.base_activation='swish'", "silu"]),
    (["model.grid_eps=2"], ["model.grid_eps=2", "<= 1"]),
    (["model.regularization.l1=-0.1"], ["model.regularization.l1=-0.1", ">= 0"]),
    (["+model.regularization.l3=1"], ["model.regularization.l3", "did you mean model.regularization.l1"]),
    (["optimizer.lr=-0.01"], ["optimizer.lr=-0.01", "> 0"]),
    (["optimizer.lr=fast"], ["optimizer.lr='fast'", "number"]),
    (["optimizer.betas=[0.9,1.5]"], ["optimizer.betas=[0.9, 1.5]", "[0, 1)"]),
    (["data.batch_size=0"], ["data.batch_size=0", "positive integer or 'full'"]),
    (["data.n_samples=-5"], ["data.n_samples=-5", ">= 1"]),
    (["data.n_samples=3"], ["data.n_samples=3", "too small"]),
    (["data.split=[0.5,0.3,0.1]"], ["data.split=[0.5, 0.3, 0.1]", "sum to 1", "0.9"]),
    (["data.noise_level=-1"], ["data.noise_level=-1", ">= 0"]),
    (["data.domain=[2,-2]"], ["data.domain=[2, -2]", "low < high"]),
    (["data.domain=[1,1]"], ["data.domain=[1, 1]", "low < high"]),
    (["data.function=nosuch"], ["data.function='nosuch'", "known functions:", "guide_example", "polynomial"]),
    (["data=formula", "data.formula='sin(x0'"], ["data.formula='sin(x0'", "column 4"]),
    (["data=formula", "data.formula='__import__(\"os\").system(\"touch pwned\")'"], ["data.formula=", "call of '__import__(\"os\").system' is not allowed at column 1"]),
    (["data=formula"], ["data.function and data.formula are both null"]),
    (["data.sampling=random"], ["data.sampling='random'", "'uniform'"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"]),
    (["trainer.precision=42-true"], ["trainer.precision='42-true'", "32-true", "bf16-mixed"]),
    (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1", ">= 0"]),
    (["trainer.accelerator=tpuu"], ["trainer.accelerator='tpuu'", "cpu"]),
    (["scheduler.interval=hour"], ["scheduler.interval='hour'", "'epoch', 'step'"]),
    (["scheduler=warmup_cosine", "scheduler.factory.warmup_steps=10", "scheduler.factory.total_steps=5"], ["scheduler.factory", "warmup_steps"]),
    (["callbacks.grid_update.every_n_steps=-1"], ["callbacks.grid_update.every_n_steps=-1", ">= 0"]),
    (["+callbacks.grid_update.every=3"], ["callbacks.grid_update.every", "GridUpdate", "every_n_steps"]),
    (["test_ckpt=worst"], ["test_ckpt='worst'", "'best', 'last'"]),
    (["seed=abc"], ["seed='abc'", "integer"]),
    (["ckpt_path=/no/such/file.ckpt"], ["ckpt_path='/no/such/file.ckpt'", "not found"]),
    # data: a target that is NaN on part of its domain, refused with the count and the first row
    (["data=formula", "data.formula='log(x0)'", "model.layers_hidden=[1,3,1]"], ["data.formula='log(x0)'", "non-finite (NaN/Inf)", "first bad row"]),
    (["data=formula", "data.formula='exp(1000*x0)'", "model.layers_hidden=[1,3,1]"], ["data.formula='exp(1000*x0)'", "non-finite (NaN/Inf)", "y=[inf]"]),
]


@pytest.mark.parametrize("overrides,fragments", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_names_key_and_value(make_cfg, tmp_path, overrides, fragments, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a formula that ran code would leave "pwned" here
    with pytest.raises(ConfigError) as info:
        train(make_cfg(*FAST, *overrides))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, "one paragraph"
    # The run directory records the failure (a sweep summary reads it).
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"ConfigError: {message}"
    assert "ConfigError" in (tmp_path / "error.txt").read_text()
    assert not (tmp_path / "pwned").exists()


def test_constructor_errors_are_wrapped_with_key_paths():
    kan = {"_target_": "kan_lightning.nn.KAN", "layers_hidden": [2, 1]}
    with pytest.raises(ConfigError, match=r"^model\.grid_sze is not a parameter of kan_lightning\.nn\.KAN \(did you mean model\.grid_size\?\)"):
        instantiate_node(OmegaConf.create({**kan, "grid_sze": 3}), "model")
    with pytest.raises(ConfigError, match=r"^model\.grid_size=0: grid_size must be an integer >= 1, got 0"):
        instantiate_node(OmegaConf.create({**kan, "grid_size": 0}), "model")
    with pytest.raises(ConfigError, match=r"^model\._target_='kan_lightning\.nn\.KANN' cannot be imported"):
        instantiate_node(OmegaConf.create({**kan, "_target_": "kan_lightning.nn.KANN"}), "model")


def test_validate_config_accepts_every_shipped_option(make_cfg):
    from test_configs import group_options

    checked = 0
    for group, option in group_options():
        if group not in ("model", "data", "optimizer", "scheduler", "trainer", "callbacks", "experiment"):
            continue  # the groups the checks look into
        overrides = {"data/formula": ["data=formula", "data.formula=x0*x1"]}.get(f"{group}/{option}", [f"{group}={option}"])
        validate_config(make_cfg(*overrides))
        checked += 1
    assert checked >= 15


def test_inputs_outside_the_grid_are_warned_about_once(make_cfg, tmp_path):
    overrides = [*FAST, "logger=none", "trainer.max_epochs=1", "data.domain=[-5,5]", "test=false"]
    with pytest.warns(UserWarning, match=r"far outside the first KAN layer's grid.*x0 spans.*model\.grid_range") as caught:
        train(make_cfg(*overrides, "callbacks.grid_update.every_n_steps=0"))
    assert sum("far outside" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings(record=True) as caught:  # grid updates follow the data: no warning
        warnings.simplefilter("always")
        train(make_cfg(*overrides, output_dir=tmp_path / "grid_updates"))
    assert not any("far outside" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------
# Training faults


class PoisonBatch(L.Callback):
    """Test-only fault: the inputs of the batch at ``at_step`` become NaN."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            batch[0].fill_(float("nan"))


def _all_finite(checkpoint: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in checkpoint["state_dict"].values() if t.is_floating_point())


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(make_cfg, tmp_path):
    # 4 steps per epoch: step 9 is epoch 2, batch 1; the last epoch end before it is step 8.
    cfg = make_cfg(
        *FAST, "logger=none", "data.batch_size=32", "trainer.max_epochs=4",
        "+callbacks.poison._target_=test_reliability.PoisonBatch", "+callbacks.poison.at_step=9",
    )
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 9 \(epoch 2, batch 1\): the training loss is nan") as info:
        train(cfg)
    assert info.value.step == 9 and info.value.epoch == 2
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["step"] == 9 and record["epoch"] == 2
    assert "step 9" in record["message"] and "last good checkpoint" in record["message"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert record["last_checkpoint"] == str(last)
    own = ["test_reliability.PoisonBatch"]  # the test's callback, named in the stored config
    checkpoint = read_checkpoint(last, own)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 8)
    assert _all_finite(checkpoint)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):  # nothing of the diverged epoch saved
        assert read_checkpoint(path, own)["global_step"] <= 8, path
    assert "step 9" in (tmp_path / "error.txt").read_text()


def test_exploding_learning_rate_diverges_cleanly(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, "logger=none", "optimizer=sgd", "optimizer.lr=100", "trainer.max_epochs=6")
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+ .*optimizer\.lr \(now 100\)"):
        train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "diverged" and isinstance(record["step"], int)
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():
        checkpoint = read_checkpoint(last)
        assert checkpoint["global_step"] <= record["step"] and _all_finite(checkpoint)


def test_other_exceptions_are_recorded_as_failed(make_cfg, tmp_path, monkeypatch):
    import kan_lightning.commands.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_module, "_log_hparams", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(make_cfg(*FAST, "logger=none"))
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: disk on fire"
    assert record["metrics"]["test/rmse"] > 0  # what the run had got to
    text = (tmp_path / "error.txt").read_text()
    assert text.startswith("Traceback") and text.rstrip().endswith("RuntimeError: disk on fire")


class SendSignal(L.Callback):
    """Test-only pre-emption: this process signals itself at the start of step ``at_step``."""

    def __init__(self, at_step: int, signum: int = int(signal.SIGTERM)) -> None:
        self.at_step, self.signum = at_step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_in_process_saves_mid_epoch_and_resumes_exactly(make_cfg, tmp_path):
    # 4 steps per epoch; the interrupted epoch (0) is not the last: see GracefulShutdown on the
    # train/* epoch means of an interrupted epoch.
    run = [*FAST, "logger=none", "data.batch_size=32", "trainer.max_epochs=2", "test=false"]
    reference = train(make_cfg(*run, output_dir=tmp_path / "reference"))["metrics"]
    out = tmp_path / "run"
    signal_at_2 = ["+callbacks.sigterm._target_=test_reliability.SendSignal", "+callbacks.sigterm.at_step=2"]
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train(make_cfg(*run, *signal_at_2, output_dir=out))
    assert signal.getsignal(signal.SIGTERM) == handler, "signal handlers restored"
    record = json.loads((out / "metrics.json").read_text())
    assert info.value.record["checkpoint"] == record["checkpoint"] == str(out / "checkpoints" / "last.ckpt")
    # Stopped after step 2 (epoch 0, batch 2): a mid-epoch checkpoint of 3 steps.
    assert (record["status"], record["signal"], record["exit_code"]) == ("interrupted", "SIGTERM", 143)
    assert (record["step"], record["epoch"]) == (3, 0)
    checkpoint = read_checkpoint(record["checkpoint"], ["test_reliability.SendSignal"])
    assert checkpoint["global_step"] == 3
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 3, "num_batches": 5}]
    # the same overrides, as documented (the stored config names the test's callback: trusted
    # because this run's own config names it too; it fires at step 2 only)
    resumed = train(make_cfg(*run, *signal_at_2, "ckpt_path=last", output_dir=out))
    assert resumed["resumed_from"] == record["checkpoint"]
    assert resumed["metrics"] == reference


# ---------------------------------------------------------------------------------------------
# Exact resume: the shuffling depends on (seed, epoch) only, and resumes inside an epoch


def test_epoch_shuffle_depends_on_seed_and_epoch_only():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    for epoch in (0, 1, 2):
        a.set_epoch(epoch)
        first = list(a)
        list(a)  # drawing again changes nothing
        assert list(a) == first
    b.set_epoch(2)
    assert list(b) == first  # a fresh sampler jumping to epoch 2 sees epoch 2's order
    b.set_epoch(1)
    assert list(b) != first and sorted(b) == list(range(50))
    assert list(EpochShuffleSampler(50, seed=4)) != list(EpochShuffleSampler(50, seed=3))


def test_resumable_loader_continues_mid_epoch():
    data = TensorDataset(torch.arange(23.0).unsqueeze(1))

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=4, sampler=EpochShuffleSampler(23, seed=1))

    full = loader()
    full.sampler.set_epoch(5)
    batches = [b[0].flatten().tolist() for b in full]
    interrupted = loader()
    interrupted.sampler.set_epoch(5)
    iterator = iter(interrupted)
    seen = [next(iterator)[0].flatten().tolist() for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"epoch": 5, "batches": 2, "num_batches": 6}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(5)  # Lightning sets the epoch again before iterating
    rest = [b[0].flatten().tolist() for b in resumed]
    assert seen + rest == batches
    again = [b[0].flatten().tolist() for b in resumed]  # the skip applied once
    assert again == batches
    done = loader()  # a state saved at an epoch's end starts the next epoch from its start
    done.load_state_dict({"epoch": 5, "batches": 6, "num_batches": 6})
    assert done.sampler.epoch == 6 and len([*done]) == 6


# ---------------------------------------------------------------------------------------------
# Safe loading


class _Payload:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _bad_checkpoints(good: Path, where: Path) -> dict[str, Path]:
    where.mkdir(parents=True, exist_ok=True)
    truncated = where / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = where / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    malicious = where / "malicious.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(where / "pwned"))}, malicious)
    return {"truncated": truncated, "garbage": garbage, "malicious": malicious}


def test_corrupt_checkpoints_give_clear_errors(make_cfg, tmp_path):
    train(make_cfg(*FAST, "logger=none", "test=false", output_dir=tmp_path / "run"))
    bad = _bad_checkpoints(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "bad")
    reasons = {"truncated": "corrupt or truncated", "garbage": "corrupt or truncated", "malicious": "Unsupported global"}
    for name, path in bad.items():
        # kan-eval's evaluate()
        cfg = make_cfg(f"ckpt_path={path}", config_name="eval", output_dir=tmp_path / f"eval_{name}")
        with pytest.raises(ValueError) as info:
            evaluate(cfg)
        assert str(path) in str(info.value) and reasons[name] in str(info.value), info.value
        # resuming a training run
        out = tmp_path / f"resume_{name}"
        with pytest.raises(ConfigError) as info:
            train(make_cfg(*FAST, "logger=none", f"ckpt_path={path}", output_dir=out))
        message = str(info.value)
        assert message.startswith(f"ckpt_path='{path}' cannot be resumed from") and reasons[name] in message, message
        assert "\n" not in message
        assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
    assert not (tmp_path / "bad" / "pwned").exists(), "unpickling ran code"


def test_resume_refuses_a_checkpoint_of_another_model(make_cfg, tmp_path):
    train(make_cfg(*FAST, "logger=none", "test=false", output_dir=tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"does not fit this model \(it has \['model\.layers\.2\..*resume with the model config"):
        train(make_cfg(*FAST, "logger=none", "model.layers_hidden=[2,5,1]", f"ckpt_path={ckpt}", output_dir=tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"does not fit this model \(it lacks \['model\.net\.0\.weight'"):
        train(make_cfg(*FAST, "logger=none", "model=mlp", f"ckpt_path={ckpt}", output_dir=tmp_path / "mlp"))


# ---------------------------------------------------------------------------------------------
# The command line (subprocesses; slow)


def _cli(*args: str, cwd: Path, module: str = "kan_lightning.commands.train", timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


CLI_BAD = [
    (["model.grid_size=0"], "error: model.grid_size=0 must be an integer >= 1"),
    (["data.split=[0.5,0.3,0.1]"], "error: data.split=[0.5, 0.3, 0.1] must sum to 1"),
    (["data=formula", "data.formula='exp(x0'", "model.layers_hidden=[1,3,1]"], "error: data.formula='exp(x0' cannot be used: invalid syntax in formula 'exp(x0' at column 4"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,expected", CLI_BAD, ids=["grid_size", "split", "formula"])
def test_cli_config_error_exits_2_without_traceback(tmp_path, overrides, expected):
    result = _cli(*overrides, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_cli_unknown_key_is_refused_by_hydra(tmp_path):
    result = _cli("model.grid_sze=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "model.grid_sze" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()  # refused before the run started


@pytest.mark.slow
def test_cli_eval_corrupt_checkpoint_exits_2(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    result = _cli(f"ckpt_path={garbage}", f"hydra.run.dir={tmp_path / 'eval'}", module="kan_lightning.commands.evaluate", cwd=tmp_path)
    assert result.returncode == 2
    assert f"error: cannot read checkpoint '{garbage}' (corrupt or truncated?)" in result.stderr
    assert "Traceback" not in result.stderr


# A run long enough to be killed mid-way: 12 epochs of 10 steps, a checkpoint every epoch.
RUN = [
    "debug=fast", "logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=12",
    "trainer.limit_train_batches=10", "data.n_samples=1000", "data.batch_size=32", "model.layers_hidden=[2,5,1]",
]


class _Run:
    """``python -m kan_lightning.commands.train`` in the background, its output in files (a pipe nobody
    reads could fill up and block it)."""

    def __init__(self, run_dir: Path, *extra: str) -> None:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = run_dir.parent / f"{run_dir.name}-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "kan_lightning.commands.train", *RUN, *extra, f"hydra.run.dir={run_dir}"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=run_dir.parent, stdout=out, stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return returncode, self.log.read_text()


def _start(run_dir: Path, *extra: str) -> _Run:
    return _Run(run_dir, *extra)


def _wait_for_checkpoint(run: _Run, path: Path, min_epoch: int, timeout: float = 240) -> None:
    """Poll until ``path`` holds a checkpoint of epoch >= ``min_epoch``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, "the run ended before it could be stopped: " + run.log.read_text()[-2000:]
        if path.exists():
            try:
                if torch.load(path, map_location="cpu", weights_only=True)["epoch"] >= min_epoch:
                    return
            except Exception:  # being replaced right now
                pass
        time.sleep(0.05)
    run.proc.kill()
    raise AssertionError(f"no checkpoint of epoch >= {min_epoch} at {path}")


def _metrics(run_dir: Path) -> dict:
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed", record.get("error")
    return record["metrics"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    """The uninterrupted run that the others are compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    returncode, output = _start(run_dir).wait()
    assert returncode == 0, output[-3000:]
    return _metrics(run_dir)


@pytest.mark.slow
def test_determinism_two_processes_bitwise_equal(reference_run, tmp_path):
    returncode, output = _start(tmp_path / "run").wait()
    assert returncode == 0, output[-3000:]
    assert _metrics(tmp_path / "run") == reference_run  # every metric, bit for bit
    assert len(reference_run) >= 15


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    run = _start(run_dir)
    _wait_for_checkpoint(run, last, min_epoch=2)
    time.sleep(0.2)
    run.proc.send_signal(signal.SIGKILL)
    returncode, _ = run.wait(60)
    assert returncode == -signal.SIGKILL
    killed_at = read_checkpoint(last)["epoch"]
    assert killed_at < 11, "killed before the end"
    assert not (run_dir / "metrics.json").exists()

    returncode, output = _start(run_dir, "ckpt_path=last").wait()
    assert returncode == 0, output[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["resumed_from"] == str(last)
    assert _metrics(run_dir) == reference_run


@pytest.mark.slow
def test_sigterm_saves_checkpoint_exits_cleanly_and_resumes(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    run = _start(run_dir)
    _wait_for_checkpoint(run, last, min_epoch=2)
    time.sleep(0.1)
    run.proc.send_signal(signal.SIGTERM)
    returncode, output = run.wait(120)
    assert returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output
    assert f"resume with the same overrides plus ckpt_path=last hydra.run.dir={run_dir}" in output
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert record["checkpoint"] == str(last)
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == record["step"] < 120 and _all_finite(checkpoint)

    returncode, output = _start(run_dir, "ckpt_path=last").wait()
    assert returncode == 0, output[-3000:]
    assert "not resumable" not in output
    assert _metrics(run_dir) == reference_run


@pytest.mark.slow
def test_sigint_saves_checkpoint_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    run = _start(run_dir)
    _wait_for_checkpoint(run, last, min_epoch=1)
    run.proc.send_signal(signal.SIGINT)
    returncode, output = run.wait(120)
    assert returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback" not in output
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGINT"
    assert read_checkpoint(last)["global_step"] == record["step"]


@pytest.mark.slow
def test_sweep_with_a_failing_job_runs_the_others(tmp_path):
    from kan_lightning.analysis.sweeps import load_sweep

    # a job that fails while running (its config is valid: the sweep is launched)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    sweep_dir = tmp_path / "sweep"
    result = _cli("-m", "debug=fast", "logger=none", "trainer.enable_progress_bar=false", f"ckpt_path=null,{corrupt},null", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode != 0  # Hydra reports the failed job at the end
    for job in ("0", "2"):  # ckpt_path never names a job: the directories keep their numbers
        assert _metrics(sweep_dir / job)["test/rmse"] > 0
    failed = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed"
    assert failed["error"].startswith(f"ConfigError: ckpt_path='{corrupt}' cannot be resumed from")
    assert str(corrupt) in (sweep_dir / "1" / "error.txt").read_text()
    rows = {row["job"]: row for row in load_sweep(sweep_dir)}
    assert [rows[j]["status"] for j in ("0", "1", "2")] == ["completed", "failed", "completed"]
    assert rows["1"]["error"] == failed["error"] and rows["1"]["overrides"]["ckpt_path"] == str(corrupt)
    assert math.isfinite(rows["2"]["metrics"]["test/rmse"])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "parallel", "submitit_local"])
def test_multirun_with_a_bad_job_value_fails_before_any_job_starts(tmp_path, launcher):
    chosen = [] if launcher == "basic" else [f"launcher={launcher}"]
    sweep_dir = tmp_path / "sweep"
    result = _cli("-m", *chosen, "debug=fast", "model.grid_size=3,0,5", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    shown = " ".join(chosen + ["debug=fast", "model.grid_size=0"])
    assert result.stderr.strip().splitlines()[-1] == f"error: job #1 ({shown}): model.grid_size=0 must be an integer >= 1"
    assert "Traceback" not in result.stderr
    assert not sweep_dir.exists()
