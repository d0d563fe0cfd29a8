"""The gateway's OpenAI Realtime transcription endpoint, driven by the official `openai` SDK's
realtime client: the real gateway, a real nats-server and the worker on the bundled tiny.en.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from typing import Any

import numpy as np
import openai
import pytest
import soxr
from websockets.exceptions import ConnectionClosed

from stt_worker.core import protocol
from stt_worker.core.errors import ErrorCode, ProtocolError
from stt_worker.core.options import MAX_PROMPT_BYTES
from stt_worker.core.protocol import Transcription
from stt_worker.gateway.realtime_events import (
    Items,
    SessionConfig,
    parse_client_event,
    start_options,
)
from stt_worker.runtime.publisher import read_wav
from tests.helpers import SPEECH_DIR, manifest_text
from tests.test_worker import WER_BOUND
from tests.textnorm import wer

CLIP = "ls_1089-134691-0000.wav"  # "HE COULD WAIT NO LONGER", 2.1 s
CLIP_2 = "lj_LJ001-0008.wav"  # "has never been surpassed.", 1.8 s
RATE = 24_000
APPEND_BYTES = 4_800  # 100 ms of 24 kHz PCM16, as a client streams it
DELTA = "conversation.item.input_audio_transcription.delta"

TRANSCRIPTION_SESSION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad"},
        }
    },
}


def pcm24k(clip: str, trailing_silence_s: float = 1.0) -> bytes:
    """The clip resampled to OpenAI's 24 kHz, then silence enough for the worker's endpoint."""
    samples, rate = read_wav(SPEECH_DIR / clip)
    resampled = soxr.resample(samples[:, 0], rate, RATE)
    silence = np.zeros(int(RATE * trailing_silence_s), dtype=resampled.dtype)
    return np.concatenate([resampled, silence]).astype("<i2").tobytes()


def connect(http_url: str, api_key: str, **query: str) -> Any:
    """The SDK's connection manager, aimed at the gateway: it dials
    ``ws://<gateway>/v1/realtime?intent=transcription`` with ``Authorization: Bearer``."""
    client = openai.AsyncOpenAI(base_url=f"{http_url}/v1", api_key=api_key)
    return client.realtime.connect(extra_query={"intent": "transcription", **query})


async def append(connection: Any, audio: bytes) -> None:
    """100 ms appends at the pace of speech: partials come while the engine keeps up."""
    for offset in range(0, len(audio), APPEND_BYTES):
        chunk = audio[offset : offset + APPEND_BYTES]
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        await asyncio.sleep(APPEND_BYTES / 2 / RATE)


async def events_until(connection: Any, kind: str, count: int = 1, within_s: float = 60) -> list:
    """Events up to and including the `count`-th of type `kind`."""
    received: list = []
    async with asyncio.timeout(within_s):
        while sum(event.type == kind for event in received) < count:
            received.append(await connection.recv())
    return received


def of(events: list, kind: str) -> list:
    return [event for event in events if event.type == kind]


def completed_text(events: list) -> str:
    completed = of(events, "conversation.item.input_audio_transcription.completed")
    return " ".join(event.transcript for event in completed).strip()


async def speak(connection: Any, clip: str) -> list:
    await connection.session.update(session=TRANSCRIPTION_SESSION)
    await append(connection, pcm24k(clip))
    return await events_until(connection, "conversation.item.input_audio_transcription.completed")


