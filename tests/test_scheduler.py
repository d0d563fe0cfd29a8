"""The inference scheduler's ordering rules, with an engine whose decodes the test releases."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from stt_worker.core.errors import OverloadedError
from stt_worker.core.jobs import Job, JobKind
from stt_worker.engines.base import DecodeOptions, Engine, EngineInfo, Transcript
from stt_worker.runtime.scheduler import InferenceScheduler


class GatedEngine(Engine):
    """Each decode waits until the test releases it; records what started, in order."""

    def __init__(self, parallelism: int) -> None:
        self.info = EngineInfo("gated", "none", "cpu")
        self.parallelism = parallelism
        self.started: list[float] = []
        self.release = asyncio.Semaphore(0)
        self.running = 0
        self.most_running = 0
        self.is_healthy = True
        self.changed = asyncio.Condition()

    async def started_at_least(self, count: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.started) >= count)

    @property
    def healthy(self) -> bool:
        return self.is_healthy

    async def transcribe(self, audio, options: DecodeOptions) -> Transcript:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        async with self.changed:
            self.started.append(len(audio) / 16_000)
            self.changed.notify_all()
        await self.release.acquire()
        self.running -= 1
        return Transcript(text=f"{len(audio) / 16_000:g}")


def job(utterance_id: int, seconds: float, *, final: bool) -> Job:
    pcm = (np.zeros(int(seconds * 16_000), np.int16),)
    kind = JobKind.FINAL if final else JobKind.PARTIAL
    return Job(utterance_id, kind, pcm, 0.0, seconds, True)


class Results:
    """What the scheduler delivered, with a way to wait for the n-th result."""

    def __init__(self) -> None:
        self.done: list[tuple] = []
        self.changed = asyncio.Condition()

    async def on_done(self, key, job_: Job, outcome, wait_s: float) -> None:
        async with self.changed:
            self.done.append((key, job_.audio_end_s, job_.is_final))
            self.changed.notify_all()

    async def release_and_wait(self, engine: GatedEngine, count: int) -> None:
        for _ in range(count):
            engine.release.release()
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.done) >= count)


async def test_finals_first_one_job_per_session_results_in_order():
    engine = GatedEngine(parallelism=2)
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=2)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=False))
    scheduler.submit("a", job(1, 2.0, final=False))  # replaces the stale one
    scheduler.submit("a", job(1, 3.0, final=True))  # drops a's partial
    scheduler.submit("a", job(2, 4.0, final=True))
    scheduler.submit("b", job(1, 5.0, final=False))
    await engine.started_at_least(2)
    # a's second final may not run beside its first: b's partial takes the other slot.
    assert sorted(engine.started) == [3.0, 5.0]
    await results.release_and_wait(engine, 3)
    await scheduler.wait_idle()
    runner.cancel()
    done = results.done
    assert [d for d in done if d[0] == "a"] == [("a", 3.0, True), ("a", 4.0, True)]
    assert ("b", 5.0, False) in done and len(done) == 3
    assert engine.most_running <= 2


async def test_full_finals_queue_is_refused_and_unhealthy_engine_sheds_partials():
    engine = GatedEngine(parallelism=1)
    engine.is_healthy = False
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1, max_pending_finals=1)
    scheduler.submit("a", job(1, 1.0, final=True))
    try:
        scheduler.submit("b", job(1, 1.0, final=True))
    except OverloadedError as exc:
        assert exc.code == "overloaded"
    else:
        raise AssertionError("a second final should not fit")
    scheduler.submit("c", job(1, 1.0, final=False))
    runner = asyncio.create_task(scheduler.run())
    await results.release_and_wait(engine, 1)
    await scheduler.wait_idle()
    runner.cancel()
    assert results.done == [("a", 1.0, True)]  # c's partial was shed while the engine was unhealthy


async def test_dual_model_partials_go_to_the_partial_engine():
    finals_engine, partials_engine = GatedEngine(parallelism=1), GatedEngine(parallelism=1)
    results = Results()
    scheduler = InferenceScheduler(
        finals_engine, results.on_done, concurrency=1, partial_engine=partials_engine
    )
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=False))
    scheduler.submit("b", job(1, 2.0, final=True))
    finals_engine.release.release()
    partials_engine.release.release()
    async with asyncio.timeout(5), results.changed:
        await results.changed.wait_for(lambda: len(results.done) == 2)
    runner.cancel()
    assert finals_engine.started == [2.0] and partials_engine.started == [1.0]


async def test_barge_in_probes_jump_ahead_of_finals_and_partials():
    engine = GatedEngine(parallelism=1)
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1)
    # Queued before the scheduler runs, so only the order rule decides what starts first.
    scheduler.submit("a", job(1, 4.0, final=True))
    scheduler.submit("b", job(1, 3.0, final=False))
    probe = dataclasses.replace(job(1, 0.4, final=False), kind=JobKind.BARGE_IN_PROBE)
    scheduler.submit("c", probe)
    scheduler.submit("c", dataclasses.replace(probe, audio_end_s=0.5))
    assert scheduler.pending == 3  # the newer probe of c replaced the older
    runner = asyncio.create_task(scheduler.run())
    await results.release_and_wait(engine, 3)
    runner.cancel()
    assert [key for key, *_ in results.done] == ["c", "a", "b"]
    assert results.done[0][1] == 0.5


async def test_a_session_over_its_finals_bound_loses_its_own_and_others_are_served_in_turn():
    engine = GatedEngine(parallelism=1)
    results = Results()
    scheduler = InferenceScheduler(
        engine, results.on_done, concurrency=1, max_pending_finals_per_session=3
    )
    for second in range(1, 4):
        scheduler.submit("flood", job(second, float(second), final=True))
    refused = []
    for second in range(4, 7):
        try:
            scheduler.submit("flood", job(second, float(second), final=True))
        except OverloadedError as exc:
            refused.append(exc)
    assert len(refused) == 3 and "STT_MAX_PENDING_FINALS_PER_SESSION" in refused[0].message
    # Queued after the whole flood, yet honest sessions' finals still fit and are not last.
    scheduler.submit("honest", job(1, 10.0, final=True))
    scheduler.submit("other", job(1, 20.0, final=True))
    assert scheduler.pending_finals == 5
    runner = asyncio.create_task(scheduler.run())
    await results.release_and_wait(engine, 5)
    runner.cancel()
    # Round-robin by session: one turn each per round, in the order they first queued.
    assert [(key, end) for key, end, _ in results.done] == [
        ("flood", 1.0),
        ("honest", 10.0),
        ("other", 20.0),
        ("flood", 2.0),
        ("flood", 3.0),
    ]


async def test_partials_waiting_behind_a_busy_engine_raise_the_partial_wait():
    engine = GatedEngine(parallelism=1)
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=True))
    await engine.started_at_least(1)
    assert scheduler.partial_wait_s() == 0.0  # a final waited for nothing
    scheduler.submit("b", job(1, 1.0, final=False))
    await asyncio.sleep(0.2)  # b's partial waits behind a's final at least this long
    await results.release_and_wait(engine, 1)
    await engine.started_at_least(2)
    assert scheduler.partial_wait_s() >= 0.3 * 0.2  # one partial's wait, weighted
    await results.release_and_wait(engine, 2)
    runner.cancel()


async def served_order(waiting: list[Job]) -> list[float]:
    """The order one slot serves `waiting` (sessions b, c, ...) in, all queued while a partial
    of session a holds it; each job is named by its audio length."""
    engine = GatedEngine(parallelism=1)
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=False))
    await engine.started_at_least(1)
    for key, queued in zip("bcdefgh", waiting, strict=False):
        scheduler.submit(key, queued)
    await results.release_and_wait(engine, 1 + len(waiting))
    runner.cancel()
    return engine.started


async def test_an_utterances_first_words_go_before_other_sessions_next_partials():
    shown = job(1, 2.0, final=False)  # b's words are on show already
    first_words = dataclasses.replace(job(1, 3.0, final=False), first_words=True)
    order = await served_order([shown, first_words, job(1, 4.0, final=False)])
    assert order == [1.0, 3.0, 2.0, 4.0]


async def test_a_speculation_goes_before_first_words_and_partials_in_line():
    # Its text may be the final, and only if it is decoded before its pause ends the turn.
    first_words = dataclasses.replace(job(1, 3.0, final=False), first_words=True)
    speculation = dataclasses.replace(job(1, 4.0, final=False), speculative=True)
    order = await served_order([job(1, 2.0, final=False), first_words, speculation])
    assert order == [1.0, 4.0, 3.0, 2.0]


async def test_partials_leave_one_slot_free_for_a_final():
    engine = GatedEngine(parallelism=2)
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=2)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=False))
    scheduler.submit("b", job(1, 2.0, final=False))
    await engine.started_at_least(1)
    await asyncio.sleep(0.05)
    assert engine.started == [1.0]  # b's partial waits: the second slot stays free
    scheduler.submit("c", job(1, 3.0, final=True))
    await engine.started_at_least(2)
    assert engine.started == [1.0, 3.0]  # the final started at once
    await results.release_and_wait(engine, 3)
    assert engine.started == [1.0, 3.0, 2.0] and engine.most_running == 2
    runner.cancel()


async def test_with_a_background_slot_partials_take_only_it_and_finals_every_other():
    engine = GatedEngine(parallelism=2)
    engine.background_slots = 1
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=2)
    runner = asyncio.create_task(scheduler.run())
    for session, seconds in (("a", 1.0), ("b", 2.0)):
        scheduler.submit(session, job(1, seconds, final=False))
    await engine.started_at_least(1)
    await asyncio.sleep(0.05)
    assert engine.started == [1.0]  # b's partial waits for the one background slot
    for session, seconds in (("c", 3.0), ("d", 4.0), ("e", 5.0)):
        scheduler.submit(session, job(1, seconds, final=True))
    await engine.started_at_least(3)
    await asyncio.sleep(0.05)
    # Both foreground slots took finals beside the partial (in either order: they start at
    # once); e's final waits for one of them.
    assert engine.started[0] == 1.0 and sorted(engine.started[1:]) == [3.0, 4.0]
    assert engine.most_running == 3
    await results.release_and_wait(engine, 5)
    assert sorted(engine.started[3:]) == [2.0, 5.0] and engine.most_running == 3
    runner.cancel()


async def test_a_queued_final_withdrawn_never_decodes_and_a_running_one_cannot_be():
    engine = GatedEngine(parallelism=1)
    results = Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1)
    runner = asyncio.create_task(scheduler.run())
    speculation = dataclasses.replace(job(1, 1.0, final=False), speculative=True)
    final, other = job(1, 2.0, final=True), job(1, 3.0, final=True)
    scheduler.submit("a", speculation)
    await engine.started_at_least(1)
    scheduler.submit("a", final)  # behind the speculation: one job per session at a time
    scheduler.submit("b", other)  # another session's final takes the next turn
    assert scheduler.pending_finals == 2
    # The speculation answered for `final`: its decode is taken out of line, unrun.
    assert scheduler.withdraw("a", final)
    assert scheduler.pending_finals == 1 and not scheduler.withdraw("a", final)
    await results.release_and_wait(engine, 1)
    await engine.started_at_least(2)
    assert not scheduler.withdraw("b", other)  # decoding: it cannot be
    await results.release_and_wait(engine, 2)
    await asyncio.wait_for(scheduler.wait_idle(), 5)
    runner.cancel()
    assert engine.started == [1.0, 3.0]
    assert [(key, end) for key, end, _ in results.done] == [("a", 1.0), ("b", 3.0)]
