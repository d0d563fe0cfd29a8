"""Fair shares against the real worker on a real nats-server: a session that sends too fast
is refused with `rate_limited` (at most once a second, counted in the metrics) while an honest
session beside it keeps its finals; a durable worker's replay of stored audio at full speed is
not refused. (The budgets themselves are tested with plain calls in tests/test_admission.py,
the inboxes in tests/test_inbox.py, the finals bound in tests/test_scheduler.py.)"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid

import msgpack
import nats

from stt_worker.config import load_settings
from stt_worker.core.admission import FLOOD_SECONDS
from stt_worker.runtime.nats_server import NatsServer
from stt_worker.runtime.publisher import stream_file
from stt_worker.runtime.worker import Worker
from stt_worker.tools.cli import main
from tests.helpers import SPEECH_DIR, Inbox, manifest_text, until
from tests.test_worker import WER_BOUND, final_text, finals, sid
from tests.textnorm import wer

HONEST_CLIP = "ls_1089-134691-0000.wav"  # 2.1 s
LONG_CLIP = "long_lj_LJ001-0001_to_0005.wav"  # 35.9 s


def errors(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m.get("type") == "error"]


def refused_count(worker: Worker, kind: str) -> float:
    registry = worker.telemetry.metrics.registry
    return registry.get_sample_value("stt_rate_limited_total", {"kind": kind}) or 0.0


async def assert_honest(inbox: Inbox) -> None:
    messages = await inbox.until_closed(within_s=60)
    assert errors(messages) == []
    assert wer(manifest_text(HONEST_CLIP), final_text(messages)) <= WER_BOUND


async def test_an_audio_flood_is_rate_limited_beside_an_honest_session(make_worker, nc):
    worker = await make_worker(audio_burst_s=4.0)  # at most 2x real time past 4 s of audio
    honest, abuser = sid(), sid()
    inboxes = {s: await Inbox.open(nc, s) for s in (honest, abuser)}
    started = time.monotonic()
    await asyncio.gather(
        stream_file(nc, honest, SPEECH_DIR / HONEST_CLIP, speed=1.0),
        stream_file(nc, abuser, SPEECH_DIR / LONG_CLIP, speed=0),  # 36 s of audio at once
    )
    await assert_honest(inboxes[honest])
    messages = await inboxes[abuser].until_closed(within_s=60)
    elapsed_s = time.monotonic() - started
    refusals = errors(messages)
    assert {e["code"] for e in refusals} == {"rate_limited"}
    assert 1 <= len(refusals) <= math.ceil(elapsed_s) + 1  # at most one a second
    # Each notice says what was refused (and shed); one sent after the flood stopped may
    # hold only what was shed unread in its last moments.
    said = [re.search(r"([\d.]+) s of audio", e["message"]) for e in refusals]
    assert said[0] and float(said[0].group(1)) == 0.02  # the first refused chunk, at once
    assert all(s or "dropped unread" in e["message"] for s, e in zip(said, refusals, strict=True))
    assert "STT_MAX_AUDIO_SPEED" in refusals[0]["message"]
    # What got in (the burst) was transcribed; the rest was counted, not used.
    assert finals(messages) and finals(messages)[0]["audio_start_s"] < 4.0
    assert refused_count(worker, "audio") > 0
    registry = worker.telemetry.metrics.registry
    assert registry.get_sample_value("stt_rate_limited_audio_seconds_total") > 0
    # Every chunk past the budget was refused, or shed unread after a refusal, and said so.
    chunks = math.ceil(35.9 / 0.02)
    admitted_at_most = (4.0 + 2 * elapsed_s) / 0.02 + 1
    shed = registry.get_sample_value("stt_shed_messages_total") or 0.0
    assert refused_count(worker, "audio") + shed >= chunks - admitted_at_most
    # The flood's last second, held back by the once-a-second rule, is told too: every
    # refused or shed chunk is in some notice.
    await until(lambda: told(inboxes[abuser].received) >= refused_count(worker, "audio") + shed, 5)
    assert told(inboxes[abuser].received) == refused_count(worker, "audio") + shed


async def test_a_sustained_flood_gets_no_audio_until_it_slows_down(make_worker, nc):
    # A budget of real time after a 1 s burst; past 2x for 3 whole seconds in a row, a flood.
    worker = await make_worker(max_audio_speed=1.0, audio_burst_s=1.0, flood_factor=2.0)
    session = sid()
    inbox = await Inbox.open(nc, session)
    started = time.monotonic()
    await stream_file(nc, session, SPEECH_DIR / LONG_CLIP, speed=4.0)  # 35.9 s in 9 s
    sent_s = time.monotonic() - started
    messages = await inbox.until_closed(within_s=60)
    assert {e["code"] for e in errors(messages)} == {"rate_limited"}
    assert any(" flood;" in e["message"] for e in errors(messages))  # told why
    assert refused_count(worker, "flood") > 0 and refused_count(worker, "audio") > 0
    registry = worker.telemetry.metrics.registry
    heard_s = registry.get_sample_value("stt_audio_received_seconds_total")
    # Its burst and at most 1x for the first FLOOD_SECONDS (+1: the first, partial second),
    # then nothing; the budget alone would have let in 1 s + 1x for all `sent_s`.
    assert 1.0 <= heard_s <= 1.0 + (FLOOD_SECONDS + 1) + 0.1
    assert sent_s > FLOOD_SECONDS + 3  # so the budget alone admits 3 s more than that
    # A session at real time on the same worker keeps every word.
    honest = sid()
    honest_inbox = await Inbox.open(nc, honest)
    await stream_file(nc, honest, SPEECH_DIR / HONEST_CLIP, speed=1.0)
    await assert_honest(honest_inbox)


def told(messages: list[dict]) -> int:
    """Messages the `rate_limited` notices say were refused or dropped unread."""
    total = 0
    for error in errors(messages):
        for pattern in (r"(\d+) messages refused", r"(\d+) (?:more )?\(\d+ bytes\) dropped"):
            found = re.search(pattern, error["message"])
            total += int(found.group(1)) if found else 0
    return total


async def test_a_state_change_flood_is_refused_cheaply_beside_an_honest_session(make_worker, nc):
    worker = await make_worker()  # 20 control messages a second
    honest, abuser = sid(), sid()
    inboxes = {s: await Inbox.open(nc, s) for s in (honest, abuser)}
    flood = 20_000
    started = time.monotonic()

    async def flood_state_changes() -> None:
        states = [
            msgpack.packb({"type": "state_change", "state": s}) for s in ("responding", "listening")
        ]
        for index in range(flood):
            await nc.publish(f"ai.voice.stream.{abuser}", states[index % 2])
        await nc.flush()

    await asyncio.gather(
        stream_file(nc, honest, SPEECH_DIR / HONEST_CLIP, speed=1.0), flood_state_changes()
    )
    await assert_honest(inboxes[honest])
    await nc.publish(f"ai.voice.stream.{abuser}", msgpack.packb({"type": "end"}))
    messages = await inboxes[abuser].until_closed(within_s=30)
    elapsed_s = time.monotonic() - started
    refusals = errors(messages)
    assert {e["code"] for e in refusals} == {"rate_limited"}
    assert 1 <= len(refusals) <= math.ceil(elapsed_s) + 1
    admitted_at_most = 20 + 20 * elapsed_s
    # Refused by admission, or shed unread in the client's reader after a refusal.
    shed = worker.telemetry.metrics.registry.get_sample_value("stt_shed_messages_total") or 0.0
    assert refused_count(worker, "control") >= 1
    assert refused_count(worker, "control") + shed >= flood - admitted_at_most


async def test_a_garbage_flood_is_shed_once_past_its_share_of_replies(make_worker, nc):
    """Bad messages past a subject's share of error replies are shed unread, like a session
    over its budget: the flood costs no callback each, and the honest session keeps going."""
    worker = await make_worker()
    honest, abuser = sid(), sid()
    inboxes = {s: await Inbox.open(nc, s) for s in (honest, abuser)}
    flood = 20_000

    async def flood_garbage() -> None:
        for _ in range(flood):
            await nc.publish(f"ai.voice.stream.{abuser}", b"\xc1 not msgpack")
        await nc.flush()

    await asyncio.gather(
        stream_file(nc, honest, SPEECH_DIR / HONEST_CLIP, speed=1.0), flood_garbage()
    )
    await assert_honest(inboxes[honest])
    shed = worker.telemetry.metrics.registry.get_sample_value("stt_shed_messages_total") or 0.0
    assert shed >= flood / 2  # most of the flood never reached a callback
    await inboxes[abuser].until(lambda m: m.get("type") == "error", within_s=10)
    # A few replies, then (once the flood stops) one that sums what was shed unread.
    await inboxes[abuser].until(lambda m: m.get("code") == "rate_limited", within_s=5)
    replies = [m for m in inboxes[abuser].received if m.get("type") == "error"]
    assert {m["code"] for m in replies} == {"malformed_msgpack", "rate_limited"}
    assert len(replies) <= 20
    assert worker._nc is not None and worker._nc.stats["reconnects"] == 0


async def test_a_durable_replay_at_full_speed_is_paced_by_when_it_was_published(engine, tmp_path):
    """Audio stored at real time while no worker ran is consumed all at once on start: it is
    measured at the pace it was published, so none of it is refused."""
    async with NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))) as server:
        settings = load_settings(
            nats_url=server.url, http_port=0, otel_enabled=False, durable=True,
            audio_burst_s=0.5,
        )  # fmt: skip
        nc = await nats.connect(server.url)
        try:
            await _serve_until_ready_then_stop(settings, engine)  # creates the stream
            session = f"replay-{uuid.uuid4().hex[:8]}"
            inbox = await Inbox.open(nc, session)
            # 2.1 s of audio at real time, stored while no worker runs.
            await stream_file(nc, session, SPEECH_DIR / HONEST_CLIP, speed=1.0)
            worker = Worker(settings, engine)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                messages = await inbox.until_closed(within_s=60)
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
        finally:
            await nc.close()
    assert errors(messages) == []
    assert refused_count(worker, "audio") == 0
    assert wer(manifest_text(HONEST_CLIP), final_text(messages)) <= WER_BOUND


async def _serve_until_ready_then_stop(settings, engine) -> None:
    worker = Worker(settings, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 60)
    stop.set()
    await asyncio.wait_for(task, 60)


async def test_limits_switched_off_admit_a_whole_file_at_once(make_worker, nc):
    await make_worker(max_audio_speed=0, audio_burst_s=0.5)
    session = sid()
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, SPEECH_DIR / HONEST_CLIP, speed=0)
    messages = await inbox.until_closed(within_s=60)
    assert errors(messages) == []
    assert wer(manifest_text(HONEST_CLIP), final_text(messages)) <= WER_BOUND


async def test_cli_stream_at_full_speed_says_what_a_worker_will_refuse(
    make_worker, nats_url, monkeypatch, capsys
):
    monkeypatch.setenv("STT_AUDIO_BURST_S", "1")
    await make_worker(audio_burst_s=1.0)
    argv = ["stream", str(SPEECH_DIR / HONEST_CLIP), "--nats-url", nats_url, "--speed", "0"]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "note: faster than a worker admits" in out and "rate_limited" in out
    assert await asyncio.to_thread(main, [*argv[:-1], "1"]) == 0  # real time: no note
    assert "note:" not in capsys.readouterr().out