async def test_the_sdk_client_transcribes_a_clip(worker, make_gateway) -> None:
    gateway = await make_gateway()
    async with connect(gateway.http_url, "sk-test") as connection:
        events = await speak(connection, CLIP)
    kinds = [event.type for event in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds, kinds
    updated = of(events, "session.updated")[0]
    assert updated.session.audio.input.format.rate == RATE

    completed = of(events, "conversation.item.input_audio_transcription.completed")[0]
    assert wer(manifest_text(CLIP), completed.transcript) <= WER_BOUND, completed
    item = completed.item_id
    deltas = of(events, "conversation.item.input_audio_transcription.delta")
    assert deltas and {delta.item_id for delta in deltas} == {item}, kinds
    # Deltas append: what they spell is a stretch of the partials, begun at the start.
    spelled = "".join(delta.delta for delta in deltas).strip().lower()
    assert spelled and manifest_text(CLIP).lower().startswith(spelled.split()[0]), spelled

    started = of(events, "input_audio_buffer.speech_started")[0]
    stopped = of(events, "input_audio_buffer.speech_stopped")[0]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
        "input_audio_buffer.speech_stopped"
    )
    assert kinds.index("input_audio_buffer.committed") < kinds.index(completed.type)
    assert started.item_id == stopped.item_id == item
    # Times in the connection's audio: speech within the 2.1 s clip.
    assert 0 <= started.audio_start_ms < stopped.audio_end_ms <= 2_600, (started, stopped)


async def test_commit_finalises_and_the_next_utterance_goes_on(worker, make_gateway) -> None:
    """A commit transcribes now; the next audio continues the connection's time line; a commit
    with nothing pending and bad events get error events, and the session goes on."""
    gateway = await make_gateway()
    async with connect(gateway.http_url, "sk-test") as connection:
        await connection.session.update(session=TRANSCRIPTION_SESSION)
        await append(connection, pcm24k(CLIP, trailing_silence_s=0))
        await connection.input_audio_buffer.commit()
        first = await events_until(
            connection, "conversation.item.input_audio_transcription.completed"
        )
        await connection.input_audio_buffer.commit()
        empty = await events_until(connection, "error")
        await connection.send_raw('{"type": "input_audio_buffer.append", "audio": "@@"}')
        await connection.send_raw("not json")
        await connection.send_raw('{"type": "response.create"}')
        bad = await events_until(connection, "error", count=3)
        second = await speak(connection, CLIP_2)
    assert wer(manifest_text(CLIP), completed_text(first)) <= WER_BOUND, first
    assert of(empty, "error")[0].error.code == "input_audio_buffer_commit_empty"
    assert [event.error.code for event in of(bad, "error")] == [
        "invalid_audio",
        "malformed_json",
        "unknown_type",
    ]
    assert wer(manifest_text(CLIP_2), completed_text(second)) <= WER_BOUND, second
    started = of(second, "input_audio_buffer.speech_started")[0]
    # The second utterance's audio comes after the first clip's 2.1 s.
    assert started.audio_start_ms >= 2_000, started
    committed = of(second, "input_audio_buffer.committed")[0]
    assert committed.previous_item_id == of(first, "input_audio_buffer.committed")[0].item_id


async def test_a_wrong_key_is_refused(worker, make_gateway) -> None:
    gateway = await make_gateway(token="sk-right")
    async with connect(gateway.http_url, "sk-wrong") as connection:
        refusal = await connection.recv()
        with pytest.raises(ConnectionClosed):
            await connection.recv()
    assert refusal.type == "error" and refusal.error.code == "unauthorized", refusal
    async with connect(gateway.http_url, "sk-right") as connection:
        assert (await connection.recv()).type == "session.created"


async def test_a_wrong_intent_is_refused(make_gateway) -> None:
    gateway = await make_gateway()
    client = openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="sk-test")
    async with client.realtime.connect(model="gpt-realtime") as connection:
        refusal = await connection.recv()
    assert refusal.type == "error" and refusal.error.code == "invalid_field", refusal


