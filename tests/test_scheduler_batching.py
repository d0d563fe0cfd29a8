"""Batches in the inference scheduler (`STT_BATCH_MAX`, `STT_BATCH_WAIT_MS`): which jobs
decode together, that probes never wait for one, and that a batch of real speech on the real
model gives each session the text it gets alone."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from stt_worker.config import load_settings
from stt_worker.core.batching import BatchRule
from stt_worker.core.errors import SttError
from stt_worker.core.jobs import Job, JobKind
from stt_worker.engines.base import Audio, DecodeOptions, Engine, EngineInfo, Transcript
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from stt_worker.runtime.scheduler import InferenceScheduler
from tests.test_engine import load_clip
from tests.test_scheduler import Results, job


class BatchGatedEngine(Engine):
    """Each call (one job or a batch) waits until the test releases it; records the audio
    seconds of each call's jobs, in order."""

    batching = True

    def __init__(self) -> None:
        self.info = EngineInfo("gated", "none", "cpu")
        self.calls: list[list[float]] = []
        self.release = asyncio.Semaphore(0)
        self.changed = asyncio.Condition()

    async def finish_call(self, results: Results, done: int) -> None:
        """Release the running call and wait until `done` results were delivered."""
        self.release.release()
        async with asyncio.timeout(5), results.changed:
            await results.changed.wait_for(lambda: len(results.done) >= done)

    async def calls_at_least(self, count: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.calls) >= count)

    async def _call(self, audios: list[Audio]) -> list[Transcript]:
        async with self.changed:
            self.calls.append([len(audio) / 16_000 for audio in audios])
            self.changed.notify_all()
        await self.release.acquire()
        return [Transcript(text=f"{len(audio) / 16_000:g}") for audio in audios]

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        return (await self._call([audio]))[0]

    async def transcribe_batch(
        self, jobs: Sequence[tuple[Audio, DecodeOptions]]
    ) -> list[Transcript | SttError]:
        return [*await self._call([audio for audio, _ in jobs])]


def probe(seconds: float) -> Job:
    return dataclasses.replace(job(1, seconds, final=False), kind=JobKind.BARGE_IN_PROBE)


async def test_a_batch_takes_finals_first_then_partials_and_probes_go_alone() -> None:
    engine, results = BatchGatedEngine(), Results()
    rule = BatchRule(max_size=4)
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1, batch=rule)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=True))
    await engine.calls_at_least(1)  # a alone: nothing else was queued
    scheduler.submit("p", job(1, 2.0, final=False))
    scheduler.submit("b", job(1, 3.0, final=True))
    scheduler.submit("b", job(2, 3.5, final=True))  # b's second final waits for a next round
    scheduler.submit("c", job(1, 4.0, final=True))
    scheduler.submit("d", job(1, 5.0, final=True))
    scheduler.submit("e", probe(0.5))
    for calls, done in ((2, 1), (3, 2), (4, 6)):
        await engine.finish_call(results, done)
        await engine.calls_at_least(calls)
    await engine.finish_call(results, 7)
    await scheduler.wait_idle()
    runner.cancel()
    # The probe first and alone; then finals of three sessions, the partial waiting for
    # the next batch (at most 4 and one job a session).
    assert engine.calls == [[1.0], [0.5], [3.0, 4.0, 5.0, 2.0], [3.5]]
    assert [end for key, end, _ in results.done if key == "b"] == [3.0, 3.5]


async def test_no_batch_while_another_slot_is_free() -> None:
    engine, results = BatchGatedEngine(), Results()
    engine.parallelism = 2
    rule = BatchRule(max_size=4)
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=2, batch=rule)
    for key, seconds in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        scheduler.submit(key, job(1, seconds, final=True))
    runner = asyncio.create_task(scheduler.run())
    await engine.calls_at_least(2)
    # The first slot's final alone (the second slot was free), the second slot's with c;
    # which call reaches the engine first is the threads' race.
    assert sorted(engine.calls) == [[1.0], [2.0, 3.0]]
    engine.release.release()
    await engine.finish_call(results, 3)
    runner.cancel()


