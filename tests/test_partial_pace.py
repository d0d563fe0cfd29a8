"""Partials pace themselves by how long the process waits for a CPU: the duty cycle
(`core/partial_pace`), the wait read from the kernel (`runtime/cpu_wait`), and the
scheduler resting plain partials only."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from stt_worker.config import Settings
from stt_worker.core.partial_pace import DECREASE, INCREASE, MIN_DUTY, PartialPace
from stt_worker.runtime import cpu_wait
from stt_worker.runtime.cpu_wait import CpuWait
from stt_worker.runtime.scheduler import InferenceScheduler
from tests.test_scheduler import GatedEngine, Results, job


def test_the_duty_shrinks_while_the_wait_is_over_the_bound_and_grows_back_under_it():
    pace = PartialPace(0.5)
    pace.observe(0.8)
    assert pace.duty == pytest.approx(DECREASE) and pace.wait_share == 0.8
    for _ in range(20):
        pace.observe(0.8)
    assert pace.duty == MIN_DUTY  # never stops partials altogether
    pace.observe(0.5)  # at the bound is not over it
    assert pace.duty == pytest.approx(MIN_DUTY + INCREASE)
    for _ in range(20):
        pace.observe(0.1)
    assert pace.duty == 1.0


def test_a_partial_rests_the_share_of_its_decode_the_duty_leaves():
    pace = PartialPace(0.5, duty=0.25)
    assert pace.ran(10.0, 10.2) == pytest.approx(0.6)  # busy 0.2 s of every 0.8 s
    assert pace.resting(10.79) and not pace.resting(10.81)
    pace.ran(10.0, 10.1)  # a shorter one ending meanwhile does not cut the rest short
    assert pace.resting(10.79)
    assert PartialPace(0.5).ran(0.0, 1.0) == 0.0  # at duty 1: no rest


@pytest.mark.parametrize("bound", [0.0, 1.0])
def test_off_at_0_or_1(bound: float):
    pace = PartialPace(bound)
    pace.observe(0.99)
    assert not pace.enabled and pace.duty == 1.0 and pace.ran(0.0, 1.0) == 0.0
    assert pace.wait_share == 0.99  # still reported


def test_the_shipped_default_paces(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("STT_PARTIAL_CPU_WAIT", raising=False)
    assert PartialPace(Settings().partial_cpu_wait).enabled


def _task(root: Path, tid: str, ran_ns: int, waited_ns: int) -> None:
    (root / tid).mkdir(exist_ok=True)
    (root / tid / "schedstat").write_text(f"{ran_ns} {waited_ns} 7\n")


def test_the_wait_share_is_summed_over_threads_between_samples(tmp_path: Path):
    _task(tmp_path, "10", 1_000, 0)
    _task(tmp_path, "11", 2_000, 1_000)
    wait = CpuWait(tmp_path)
    assert wait.sample() == pytest.approx(1_000 / 4_000)  # since each thread started
    _task(tmp_path, "10", 3_000, 2_000)  # ran 2,000 ns more and waited 2,000
    (tmp_path / "11" / "schedstat").unlink()  # the thread ended
    (tmp_path / "11").rmdir()
    _task(tmp_path, "12", 1_000, 3_000)  # a new thread
    assert wait.sample() == pytest.approx(5_000 / 8_000)
    assert wait.sample() == 0.0  # nothing ran since


def test_no_statistics_no_share(tmp_path: Path):
    assert CpuWait(tmp_path / "missing").sample() is None
    (tmp_path / "10").mkdir()  # a kernel without per-thread statistics
    assert CpuWait(tmp_path).sample() is None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux only")
def test_more_busy_threads_than_cores_show_as_waiting():
    """Three busy threads a core (hashlib lets go of the GIL while it hashes, in the calling
    thread): each runs about a third of the time."""
    cores = len(os.sched_getaffinity(0))
    data = bytes(8 << 20)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            hashlib.sha256(data).digest()

    wait = CpuWait()
    idle = wait.sample()
    assert idle is not None and 0.0 <= idle <= 1.0
    threads = [threading.Thread(target=spin) for _ in range(3 * cores)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    share = wait.sample()
    assert share is not None and share > 0.3  # about 2/3 on an otherwise idle machine


async def _one_partial_decoded(
    pace: PartialPace | None,
) -> tuple[GatedEngine, Results, InferenceScheduler, asyncio.Task[None]]:
    """A scheduler with two slots that has just decoded one partial of about 50 ms."""
    engine, results = GatedEngine(parallelism=2), Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=2, pace=pace)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=False))
    await engine.started_at_least(1)
    await asyncio.sleep(0.05)
    await results.release_and_wait(engine, 1)
    return engine, results, scheduler, runner


async def test_plain_partials_rest_while_finals_and_speculations_do_not():
    pace = PartialPace(0.5, duty=0.1)  # rests 9 times a partial's decode: about 450 ms
    engine, results, scheduler, runner = await _one_partial_decoded(pace)
    rest_until = pace.rest_until
    assert rest_until - time.monotonic() > 0.3
    scheduler.submit("b", job(1, 2.0, final=False))
    scheduler.submit("c", job(1, 3.0, final=True))
    await engine.started_at_least(2)
    await asyncio.sleep(0.1)
    assert engine.started == [1.0, 3.0]  # the final starts; b's plain partial rests
    speculation = dataclasses.replace(job(1, 4.0, final=False), speculative=True)
    scheduler.submit("d", speculation)
    await engine.started_at_least(3)
    # A speculation is a final done early: it never rests.
    assert engine.started[2] == 4.0 and time.monotonic() < rest_until
    await results.release_and_wait(engine, 3)
    await engine.started_at_least(4)  # b's partial, once the rest is over
    assert engine.started[3] == 2.0 and time.monotonic() >= rest_until
    await results.release_and_wait(engine, 4)
    runner.cancel()


async def test_unpaced_partials_follow_each_other_at_once():
    engine, results, scheduler, runner = await _one_partial_decoded(None)
    scheduler.submit("b", job(1, 2.0, final=False))
    await engine.started_at_least(2)
    assert not scheduler.pace.enabled and scheduler.pace.rest_until <= time.monotonic()
    await results.release_and_wait(engine, 2)
    runner.cancel()


class _Waits:
    """A `CpuWait` that gives the shares it was handed, then repeats the last."""

    def __init__(self, *shares: float | None) -> None:
        self.shares = list(shares)

    def sample(self) -> float | None:
        return self.shares.pop(0) if len(self.shares) > 1 else self.shares[0]


@pytest.mark.parametrize("bound", [0.0, 0.5])
async def test_the_wait_is_sampled_every_interval_paced_or_not(
    bound: float, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(cpu_wait, "PACE_INTERVAL_S", 0.01)
    pace = PartialPace(bound)
    task = asyncio.create_task(cpu_wait.keep_paced(pace, _Waits(0.0, 0.9)))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    task.cancel()
    assert pace.wait_share == 0.9  # reported on /metrics either way
    assert pace.duty == (MIN_DUTY if pace.enabled else 1.0)


async def test_without_statistics_the_wait_is_never_sampled_again():
    pace = PartialPace(0.5)
    await asyncio.wait_for(cpu_wait.keep_paced(pace, _Waits(None)), 1.0)  # type: ignore[arg-type]
    assert pace.wait_share is None and pace.duty == 1.0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux only")
async def test_a_scheduler_measures_the_wait_with_pacing_off(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cpu_wait, "PACE_INTERVAL_S", 0.01)
    scheduler = InferenceScheduler(GatedEngine(parallelism=1), Results().on_done)
    runner = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.3)
    runner.cancel()
    assert not scheduler.pace.enabled and scheduler.pace.wait_share is not None