async def test_a_client_cannot_read_another_clients_session(worker, make_gateway) -> None:
    """Two keys naming the same session each get their own worker session; the same key may
    not open a name while it is in use."""
    gateway = await make_gateway()
    shared = f"rt-{uuid.uuid4().hex[:10]}"
    async with (
        connect(gateway.http_url, "sk-alice", session_id=shared) as alice,
        connect(gateway.http_url, "sk-mallory", session_id=shared) as mallory,
    ):
        heard_alice, heard_mallory = await asyncio.gather(
            speak(alice, CLIP), speak(mallory, CLIP_2)
        )
        async with connect(gateway.http_url, "sk-alice", session_id=shared) as again:
            refusal = await again.recv()
    assert refusal.type == "error" and refusal.error.code == "invalid_session_id", refusal
    assert "longer" not in completed_text(heard_mallory).lower(), heard_mallory
    assert "surpassed" not in completed_text(heard_alice).lower(), heard_alice
    assert wer(manifest_text(CLIP), completed_text(heard_alice)) <= WER_BOUND, heard_alice
    assert wer(manifest_text(CLIP_2), completed_text(heard_mallory)) <= WER_BOUND
    assert gateway.worker_id(shared, "sk-alice") != gateway.worker_id(shared, "sk-mallory")


def test_deltas_append_only_and_a_revision_waits_for_an_extension() -> None:
    """The worker's partials as deltas: the new suffix of one that extends the text sent,
    nothing for one that revises it; the final's transcript is the item's completed text."""
    items = Items()

    def result(text: str, *, final: bool = False) -> Transcription:
        return Transcription(
            session_id="s", transcript=text, sequence=0, is_partial=not final, is_final=final,
            timestamp=0.0, speaker_id=None, has_voice_activity=True, state="listening",
            utterance_id=1, audio_start_s=0.5, audio_end_s=1.25,
        )  # fmt: skip

    def sent(text: str, *, final: bool = False) -> list[dict]:
        return [json.loads(each) for each in items.events(result(text, final=final), 1000.0)]

    first = sent("He could")
    assert [e["type"] for e in first] == ["input_audio_buffer.speech_started", DELTA]
    assert first[0]["audio_start_ms"] == 1500 and first[1]["delta"] == "He could"
    assert [e["delta"] for e in sent("He could wait")] == [" wait"]
    assert sent("He would wait") == []  # revised: deltas cannot take words back
    assert [e["delta"] for e in sent("He could wait no")] == [" no"]
    closing = sent("He could wait no longer.", final=True)
    assert [e["type"] for e in closing] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert closing[0]["audio_end_ms"] == 2250
    assert closing[2]["transcript"] == "He could wait no longer."
    assert len({e["item_id"] for e in first + closing}) == 1
    # An item its final closed is never reopened.
    assert sent("Again")[0]["item_id"] != closing[0]["item_id"]


def with_turn_detection(turn_detection: Any, prompt: str | None = None) -> dict:
    session = json.loads(json.dumps(TRANSCRIPTION_SESSION))
    session["audio"]["input"]["turn_detection"] = turn_detection
    if prompt is not None:
        session["audio"]["input"]["transcription"]["prompt"] = prompt
    return session


async def published_starts(nc: Any) -> list[protocol.Start]:
    """The `start` messages the gateway publishes to worker sessions from now on."""
    starts: list[protocol.Start] = []

    async def record(msg: Any) -> None:
        message = protocol.decode_client_message(msg.data)
        if isinstance(message, protocol.Start):
            starts.append(message)

    await nc.subscribe("ai.voice.stream.>", cb=record)
    return starts