async def test_partials_batch_when_the_free_slot_is_kept_for_finals() -> None:
    """Two slots, partials only: one slot is kept for finals, so the partials' slot takes
    them as a batch (they once queued one by one while that slot sat idle)."""
    engine, results = BatchGatedEngine(), Results()
    rule = BatchRule(max_size=8)
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=2, batch=rule)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=False))
    await engine.calls_at_least(1)  # a alone: nothing else was queued
    for index, key in enumerate("bcdef"):
        scheduler.submit(key, job(1, 2.0 + index, final=False))
    await engine.finish_call(results, 1)
    await engine.calls_at_least(2)
    await engine.finish_call(results, 6)
    await scheduler.wait_idle()
    runner.cancel()
    assert engine.calls == [[1.0], [2.0, 3.0, 4.0, 5.0, 6.0]]


async def test_batches_of_one_job_are_decoded_as_without_batching() -> None:
    engine, results = BatchGatedEngine(), Results()
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1)  # STT_BATCH_MAX=1
    for key in "abc":
        scheduler.submit(key, job(1, 1.0, final=True))
    runner = asyncio.create_task(scheduler.run())
    for done in (1, 2, 3):
        await engine.finish_call(results, done)
    runner.cancel()
    assert engine.calls == [[1.0], [1.0], [1.0]]


async def test_a_batch_waits_for_a_companion_but_never_for_a_probe() -> None:
    engine, results = BatchGatedEngine(), Results()
    rule = BatchRule(max_size=4, wait_s=0.3)
    scheduler = InferenceScheduler(engine, results.on_done, concurrency=1, batch=rule)
    runner = asyncio.create_task(scheduler.run())
    scheduler.submit("a", job(1, 1.0, final=True))
    await asyncio.sleep(0.02)
    scheduler.submit("b", job(1, 2.0, final=False))  # arrives while a waits: joins it
    await engine.calls_at_least(1)
    started = time.perf_counter()
    scheduler.submit("c", job(1, 3.0, final=True))
    await engine.finish_call(results, 2)
    await asyncio.sleep(0.02)
    scheduler.submit("d", probe(0.5))  # ends c's wait for companions at once
    await engine.calls_at_least(2)
    assert time.perf_counter() - started < 0.25
    await engine.finish_call(results, 3)
    await engine.finish_call(results, 4)
    runner.cancel()
    assert engine.calls == [[1.0, 2.0], [3.0], [0.5]]


@pytest.fixture(scope="module")
def tiny() -> Iterator[FasterWhisperEngine]:
    engine = FasterWhisperEngine(load_settings(max_concurrent_inferences=1))
    yield engine
    engine.close()


def speech_job(name: str, seconds: float | None = None, *, final: bool = True) -> Job:
    audio = load_clip(name)[: None if seconds is None else int(seconds * 16_000)]
    pcm = np.round(audio * 32768).astype(np.int16)
    kind = JobKind.FINAL if final else JobKind.PARTIAL
    return Job(1, kind, (pcm,), 0.0, len(pcm) / 16_000, True)


async def test_sessions_batched_on_the_real_model_get_their_own_text(
    tiny: FasterWhisperEngine,
) -> None:
    jobs = {
        "a": speech_job("ls_1089-134686-0001.wav"),
        "b": speech_job("lj_LJ001-0008.wav"),
        "c": speech_job("ls_1089-134691-0000.wav"),
        "d": speech_job("jfk.wav", 3.0, final=False),
    }
    texts: dict[str, str] = {}
    all_done = asyncio.Event()

    async def on_done(key, job_: Job, outcome, wait_s: float) -> None:
        assert isinstance(outcome, Transcript), outcome
        texts[key] = outcome.text
        if len(texts) == len(jobs):
            all_done.set()

    scheduler = InferenceScheduler(tiny, on_done, concurrency=1, batch=BatchRule(max_size=4))
    batches: list[int] = []
    decode_batch = tiny.transcribe_batch

    async def counted(batch):
        batches.append(len(batch))
        return await decode_batch(batch)

    tiny.transcribe_batch = counted  # type: ignore[method-assign]
    for key, job_ in jobs.items():
        scheduler.submit(key, job_)
    runner = asyncio.create_task(scheduler.run())
    async with asyncio.timeout(60):
        await all_done.wait()
    runner.cancel()
    # b's 1.8 s needs a smaller window than the others' 2-3.3 s: it is decoded alone.
    assert batches == [3]
    for key, job_ in jobs.items():
        audio = np.concatenate(job_.pcm).astype(np.float32) / 32768
        options = DecodeOptions(full_window_retry=job_.is_final)
        assert texts[key] == tiny.transcribe_blocking(audio, options).text
    assert "belly" in texts["a"].lower()
