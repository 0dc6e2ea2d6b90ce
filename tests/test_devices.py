"""The device pool: concurrent jobs never share a slot, every slot gets used, and a slot held
by a killed process comes back."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kan_lightning import devices
from kan_lightning.devices import DevicePool


def _job(pool_dir: str, slots: int, job: int, hold_s: float, log_dir: str) -> None:
    with DevicePool(pool_dir, slots, poll_s=0.01).lease() as slot:
        start = time.monotonic()
        time.sleep(hold_s)
        end = time.monotonic()
    Path(log_dir, f"{job}.json").write_text(json.dumps({"slot": slot, "start": start, "end": end}))


def test_four_jobs_over_two_slots_never_overlap(tmp_path):
    pool, logs = tmp_path / "pool", tmp_path / "logs"
    logs.mkdir()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_job, args=(str(pool), 2, j, 0.5, str(logs))) for j in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    leases = [json.loads((logs / f"{j}.json").read_text()) for j in range(4)]
    assert {lease["slot"] for lease in leases} == {0, 1}, "both slots used"
    for slot in (0, 1):
        intervals = sorted((l["start"], l["end"]) for l in leases if l["slot"] == slot)
        for (_, end), (start, _) in zip(intervals, intervals[1:]):
            assert start >= end, f"slot {slot} leased twice at once: {intervals}"
    # Never more than two leases at any time.
    events = sorted([(l["start"], 1) for l in leases] + [(l["end"], -1) for l in leases])
    live = max_live = 0
    for _, delta in events:
        live += delta
        max_live = max(max_live, live)
    assert max_live == 2


def test_lease_of_killed_process_is_released(tmp_path):
    pool = tmp_path / "pool"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from kan_lightning.devices import DevicePool; import time\n"
         f"with DevicePool({str(pool)!r}, 1).lease() as s:\n    print(s, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "0"
    with pytest.raises(TimeoutError, match="no free device slot"):
        with DevicePool(pool, 1).lease(timeout_s=0.3):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with DevicePool(pool, 1).lease(timeout_s=5) as slot:
        assert slot == 0


def test_bad_pool_size():
    with pytest.raises(ValueError, match="slots=0"):
        DevicePool("/tmp/unused", 0)


@pytest.mark.parametrize("gpus, expected", [(2, [0, 1, 0, 1]), (0, [None] * 4)])
def test_slots_beyond_the_gpus_share_them_round_robin(tmp_path, monkeypatch, gpus, expected):
    """Four slots on two GPUs put two jobs on each; with no GPU visible no device is forced, so
    Lightning's own error names the missing accelerator."""
    monkeypatch.setattr(devices, "_gpu_count", lambda: gpus)
    got = []
    with contextlib.ExitStack() as held:  # all four slots held at once: slots 0-3
        for _ in range(4):
            lease = held.enter_context(devices.device_lease(True, "gpu", 4, str(tmp_path)))
            got.append(lease["trainer"]["devices"][0] if lease["trainer"] else None)
    assert got == expected


def test_cpu_jobs_get_their_share_of_the_cores(tmp_path, monkeypatch):
    """Parallel CPU jobs run cores // slots threads each, for the lease only; OMP_NUM_THREADS,
    when set, decides instead."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(devices, "_gpu_count", lambda: 0)
    with devices.device_lease(True, "cpu", 4, str(tmp_path)) as lease:
        assert lease["threads"] == torch.get_num_threads() == 2 and lease["trainer"] == {}
    assert torch.get_num_threads() == before
    with devices.device_lease(True, "auto", 16, str(tmp_path)) as lease:
        assert lease["threads"] == torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with devices.device_lease(True, "cpu", 4, str(tmp_path)) as lease:
        assert lease["threads"] == torch.get_num_threads() == before
