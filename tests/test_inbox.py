"""Per-session inboxes (`runtime/inbox.py`) on a real event loop: one session's slow message
does not hold up another's, each session's order holds, a full inbox refuses that session's
messages only (told once a second), and `wait_served` waits for every admitted message."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from nats.aio.msg import Msg

from stt_worker.core.admission import RateLimits, Refusals, Traffic
from stt_worker.core.protocol import Chunk, ClientMessage, End, StateChange
from stt_worker.runtime.inbox import Inboxes
from stt_worker.runtime.telemetry.metrics import Metrics

NO_LIMITS = RateLimits(max_audio_speed=0, max_control_per_s=0)


class Recorder:
    """The sessions' handler: records what each session handled; session "slow" waits on
    `gate` for each message."""

    def __init__(self) -> None:
        self.handled: dict[str, list[ClientMessage]] = defaultdict(list)
        self.gate = asyncio.Event()
        self.changed = asyncio.Condition()

    async def handle(self, session_id: str, message: ClientMessage, msg: Msg, now: float) -> None:
        if session_id == "slow":
            await self.gate.wait()
        async with self.changed:
            self.handled[session_id].append(message)
            self.changed.notify_all()

    async def until(self, session_id: str, count: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self.handled[session_id]) >= count)


def message_on(session_id: str, size: int = 640) -> Msg:
    return Msg(None, subject=f"ai.voice.stream.{session_id}", data=bytes(size))  # type: ignore[arg-type]


def inboxes(recorder: Recorder, limits: RateLimits = NO_LIMITS, **bounds: int) -> Inboxes:
    return Inboxes(
        limits,
        max_messages=bounds.get("max_messages", 100),
        max_bytes=bounds.get("max_bytes", 1_000_000),
        max_entries=bounds.get("max_entries", 100),
        handle=recorder.handle,
        metrics=Metrics(),
    )


def offer(table: Inboxes, session_id: str, message: ClientMessage, now: float = 0.0):
    return table.offer(session_id, message, message_on(session_id), now, now)


async def test_a_session_stuck_on_its_message_does_not_hold_up_another():
    recorder = Recorder()
    table = inboxes(recorder)
    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        for seq in range(5):
            assert offer(table, "slow", Chunk(audio=bytes(640), seq=seq)) is True
        assert offer(table, "slow", End()) is True
        for seq in range(50):
            assert offer(table, "quick", Chunk(audio=bytes(640), seq=seq)) is True
        await recorder.until("quick", 50)  # all of quick's, while slow's first still waits
        assert recorder.handled["slow"] == []
        # Waiting for one session's inbox (a partition given up) does not wait for slow's.
        await asyncio.wait_for(table.wait_served(lambda session_id: session_id == "quick"), 1)
        recorder.gate.set()
        await asyncio.wait_for(table.wait_served(), 5)
    slow = recorder.handled["slow"]
    assert [m.seq for m in slow[:-1]] == list(range(5)) and isinstance(slow[-1], End)
    assert [m.seq for m in recorder.handled["quick"]] == list(range(50))


async def test_a_full_inbox_refuses_that_sessions_messages_only_and_says_so_once():
    recorder = Recorder()
    table = inboxes(recorder, max_messages=16)
    verdicts = [offer(table, "slow", StateChange(state="listening")) for _ in range(40)]
    assert verdicts[:16] == [True] * 16
    told = [v for v in verdicts[16:] if isinstance(v, Refusals)]
    assert len(told) == 1 and told[0].messages == {Traffic.INBOX: 1}
    assert verdicts.count(False) == 40 - 16 - 1
    assert offer(table, "other", StateChange(state="listening")) is True
    assert table.queued == 17
    # Messages admitted before the worker serves start when it does.
    recorder.gate.set()
    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        await asyncio.wait_for(table.wait_served(), 5)
    assert len(recorder.handled["slow"]) == 16 and len(recorder.handled["other"]) == 1


async def test_room_waits_while_the_session_takes_messages_and_not_for_a_stalled_one():
    """Durable mode's wait for a full inbox (`room`): it returns once the session's task has
    taken a message; a task that takes none within the patience is not waited for again (the
    next message is refused at once) until it takes one."""
    recorder = Recorder()
    table = inboxes(recorder, max_messages=16)
    seqs = iter(range(100))

    async def fill() -> None:
        """The inbox full, its task stuck on the message it took."""
        for _ in range(18):  # one taken, 16 queued, one refused
            verdict = offer(table, "slow", Chunk(audio=bytes(640), seq=next(seqs)))
            await asyncio.sleep(0)  # the task's turn to take its first
        assert verdict is not True and table.queued == 16

    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        await fill()
        waiting = asyncio.create_task(table.room("slow", message_on("slow"), patience_s=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        recorder.gate.set()
        await asyncio.wait_for(waiting, 1)
        await asyncio.wait_for(table.wait_served(), 5)

        recorder.gate.clear()
        await fill()
        await asyncio.wait_for(table.room("slow", message_on("slow"), patience_s=0.2), 1)
        started = asyncio.get_running_loop().time()
        await table.room("slow", message_on("slow"), patience_s=5)  # stalled: no wait
        assert asyncio.get_running_loop().time() - started < 0.1
        recorder.gate.set()
        await asyncio.wait_for(table.wait_served(), 5)
        recorder.gate.clear()
        await fill()  # it took messages again: waited for again
        waiting = asyncio.create_task(table.room("slow", message_on("slow"), patience_s=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        recorder.gate.set()
        await asyncio.wait_for(waiting, 1)


async def test_the_bytes_bound_counts_too_and_frees_as_messages_are_handled():
    recorder = Recorder()
    table = inboxes(recorder, max_bytes=3 * 640)
    big = Chunk(audio=bytes(640))
    assert [offer(table, "slow", big) for _ in range(4)][:3] == [True] * 3
    assert offer(table, "slow", big, now=0.5) is False  # told at 0.0 already
    recorder.gate.set()
    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        await asyncio.wait_for(table.wait_served(), 5)
        assert offer(table, "slow", big, now=0.6) is True


async def test_refused_audio_over_budget_is_counted_and_idle_entries_are_forgotten():
    recorder = Recorder()
    metrics = Metrics()
    limits = RateLimits(max_audio_speed=2.0, audio_burst_s=1.0)
    table = Inboxes(
        limits, max_messages=100, max_bytes=10**6, max_entries=2,
        handle=recorder.handle, metrics=metrics,
    )  # fmt: skip
    one_s = Chunk(audio=bytes(32_000))
    assert offer(table, "a", one_s) is True
    refusal = offer(table, "a", one_s)
    assert isinstance(refusal, Refusals) and refusal.audio_s == 1.0
    assert metrics.registry.get_sample_value("stt_rate_limited_total", {"kind": "audio"}) == 1
    assert metrics.registry.get_sample_value("stt_rate_limited_audio_seconds_total") == 1.0
    assert offer(table, "b", one_s) is True
    # The table is full (2 entries); "c" is let in once "a" and "b" are the same as fresh.
    try:
        offer(table, "c", one_s, now=0.01)
    except Exception as exc:
        assert getattr(exc, "code", None) == "too_many_sessions"
    else:
        raise AssertionError("a third session should not fit yet")
    recorder.gate.set()
    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        await asyncio.wait_for(table.wait_served(), 5)
        assert offer(table, "c", one_s, now=5.0) is True


async def test_a_session_s_clock_stays_at_its_oldest_queued_message_until_it_catches_up():
    recorder = Recorder()
    table = inboxes(recorder)
    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        assert table.clock("slow", 50.0) == 50.0  # no inbox: the wall clock
        for arrived in (10.0, 10.5, 11.0):
            assert offer(table, "slow", Chunk(audio=bytes(640)), now=arrived) is True
        await asyncio.sleep(0.05)  # its task holds the first message (the gate is shut)
        # The chunk it is handling arrived at 10 and two it has not seen at 10.5 and 11:
        # 20 s later it is still 10 for its timeouts, not 30 s of silence.
        assert table.clock("slow", 30.0) == 10.0
        assert offer(table, "other", End(), now=12.0) is True
        await recorder.until("other", 1)
        assert table.clock("other", 30.0) == 30.0  # caught up: the wall clock
        recorder.gate.set()
        await recorder.until("slow", 3)
        assert table.clock("slow", 31.0) == 31.0


async def test_only_a_message_within_its_budgets_waits_for_room():
    """Durable mode: `offer(may_wait=True)` answers None for a message its budgets admit but
    its full inbox cannot hold, and `wait_for_room` queues it once the task takes one; a
    message over its budgets is refused at once, however full the inbox."""
    recorder = Recorder()
    table = inboxes(recorder, RateLimits(max_audio_speed=1.0, audio_burst_s=1.0), max_messages=2)
    second = Chunk(audio=bytes(32_000))  # 1 s of 16 kHz audio: the whole burst
    async with asyncio.TaskGroup() as group:
        table.serve_in(group)
        for arrived in (0.0, 1.0, 2.0):  # one taken by the stuck task, two queued
            assert offer(table, "slow", second, now=arrived) is True
            await asyncio.sleep(0)
        message = message_on("slow", 32_000)
        within = table.offer("slow", second, message, 3.0, 3.0, may_wait=True)
        assert within is None
        over = table.offer("slow", second, message, 3.0, 3.0, may_wait=True)
        assert over is not None and over is not True  # its budget is spent: refused
        waiting = asyncio.create_task(
            table.wait_for_room("slow", second, message, 3.0, 3.0, patience_s=5)
        )
        await asyncio.sleep(0.05)
        assert not waiting.done()
        recorder.gate.set()
        assert await asyncio.wait_for(waiting, 1) is True
        await recorder.until("slow", 4)
