"""A machine-wide pool of device slots, leased with lock files, so that parallel sweep jobs
never share a GPU and none idles while jobs wait.

Each slot is a file ``<pool_dir>/slot-<i>.lock``; a job holds slot ``i`` while it holds an
exclusive ``flock`` on that file. The kernel drops the lock when the holder exits for any reason
(including SIGKILL), so a crashed job cannot leak its slot. Jobs take the first free slot when
they start, whatever their job number, unlike ``hydra.job.num % n_gpus``.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def default_slots() -> int:
    """The number of visible GPUs; without GPUs, half the CPU cores (at least 1)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 2) // 2)


class DevicePool:
    """``slots`` device slots shared by every process that uses the same ``pool_dir``."""

    def __init__(self, pool_dir: str | os.PathLike, slots: int | None = None, poll_s: float = 0.2) -> None:
        slots = default_slots() if slots is None else int(slots)
        if slots < 1:
            raise ValueError(f"device pool needs at least one slot, got slots={slots}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
        self.pool_dir = Path(pool_dir)
        self.slots = slots
        self.poll_s = poll_s

    def _try_lock(self, slot: int) -> int | None:
        fd = os.open(self.pool_dir / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # For people inspecting the pool: who holds the slot.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    @contextmanager
    def lease(self, timeout_s: float | None = None) -> Iterator[int]:
        """Hold the first free slot for the duration of the ``with`` block; yields its index.

        Waits (polling) while every slot is taken; raises ``TimeoutError`` after
        ``timeout_s`` seconds if given.
        """
        self.pool_dir.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for slot in range(self.slots):
                fd = self._try_lock(slot)
                if fd is not None:
                    try:
                        yield slot
                    finally:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        os.close(fd)
                    return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no free device slot in {self.pool_dir} after {timeout_s} s ({self.slots} slots)")
            time.sleep(self.poll_s)


@contextmanager
def device_lease(enabled: bool, accelerator: str, slots: int | None, pool_dir: str, timeout_s: float | None = None) -> Iterator[dict]:
    """For one job: ``{}`` when disabled; else hold a slot for the ``with`` block and yield
    ``{"slot", "start", "trainer"}``, where ``trainer`` holds the Trainer overrides that put the
    job on its slot (nothing on CPUs). On GPUs slot ``i`` trains on GPU ``i mod n_gpus``: more
    slots than GPUs run several small jobs per GPU (``device_pool.slots=4`` on 2 GPUs: 2 each).
    On CPUs the job gets its share of the cores (:func:`cpu_share`; ``"threads"``)."""
    if not enabled:
        yield {}
        return
    pool = DevicePool(pool_dir, slots)
    with pool.lease(timeout_s) as slot:
        gpus = _gpu_count()
        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
        # no GPU visible with accelerator=gpu: no override, Lightning's own error names the cause
        lease = {"slot": slot, "start": time.time(), "trainer": {"devices": [slot % gpus]} if on_gpu and gpus else {}}
        if on_gpu and gpus:
            yield lease
            return
        with cpu_share(pool.slots) as threads:
            yield lease | {"threads": threads}


@contextmanager
def cpu_share(slots: int) -> Iterator[int]:
    """A CPU job's share of the cores while ``slots`` jobs run at once: torch's intra-op threads
    set to ``cores // slots`` (at least 1) for the block, unless ``OMP_NUM_THREADS`` chose them.
    Every job would otherwise start one thread per core: two jobs on two cores ran four threads
    (8 Feynman jobs, two at a time on 2 cores: 1.04x the wall time idle, 1.01x beside a busy core)."""
    import torch

    before = torch.get_num_threads()
    threads = before if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // slots)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