@pytest.mark.parametrize(
    ("turn_detection", "items"),
    [
        ({"type": "server_vad"}, 2),  # the worker's 500 ms: the 1 s pause ends a turn
        ({"type": "server_vad", "silence_duration_ms": 2000}, 1),
        (None, 1),  # the client commits: the pause does not end the turn
    ],
    ids=["default", "silence-2000", "null"],
)
async def test_turn_detection_and_prompt_reach_the_worker(
    worker, make_gateway, nc, turn_detection: Any, items: int
) -> None:
    """Two clips a second apart: how many items they make is the session's turn detection
    at work in the worker; the `start` the gateway publishes carries it and the prompt."""
    starts = await published_starts(nc)
    gateway = await make_gateway()
    async with connect(gateway.http_url, "sk-test") as connection:
        await connection.session.update(session=with_turn_detection(turn_detection, "Wait."))
        await events_until(connection, "session.updated")
        await append(connection, pcm24k(CLIP) + pcm24k(CLIP_2, trailing_silence_s=0.3))
        if turn_detection is None:
            await connection.input_audio_buffer.commit()
        events = await events_until(
            connection, "conversation.item.input_audio_transcription.completed", count=items
        )
        await asyncio.sleep(0.5)  # a second item, if one was to come, comes now
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                events.append(await connection.recv())

    completed = of(events, "conversation.item.input_audio_transcription.completed")
    assert len(completed) == items, [event.transcript for event in completed]
    expected = f"{manifest_text(CLIP)} {manifest_text(CLIP_2)}"
    assert wer(expected, completed_text(events)) <= WER_BOUND, completed_text(events)
    assert starts and {start.prompt for start in starts} == {"Wait."}, starts
    silence = (turn_detection or {"silence_duration_ms": 5000}).get("silence_duration_ms")
    assert {start.endpoint_silence_ms for start in starts} == {silence}, starts


async def test_server_vad_after_null_brings_back_the_workers_endpoint(
    worker, make_gateway, nc
) -> None:
    """Each update's `start` is laid over the last one: server_vad after null (the client
    commits, a 5 s endpoint) must send the worker's default again, so that the 1 s pause
    between the clips ends a turn without a commit."""
    starts = await published_starts(nc)
    gateway = await make_gateway()
    events: list = []
    async with connect(gateway.http_url, "sk-test") as connection:
        for turn_detection in (None, {"type": "server_vad"}):
            await connection.session.update(session=with_turn_detection(turn_detection))
            await events_until(connection, "session.updated")
        await append(connection, pcm24k(CLIP) + pcm24k(CLIP_2))
        with contextlib.suppress(TimeoutError):
            events = await events_until(
                connection, "conversation.item.input_audio_transcription.completed", 2, 30
            )
    assert starts and {(s.endpoint_mode, s.endpoint_silence_ms) for s in starts} == {
        (None, None)
    }, starts
    completed = of(events, "conversation.item.input_audio_transcription.completed")
    assert len(completed) == 2, [event.transcript for event in completed]


def test_turn_detection_and_prompt_are_checked_and_mapped() -> None:
    def update(**transcription_session: Any) -> Any:
        event = {"type": "transcription_session.update", "session": transcription_session}
        return parse_client_event(json.dumps(event), SessionConfig())

    for bad in (
        {"turn_detection": {"type": "server_vad", "silence_duration_ms": 10}},
        {"turn_detection": {"type": "server_vad", "silence_duration_ms": "500"}},
        {"turn_detection": {"type": "push_to_talk"}},
        {"input_audio_transcription": {"prompt": "x" * (MAX_PROMPT_BYTES + 1)}},
        {"input_audio_transcription": {"prompt": 7}},
    ):
        with pytest.raises(ProtocolError) as refused:
            update(**bad)
        assert refused.value.code == ErrorCode.INVALID_FIELD, bad
    semantic = update(turn_detection={"type": "semantic_vad", "eagerness": "high"})
    assert start_options(semantic.config) == {
        "prompt": None,
        "endpoint_mode": "turn",
        "endpoint_silence_ms": None,
    }
    default = update(turn_detection={"type": "server_vad"})
    assert start_options(default.config) == {
        "prompt": None,
        "endpoint_mode": None,
        "endpoint_silence_ms": None,
    }
    kept = update(input_audio_transcription={"prompt": "Loki"}, turn_detection=None)
    assert start_options(kept.config) == {
        "prompt": "Loki",
        "endpoint_mode": "fixed",
        "endpoint_silence_ms": 5000,
    }
