"""Run directories: one run per directory, one process at a time, resumes that fit the run.

Fast tests call ``train(cfg)`` in this process; the ``slow`` ones drive ``python -m
kan_lightning.commands.train`` in subprocesses (each pays a few seconds of imports).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kan_lightning.lit.checkpoint import read_checkpoint
from kan_lightning.run_dir import LOCK_FILE, RunDirRefused, check_same_run, claim
from kan_lightning.commands.train import train

REPO = Path(__file__).resolve().parents[1]
FAST = ["debug=fast", "logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=3", "data.batch_size=32"]


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _model_checkpoint_state(path: Path) -> dict:
    # the runs below add a test callback to the config: trust its target, as resuming them does
    checkpoint = read_checkpoint(path, trusted_targets=["test_reliability.SendSignal"])
    (state,) = [s for key, s in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint")]
    return state


# ---------------------------------------------------------------------------------------------
# last.ckpt names checkpoint files that exist


def test_last_checkpoint_names_the_best_file_that_exists(make_cfg, tmp_path):
    # val/loss falls every epoch here, so ModelCheckpoint saves a new best and deletes the old
    # one at each epoch's end: last.ckpt must be written after that.
    record = train(make_cfg(*FAST, output_dir=tmp_path))
    state = _model_checkpoint_state(tmp_path / "checkpoints" / "last.ckpt")
    assert state["best_model_path"] == record["best"]["path"] == str(tmp_path / "checkpoints" / "epoch002.ckpt")
    assert all(Path(path).is_file() for path in state["best_k_models"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch002.ckpt", "last.ckpt"]


def test_last_checkpoint_goes_after_model_checkpoint_in_any_order(make_cfg, tmp_path):
    # the same with last_checkpoint listed before model_checkpoint
    ckpt_dir = tmp_path / "checkpoints"
    model_checkpoint = (
        "+callbacks.model_checkpoint={_target_: lightning.pytorch.callbacks.ModelCheckpoint, "
        f"dirpath: '{ckpt_dir}', monitor: val/loss, mode: min, save_top_k: 1}}"
    )
    record = train(make_cfg(*FAST, "~callbacks.model_checkpoint", model_checkpoint, output_dir=tmp_path))
    state = _model_checkpoint_state(ckpt_dir / "last.ckpt")
    assert state["best_model_path"] == record["best"]["path"] and Path(record["best"]["path"]).is_file()
    assert "epoch=2" in Path(state["best_model_path"]).name


# ---------------------------------------------------------------------------------------------
# The life cycle, in this process


def test_completed_run_is_refused_or_reported_never_retrained(make_cfg, tmp_path):
    first = train(make_cfg(*FAST, output_dir=tmp_path))
    before = {p.name: p.read_bytes() for p in [tmp_path / "metrics.json", *(tmp_path / "checkpoints").iterdir()]}
    with pytest.raises(RunDirRefused, match=rf"^{tmp_path} holds a completed run: .*overwrite=true"):
        train(make_cfg(*FAST, output_dir=tmp_path))
    again = train(make_cfg(*FAST, "ckpt_path=last", output_dir=tmp_path))
    assert again == json.loads(json.dumps(first, default=str))
    with pytest.raises(RunDirRefused, match=r"model\.grid_size=3 \(the run has 5\)"):
        train(make_cfg(*FAST, "ckpt_path=last", "model.grid_size=3", output_dir=tmp_path))
    after = {p.name: p.read_bytes() for p in [tmp_path / "metrics.json", *(tmp_path / "checkpoints").iterdir()]}
    assert after == before


def test_a_directory_in_use_is_refused_naming_the_holder(make_cfg, tmp_path):
    cfg = make_cfg(*FAST, output_dir=tmp_path)
    with claim(cfg, tmp_path):  # this process holds the directory (a second open file competes)
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirRefused, match=rf"^{tmp_path} is in use by another run \(pid {os.getpid()}\)"):
            train(make_cfg(*FAST, output_dir=tmp_path))
    assert not (tmp_path / "metrics.json").exists()
    assert train(make_cfg(*FAST, output_dir=tmp_path))["status"] == "completed"  # released


def test_overwrite_replaces_the_old_run(make_cfg, tmp_path):
    train(make_cfg(*FAST, "logger=tensorboard", "model.layers_hidden=[2,3,1]", output_dir=tmp_path))
    old_events = set((tmp_path / "tensorboard").glob("events.*"))
    (tmp_path / "checkpoints" / "epoch000.ckpt").write_bytes(b"a stale file of the old run")
    with pytest.raises(RunDirRefused, match="would delete the checkpoint"):
        train(make_cfg(*FAST, "overwrite=true", "ckpt_path=last", output_dir=tmp_path))
    record = train(make_cfg(*FAST, "logger=tensorboard", "overwrite=true", "trainer.max_epochs=2", output_dir=tmp_path))
    assert record["config"]["model"]["layers_hidden"] == [2, 20, 20, 1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch001.ckpt", "last.ckpt"]
    new_events = set((tmp_path / "tensorboard").glob("events.*"))
    assert len(new_events) == len(old_events) and not new_events & old_events, "one TensorBoard run"
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 1


def test_unfinished_run_is_refused_without_resume(make_cfg, tmp_path):
    train(make_cfg(*FAST, output_dir=tmp_path))
    (tmp_path / "metrics.json").unlink()  # as if killed (SIGKILL) before writing its record
    with pytest.raises(RunDirRefused, match=rf"^{tmp_path} holds checkpoints of an unfinished run: resume it with ckpt_path=last"):
        train(make_cfg(*FAST, output_dir=tmp_path))


def test_leftovers_of_a_run_that_saved_nothing_are_replaced(make_cfg, tmp_path):
    from kan_lightning.config_checks import ConfigError

    with pytest.raises(ConfigError):
        train(make_cfg(*FAST, "model.grid_size=0", output_dir=tmp_path))
    assert (tmp_path / "error.txt").exists()
    assert train(make_cfg(*FAST, output_dir=tmp_path))["status"] == "completed"
    assert not (tmp_path / "error.txt").exists()


def test_a_directory_without_a_run_loses_nothing(make_cfg, tmp_path):
    mine = tmp_path / "figures" / "mine.png"
    mine.parent.mkdir()
    mine.write_bytes(b"not a run's")
    assert train(make_cfg(*FAST, "overwrite=true", output_dir=tmp_path))["status"] == "completed"
    assert mine.read_bytes() == b"not a run's"


def test_config_differences_name_each_key_and_both_values(make_cfg, tmp_path):
    stored = train(make_cfg(*FAST, output_dir=tmp_path))["config"]
    check_same_run(stored, make_cfg(*FAST, "data.batch_size=64", "data.num_workers=1"), "x")  # how, not what
    with pytest.raises(RunDirRefused) as info:
        check_same_run(stored, make_cfg(*FAST, "model.layers_hidden=[2,4,1]", "data.noise_level=0.1", "seed=7"), "the run")
    message = str(info.value)
    assert message.startswith(
        "the run of another config: model.layers_hidden=[2, 4, 1] (the run has [2, 20, 20, 1]), "
        "data.noise_level=0.1 (the run has 0.0), data.seed=7 (the run has 42); "
    ), message
    assert "\n" not in message
    check_same_run(None, make_cfg(*FAST), "x")  # nothing stored (an older checkpoint): no check


def test_ddp_ranks_other_than_zero_do_not_take_the_lock(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*FAST, output_dir=tmp_path)
    with claim(cfg, tmp_path):  # rank 0 holds the directory for its run
        monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning started by re-running the command
        with claim(cfg, tmp_path) as completed:
            assert completed is None
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(RunDirRefused, match="in use"):
            with claim(cfg, tmp_path):
                pass


# ---------------------------------------------------------------------------------------------
# The command line (subprocesses; slow)


def _command(run_dir: Path, *extra: str, multirun: bool = False) -> list[str]:
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    return [sys.executable, "-m", "kan_lightning.commands.train", *(["-m"] if multirun else []), *FAST, *extra, where]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def _cli(run_dir: Path, *extra: str, multirun: bool = False) -> subprocess.CompletedProcess:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = _command(run_dir, *extra, multirun=multirun)
    return subprocess.run(cmd, cwd=run_dir.parent, env=_env(), capture_output=True, text=True, timeout=300)


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.parent.name != ".hydra" and p.suffix != ".log" and p.name != LOCK_FILE}


# SIGTERM from inside at a given optimizer step (4 per epoch: trainer=debug): test_reliability.SendSignal
SIGTERM_AT = ["+callbacks.sigterm._target_=test_reliability.SendSignal", "+callbacks.sigterm.at_step"]


@pytest.mark.slow
def test_cli_rerun_of_a_completed_run_keeps_it(tmp_path):
    run_dir = tmp_path / "run"
    assert _cli(run_dir, "logger=tensorboard").returncode == 0
    before = _files(run_dir)
    result = _cli(run_dir, "logger=tensorboard", "ckpt_path=last")  # what a requeued job runs
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the run has already completed" in result.stdout + result.stderr
    assert _files(run_dir) == before, "nothing retrained, rewritten or logged"
    result = _cli(run_dir, "logger=tensorboard")
    assert result.returncode == 2 and f"error: {run_dir} holds a completed run" in result.stderr
    assert "Traceback" not in result.stderr and _files(run_dir) == before


@pytest.mark.slow
def test_cli_two_processes_in_one_directory(tmp_path):
    run_dir = tmp_path / "run"
    longer = ["trainer.max_epochs=60"]  # long enough to outlast the other process's start
    procs = [subprocess.Popen(_command(run_dir, *longer), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [o[1][-1500:] for o in outputs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f"error: {run_dir} is in use by another run (pid {procs[winner].pid})" in outputs[loser][1]
    record = _record(run_dir)
    assert record["status"] == "completed" and record["config"]["trainer"]["max_epochs"] == 60


@pytest.mark.slow
def test_cli_resume_after_interruption_whose_best_checkpoint_is_gone(tmp_path):
    run_dir = tmp_path / "run"
    # interrupted during the last batch of the last epoch: last.ckpt is saved at that epoch's end,
    # naming the best file of the epoch before
    result = _cli(run_dir, f"{SIGTERM_AT[0]}", f"{SIGTERM_AT[1]}=11")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    interrupted = _record(run_dir)
    assert interrupted["status"] == "interrupted"
    best = Path(_model_checkpoint_state(run_dir / "checkpoints" / "last.ckpt")["best_model_path"])
    best.unlink()  # rotated away or deleted by hand

    refused = _cli(run_dir, *SIGTERM_AT[:1], f"{SIGTERM_AT[1]}=11", "ckpt_path=last", "model.grid_size=3")
    assert refused.returncode == 2
    assert f"error: ckpt_path='{run_dir / 'checkpoints' / 'last.ckpt'}' is a checkpoint of another config: model.grid_size=3 (the run has 5)" in refused.stderr
    assert _record(run_dir) == interrupted, "the refused command changed nothing"

    result = _cli(run_dir, *SIGTERM_AT[:1], f"{SIGTERM_AT[1]}=11", "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-3000:]
    record = _record(run_dir)
    assert record["status"] == "completed" and record["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert record["best"] is None or Path(record["best"]["path"]).is_file()
    assert record["metrics"]["test/rmse"] > 0


@pytest.mark.slow
def test_cli_killed_sweep_rerun_resumes_only_the_unfinished_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # job 0 completes; job 1 is interrupted in step 7 (the end of epoch 1), which stops the sweep
    sweep = [SIGTERM_AT[0], f"{SIGTERM_AT[1]}=1000,7"]
    result = _cli(sweep_dir, *sweep, multirun=True)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    job0, job1 = sweep_dir / "at_step=1000", sweep_dir / "at_step=7"  # named by the swept values
    assert (_record(job0)["status"], _record(job1)["status"]) == ("completed", "interrupted")
    files0 = _files(job0)

    result = _cli(sweep_dir, *sweep, "ckpt_path=last", multirun=True)  # resumed at step 8: no signal
    assert result.returncode == 0, result.stderr[-3000:]
    assert _files(job0) == files0, "the completed job stayed as it was"
    resumed = _record(job1)
    assert resumed["status"] == "completed" and resumed["resumed_from"] == str(job1 / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_cli_overwrite_true(tmp_path):
    run_dir = tmp_path / "run"
    assert _cli(run_dir, "logger=tensorboard", "model.layers_hidden=[2,3,1]").returncode == 0
    result = _cli(run_dir, "logger=tensorboard", "overwrite=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _record(run_dir)["config"]["model"]["layers_hidden"] == [2, 20, 20, 1]
    # TensorBoard's files are named events.out.tfevents.<time>.<host>.<pid>.<n>: one process's
    assert len({p.name.split(".")[-2] for p in (run_dir / "tensorboard").glob("events.*")}) == 1
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["model.layers.0.base_weight"].shape == (20, 2)


@pytest.mark.slow
def test_cli_ddp_ranks_follow_rank_zero(tmp_path):
    # Lightning starts rank 1 by running the command again in the same directory, while rank 0
    # holds it: rank 1 must neither be refused nor delete anything.
    run_dir = tmp_path / "run"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2"]
    result = _cli(run_dir, *ddp)
    assert result.returncode == 0, result.stderr[-3000:]
    result = _cli(run_dir, *ddp, "overwrite=true")
    assert result.returncode == 0, result.stderr[-3000:]
    record = _record(run_dir)
    assert record["status"] == "completed" and record["config"]["trainer"]["devices"] == 2
    assert (run_dir / "train_ddp_process_1.log").exists()
    before = _files(run_dir)
    result = _cli(run_dir, *ddp, "ckpt_path=last")
    assert result.returncode == 0 and _files(run_dir) == before
