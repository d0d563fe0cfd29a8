"""Inference scheduler: bounded queues between sessions and the engine, finals first.

- Barge-in probes (a quick transcription of speech heard while the assistant talks) go
  first: at most one per session, short audio, and a turn decision waits on each.
- Finals wait in one FIFO per session, served round-robin by session
  (`core/final_queue.FinalQueue`): a session with many queued finals takes one turn in each
  round, so it never delays another's first. A session may have
  `max_pending_finals_per_session` queued, all of them together `max_pending_finals`; past
  either bound `submit` raises `OverloadedError` at once, so the session can tell its
  client, and a session that sends too much loses its own finals only. A queued final whose
  answer came another way (a late speculation) is `withdraw`n unrun.
- Partials are at most one per session: a newer partial replaces the stale one in place
  (keeping its place in line, so a chatty session cannot starve the others), and a final
  for the session drops its pending partial.
- Exactly the engine's `parallelism` inferences run at once, so nothing queues unseen inside
  the engine and the finals-first order is the order work starts in.
- Partials are served in line, except that a partial of an utterance with no words shown
  yet goes before the others (the first words are what a voice assistant waits for).
- Partials never take the last free slot when there are two or more: a final or a turn
  check arriving then starts at once instead of waiting out a partial's decode. An engine
  with background slots (`Engine.background_slots`: partials at a lower CPU priority) gets
  partials there only, and every other job in its `parallelism` slots.
- Plain partials take turns with rests while this process's threads wait for a CPU (cores
  shared with other workers, a CPU limit): `core/partial_pace.PartialPace` sets a duty cycle
  from that wait (`runtime/cpu_wait`), and after a partial's decode partials rest for the
  share of time the duty leaves. Speculations and everything else never rest.
- How long partials wait for a slot, smoothed (`partial_wait_s`, from a session's first
  pending request, not from the latest that replaced it), is what sessions stretch their
  partial cadence by: a busy engine is asked for fewer partials, not more.
- While the engine reports itself unhealthy (a failing HTTP backend), pending partials are
  dropped: the work we can lose goes first, finals keep their place.
- Turn mode's checks hear Smart Turn first (`TurnCheckEngine.screen`, about 35 ms), after
  the probes and finals and before partials, in a slot of their own (so no more CPU work
  runs than the engine has slots for), and are queued again for a decode (an urgent job)
  only when it hears an end: most pauses sound mid-turn and need none.
- A job may carry the trace context it was submitted under; the engine call runs in it, so
  an engine that makes requests (HTTP) can pass the trace on.
- With `STT_BATCH_MAX` above 1, a slot that takes a final or a partial also takes waiting
  jobs of other sessions for the same engine (`core/batching.BatchRule`: finals first, then
  partials; probes and turn checks never) and decodes them in one call
  (`Engine.transcribe_batch`); a batch of one is decoded exactly as without batching.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from stt_worker.config import Settings
from stt_worker.core.audio import SAMPLE_RATE_HZ, pcm16_to_float32
from stt_worker.core.batching import BatchRule, Waiting
from stt_worker.core.errors import EngineError, SttError
from stt_worker.core.final_queue import FinalQueue
from stt_worker.core.jobs import Job
from stt_worker.core.partial_pace import PartialPace
from stt_worker.engines.base import Audio, Engine, Transcript
from stt_worker.engines.turn_check import TurnCheckEngine
from stt_worker.runtime.batch_decode import decode_batch
from stt_worker.runtime.cpu_wait import keep_paced
from stt_worker.runtime.decode_plan import DecodePlan, EngineRole, Lane, plan

logger = logging.getLogger(__name__)

Outcome = Transcript | SttError
DoneCallback = Callable[[Hashable, Job, Outcome, float], Awaitable[None]]
# Weight of the newest partial's wait in `partial_wait_s`: a few partials tell the trend.
PARTIAL_WAIT_WEIGHT = 0.3


@dataclass(slots=True)
class _Entry:
    key: Hashable
    job: Job
    plan: DecodePlan
    trace_context: Context | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    group: Hashable | None = None  # the jobs it may batch with (`core/batching.Waiting`)
    hearing: bool = False  # a turn check for Smart Turn, before its decode (`_hear`)
    turn_prob: float | None = None  # Smart Turn's, heard before the decode


@dataclass(slots=True)
class _Slots:
    """The decode slots and what runs in them. Partials may hold `partial_slots` at once:
    the engine's background slots where it has them (partials at a lower CPU priority,
    beside `concurrency` slots for the rest), else all but one, so finals never wait."""

    concurrency: int
    background: int
    pace: PartialPace
    running: int = 0
    running_partials: int = 0

    @property
    def partial_slots(self) -> int:
        return self.background or max(1, self.concurrency - 1)

    @property
    def partials_full(self) -> bool:
        return self.running_partials >= self.partial_slots

    def take(self, partial: bool) -> None:
        self.running += 1
        self.running_partials += partial

    def give_back(self, partial: bool, paced_since: float | None = None) -> float:
        """A job ended; one `paced_since` a time (a plain partial) sets the partials' rest:
        how long, in seconds, is returned."""
        self.running -= 1
        self.running_partials -= partial
        return 0.0 if paced_since is None else self.pace.ran(paced_since, time.monotonic())

    def free(self, partial: bool, others_waiting: bool) -> int:
        """Slots besides a batch lead's (a partial or not) that would take a job now, when
        jobs other than partials wait (`others_waiting`) or not: no batch while one would."""
        partials_free = self.partial_slots - self.running_partials
        if self.background:
            if partial:
                return partials_free
            return self.concurrency - (self.running - self.running_partials)
        free = self.concurrency - self.running
        if not others_waiting:
            # Only partials wait, and the slot kept for finals would not take one: to them
            # it is not free, so they batch rather than queue one by one behind the lead.
            free = min(free, partials_free)
        return free


class InferenceScheduler:
    """Runs jobs on one engine; results go to `on_done(key, job, outcome, queue_wait_s)`."""

    def __init__(
        self,
        engine: Engine,
        on_done: DoneCallback,
        *,
        concurrency: int = 1,
        max_pending_finals: int = 256,
        max_pending_finals_per_session: int = 8,
        partial_engine: Engine | None = None,
        batch: BatchRule | None = None,
        screen: TurnCheckEngine | None = None,
        pace: PartialPace | None = None,
    ) -> None:
        self._engine = engine
        self._partial_engine = partial_engine or engine
        self._on_done = on_done
        self._finals: FinalQueue[_Entry] = FinalQueue(
            overall=max_pending_finals, per_session=max_pending_finals_per_session
        )
        self._partials: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._probes: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._wakeup = asyncio.Event()
        self.pace = pace or PartialPace(0.0)  # the partials' duty cycle (`core/partial_pace`)
        self._slots = _Slots(concurrency, engine.background_slots, self.pace)
        self._busy: set[Hashable] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._partial_wait_s = 0.0
        self._batch = batch or BatchRule()
        self._arrived = asyncio.Event()  # a job was queued: a gathering batch looks again
        self._screen = screen
        # Turn checks waiting for Smart Turn, oldest first: served after finals.
        self._screening: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()

    def submit(self, key: Hashable, job: Job, trace_context: Context | None = None) -> None:
        entry = _Entry(key, job, plan(job), trace_context)
        entry.group = self._group(entry)
        if entry.plan.options.turn_probability and self._screen and self._screen.screens:
            entry.hearing = True
            self._screening[key] = entry  # a newer check of the session replaces the old
        elif entry.plan.lane is Lane.URGENT:
            self._probes[key] = entry  # a newer probe of the same speech replaces the old
        elif entry.plan.lane is Lane.FINAL:
            self._finals.put(key, entry, job.utterance_id)
            self._partials.pop(key, None)
        else:
            stale = self._partials.get(key)
            if stale is not None:
                entry.enqueued_at = stale.enqueued_at  # the session has waited since then
            self._partials[key] = entry  # replaces a stale partial, keeping its place
        self._idle.clear()
        self._wakeup.set()
        self._arrived.set()

    async def _hear(self, entry: _Entry, screen: TurnCheckEngine) -> None:
        """A turn check's slot while Smart Turn hears it: answered here when that alone
        holds the turn, else queued for its decode, first in line as every urgent job."""
        try:
            turn_prob, held = await screen.screen(entry.job.pcm)
        except Exception:  # e.g. its thread shut down: the check goes by its words
            logger.exception("Smart Turn could not hear a turn check")
            turn_prob, held = None, None
        if held is not None:
            await self._deliver(entry, held, self._queue_wait_s(entry))
            return
        options = dataclasses.replace(entry.plan.options, turn_probability=False)
        entry.plan = dataclasses.replace(entry.plan, options=options)
        entry.hearing, entry.turn_prob = False, turn_prob
        self._probes[entry.key] = entry

    def engine_for(self, role: EngineRole) -> Engine:
        return self._engine if role is EngineRole.FINAL else self._partial_engine

    def forget(self, key: Hashable) -> None:
        """Drop a session's pending partial and probe (its session closed)."""
        self._partials.pop(key, None)
        self._probes.pop(key, None)
        self._screening.pop(key, None)
        self._update_idle()

    def partial_wait_s(self) -> float:
        """How long partials have lately waited for a slot, in seconds (smoothed)."""
        return self._partial_wait_s

    def withdraw(self, key: Hashable, job: Job) -> bool:
        """Take `job`, a final of session `key` still queued, out of line: its answer came
        another way (a late speculation). False: it is decoding or was never queued."""
        if self._finals.withdraw(key, lambda entry: entry.job is job) is None:
            return False
        self._update_idle()
        return True

    @property
    def pending_finals(self) -> int:
        return len(self._finals)

    @property
    def pending(self) -> int:
        return len(self._finals) + len(self._partials) + len(self._probes) + len(self._screening)

    async def wait_idle(self) -> None:
        """Until nothing is queued or running (used by drain)."""
        await self._idle.wait()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(self._slots.concurrency):
                group.create_task(self._serve(False), name=f"inference-{index}")
            for index in range(self._slots.background):
                group.create_task(self._serve(True), name=f"inference-background-{index}")
            # Measured even when pacing is off: `stt_cpu_wait_share` still tells the operator.
            group.create_task(keep_paced(self._slots.pace), name="cpu-wait")

    async def _serve(self, background: bool) -> None:
        while True:
            entry = self._next(background)
            if entry is None:
                self._update_idle()  # `_next` may have shed the last partials
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            partial = entry.plan.lane is Lane.PARTIAL
            paced_since = time.monotonic() if partial and not entry.job.speculative else None
            self._slots.take(partial)
            self._busy.add(entry.key)
            batch = [entry]
            try:
                if entry.hearing and self._screen is not None:
                    await self._hear(entry, self._screen)
                else:
                    if self._batch.batches(self._waiting(entry)):
                        batch += await self._companions(entry)
                    if len(batch) == 1:
                        await self._run_one(entry)
                    else:
                        await self._run_batch(batch)
            finally:
                if rest_s := self._slots.give_back(partial, paced_since):
                    asyncio.get_running_loop().call_later(rest_s, self._wakeup.set)
                self._busy.difference_update(queued.key for queued in batch)
                self._wakeup.set()  # that session's next job may run now
                self._update_idle()

    def _next(self, background: bool) -> _Entry | None:
        """The next job for a slot; a background slot takes partials only, and where there
        are background slots the others take no partials."""
        if not background:
            entry = self._next_due()
            if entry is not None or self._slots.background:
                return entry
        return self._next_partial()

    def _next_due(self) -> _Entry | None:
        # One job per session at a time: its results then arrive in utterance order, and one
        # talkative session cannot hold every slot.
        for key, entry in self._probes.items():
            if key not in self._busy:
                del self._probes[key]
                return entry
        for key in self._finals.sessions():
            if key not in self._busy:
                return self._finals.take(key)
        # Turn checks after due finals: a check may end a turn, a final has; checks come at
        # nearly every pause, and served first they starved finals on an overloaded machine.
        for key, entry in self._screening.items():
            if key not in self._busy:
                del self._screening[key]
                return entry
        return None

    def _next_partial(self) -> _Entry | None:
        if self._partials and not self._engine.healthy:
            # A failing backend gets only finals: partials are the work we can lose.
            logger.warning("engine unhealthy: shedding %d partials", len(self._partials))
            self._partials.clear()
        if self._slots.partials_full:
            return None
        waiting = [key for key in self._partials if key not in self._busy]
        if not waiting:
            return None
        # A speculation first: it is the final's decode done early, and useless once its
        # pause has ended the utterance (300 ms by default). Then an utterance's first words
        # before other utterances' next partials; else in line.
        key = next(
            (k for k in waiting if self._partials[k].job.speculative),
            next((k for k in waiting if self._partials[k].job.first_words), waiting[0]),
        )
        if self._slots.pace.resting(time.monotonic()) and not self._partials[key].job.speculative:
            return None  # the cores are short (`core/partial_pace`): plain partials wait
        return self._partials.pop(key)

    def _group(self, entry: _Entry) -> Hashable | None:
        if self._batch.max_size == 1 or entry.plan.lane is Lane.URGENT:
            return None  # probes and turn checks are never batched
        engine = self.engine_for(entry.plan.engine).batch_engine
        if engine is None:
            return None
        samples = round(entry.job.audio_s * SAMPLE_RATE_HZ)
        return engine, engine.batch_key(samples, entry.plan.options)

    def _waiting(self, entry: _Entry) -> Waiting[_Entry]:
        return Waiting(entry.key, entry.group, entry.plan.lane is Lane.FINAL, entry)

    async def _companions(self, lead: _Entry) -> list[_Entry]:
        """Waiting jobs of other sessions to decode with `lead`, taken off their queues."""
        rule, started = self._batch, time.perf_counter()
        while True:
            waiting = [self._waiting(entry) for entry in self._finals.heads()]
            if self._engine.healthy:  # else partials are shed (`_next`)
                waiting += [self._waiting(entry) for entry in self._partials.values()]
            others = bool(self._finals or self._probes or self._screening)
            free = self._slots.free(lead.plan.lane is Lane.PARTIAL, others)
            chosen = rule.companions(self._waiting(lead), waiting, self._busy, free)
            waited_s = time.perf_counter() - started
            left_s = rule.wait_left_s(1 + len(chosen), waited_s, bool(self._probes), free)
            if left_s <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left_s)
        for job in chosen:
            if job.final:
                self._finals.take(job.session)
            else:
                del self._partials[job.session]
            self._busy.add(job.session)
        return [job.item for job in chosen]

    def _queue_wait_s(self, entry: _Entry) -> float:
        wait_s = time.perf_counter() - entry.enqueued_at
        if entry.plan.lane is Lane.PARTIAL:
            self._partial_wait_s += PARTIAL_WAIT_WEIGHT * (wait_s - self._partial_wait_s)
        return wait_s

    async def _run_batch(self, batch: list[_Entry]) -> None:
        waits_s = [self._queue_wait_s(entry) for entry in batch]
        engine = self.engine_for(batch[0].plan.engine).batch_engine
        assert engine is not None
        jobs = [(entry.job.pcm, entry.plan.options) for entry in batch]
        outcomes = await decode_batch(engine, jobs, batch[0].trace_context)
        for entry, outcome, wait_s in zip(batch, outcomes, waits_s, strict=True):
            await self._deliver(entry, outcome, wait_s)

    async def _run_one(self, entry: _Entry) -> None:
        wait_s = self._queue_wait_s(entry)
        outcome: Outcome
        try:
            # Joining and scaling up to 30 s of samples is CPU work: keep it off the loop.
            audio = await asyncio.to_thread(pcm16_to_float32, entry.job.pcm)
            outcome = await _transcribe(self.engine_for(entry.plan.engine), entry, audio)
            if entry.turn_prob is not None:
                outcome = dataclasses.replace(outcome, turn_prob=entry.turn_prob)
        except asyncio.CancelledError:
            raise
        except SttError as exc:
            outcome = exc
        except Exception as exc:  # an engine that broke its contract must not kill the loop
            logger.exception("engine raised an unmapped exception")
            outcome = EngineError(f"unexpected engine failure: {exc!r}")
        await self._deliver(entry, outcome, wait_s)

    async def _deliver(self, entry: _Entry, outcome: Outcome, wait_s: float) -> None:
        try:
            await self._on_done(entry.key, entry.job, outcome, wait_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("result handler failed")

    def _update_idle(self) -> None:
        queued = self._finals or self._partials or self._probes or self._screening
        if not queued and self._slots.running == 0:
            self._idle.set()


async def _transcribe(engine: Engine, entry: _Entry, audio: Audio) -> Transcript:
    """`entry`'s decode on `engine`, in the trace context it was submitted under."""
    if entry.trace_context is None:
        return await engine.transcribe(audio, entry.plan.options)
    token = otel_context.attach(entry.trace_context)
    try:
        return await engine.transcribe(audio, entry.plan.options)
    finally:
        otel_context.detach(token)


def scheduler_for(
    settings: Settings, engine: Engine, on_done: DoneCallback, partial_engine: Engine
) -> InferenceScheduler:
    """The worker's scheduler: `engine`'s parallelism, the queue bounds and batches of
    `settings`, partials (and probes, turn checks) on `partial_engine`."""
    return InferenceScheduler(
        engine,
        on_done,
        concurrency=engine.parallelism,
        max_pending_finals=settings.max_pending_finals,
        max_pending_finals_per_session=settings.max_pending_finals_per_session,
        partial_engine=partial_engine,
        batch=BatchRule(settings.batch_max, settings.batch_wait_ms / 1000),
        screen=partial_engine if isinstance(partial_engine, TurnCheckEngine) else None,
        pace=PartialPace(settings.partial_cpu_wait),
    )
