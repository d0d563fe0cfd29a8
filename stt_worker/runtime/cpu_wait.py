"""How long this process's threads wait for a CPU, from the kernel's scheduler statistics,
and the task that paces partials by it (`core/partial_pace.py` says why).

Linux keeps, per thread, the time it ran and the time it sat runnable waiting for a CPU
(`/proc/self/task/<tid>/schedstat`: run ns, wait ns, timeslices). Summed over the threads
(the engine's decode threads, the event loop, the DSP pool), the waited share of an interval
says whether the process gets the CPU it asks for, whatever else runs on the cores: other
workers, nats-server, a neighbour pod, or a CPU limit (CFS throttling delays runnable threads
too). Where the files are missing (not Linux), nothing is paced.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from stt_worker.core.partial_pace import PartialPace

logger = logging.getLogger(__name__)

TASKS = Path("/proc/self/task")
PACE_INTERVAL_S = 1.0


class CpuWait:
    """The share of runnable time this process's threads waited, since the last sample."""

    def __init__(self, tasks: Path = TASKS) -> None:
        self._tasks = tasks
        self._seen: dict[str, tuple[int, int]] = {}

    def sample(self) -> float | None:
        """Waited / (ran + waited) over the threads since the previous call (the first
        call: since each thread started); 0 when none was runnable, None when the
        statistics cannot be read."""
        try:
            tids = os.listdir(self._tasks)
        except OSError:
            return None
        ran = waited = 0
        seen: dict[str, tuple[int, int]] = {}
        for tid in tids:
            try:
                fields = (self._tasks / tid / "schedstat").read_text().split()
                now = int(fields[0]), int(fields[1])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile, or the kernel keeps no statistics
            before = self._seen.get(tid, (0, 0))
            ran += now[0] - before[0]
            waited += now[1] - before[1]
            seen[tid] = now
        self._seen = seen  # threads gone are forgotten; a reused tid starts over at 0
        if not seen:
            return None
        if ran + waited <= 0:
            return 0.0
        return max(0.0, min(1.0, waited / (ran + waited)))


async def keep_paced(pace: PartialPace, wait: CpuWait | None = None) -> None:
    """Every `PACE_INTERVAL_S`, tell `pace` the share of the interval the threads waited
    (`pace` only records it when pacing is off)."""
    wait = wait or CpuWait()
    # A few dozen procfs reads, about 1 ms: file I/O, so off the loop.
    if await asyncio.to_thread(wait.sample) is None:
        logger.info("no per-thread CPU statistics here: partials are not paced by CPU wait")
        return
    while True:
        await asyncio.sleep(PACE_INTERVAL_S)
        share = await asyncio.to_thread(wait.sample)
        if share is not None:
            pace.observe(share)
