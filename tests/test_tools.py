"""The developer tools against a real nats-server: NatsServer, the publisher, console, CLI.

No worker and no model here: what the publisher sends is checked by subscribing to the
stream subject itself and comparing the bytes with the WAV file's frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import signal
import sys
import time
import uuid
import wave
from pathlib import Path

import msgpack
import msgspec
import nats
import numpy as np
import pytest
from hypothesis import given, settings
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stt_worker.core.protocol import (
    EagerEndOfTurn,
    Error,
    Interrupt,
    SessionClosed,
    Transcription,
    TurnResumed,
    decode_server_message,
    encode_server_message,
)
from stt_worker.runtime.bus import deliver
from stt_worker.runtime.nats_server import NatsServer, NatsServerError
from stt_worker.runtime.publisher import (
    StreamStats,
    WavFormatError,
    publish_pcm,
    read_wav,
    stream_file,
)
from stt_worker.tools.cli import main
from stt_worker.tools.console import format_delivery, format_message
from stt_worker.tools.demo import find_sample_audio
from stt_worker.tools.tail import render_json, render_line
from tests.helpers import SPEECH_DIR
from tests.strategies import server_messages


def sid() -> str:
    return f"tools-{uuid.uuid4().hex[:8]}"


def write_wav(path: Path, samples: np.ndarray, sample_rate_hz: int, sample_width: int = 2) -> Path:
    frames = samples.reshape(len(samples), -1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(sample_width)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(frames.tobytes())
    return path


def wav_frames(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes())


@pytest.fixture
def stereo_44k(tmp_path: Path) -> Path:
    """0.5 s of 44.1 kHz stereo, the two channels different so interleaving is checked."""
    t = np.arange(22_050) / 44_100
    left = 8000 * np.sin(2 * np.pi * 440 * t)
    right = 4000 * np.sin(2 * np.pi * 660 * t)
    samples = np.stack([left, right], axis=1).astype(np.int16)
    return write_wav(tmp_path / "stereo_44k.wav", samples, 44_100)


async def collect_session(nc: Client, session_id: str) -> tuple[asyncio.Queue, Subscription]:
    queue: asyncio.Queue[dict] = asyncio.Queue()

    async def on_message(msg: Msg) -> None:
        queue.put_nowait(msgpack.unpackb(msg.data, raw=False))

    sub = await nc.subscribe(f"ai.voice.stream.{session_id}", cb=on_message)
    await nc.flush()
    return queue, sub


async def drain_queue(queue: asyncio.Queue, count: int) -> list[dict]:
    async with asyncio.timeout(10):
        return [await queue.get() for _ in range(count)]


# ---------------------------------------------------------------- NatsServer


async def test_server_round_trip(nc: Client, nats_server: NatsServer):
    assert nats_server.is_running
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    sub = await nc.subscribe("tools.ping")
    await nc.publish("tools.ping", b"pong")
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"pong"


async def test_restart_keeps_the_url_and_clients_reconnect():
    async with NatsServer() as server:
        url = server.url
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        survivor = await nats.connect(url, reconnect_time_wait=0.1, reconnected_cb=on_reconnect)
        try:
            await server.restart()
            assert server.url == url and server.is_running
            fresh = await nats.connect(url)
            sub = await fresh.subscribe("tools.after-restart")
            await fresh.publish("tools.after-restart", b"ok")
            assert (await sub.next_msg(timeout=5)).data == b"ok"
            await fresh.close()
            await asyncio.wait_for(reconnected.wait(), 10)
        finally:
            await survivor.close()

        await server.kill()  # a crash: no SIGTERM
        assert not server.is_running
        await server.start()
        assert server.url == url
        client = await nats.connect(url)
        await client.close()
    assert not server.is_running


def test_sync_use_and_clear_errors(tmp_path: Path):
    with NatsServer() as server:
        assert server.is_running and server.log_tail
        port = server.port
    assert not server.is_running
    server.stop_sync()  # stopping twice is harmless
    assert server.port == port

    with pytest.raises(NatsServerError, match="not found"):
        NatsServer(binary=tmp_path / "no-such-nats-server").start_sync()
    with pytest.raises(NatsServerError, match="not been started"):
        _ = NatsServer().url


def test_a_taken_port_is_reported_with_the_server_log(nats_server: NatsServer):
    with pytest.raises(NatsServerError, match="exited before it was ready") as info:
        NatsServer(port=nats_server.port).start_sync()
    assert "address already in use" in str(info.value)


# ---------------------------------------------------------------- publisher


async def test_stream_file_sends_start_chunks_end_with_the_wav_bytes(nc: Client):
    path = SPEECH_DIR / "ls_1089-134686-0001.wav"
    session = sid()
    queue, _ = await collect_session(nc, session)
    started = time.monotonic()
    stats = await stream_file(nc, session, path, speed=0, speaker_id="spk-1")
    elapsed = time.monotonic() - started

    frames = wav_frames(path)
    n_chunks = math.ceil(len(frames) / 640)  # 20 ms of 16 kHz mono PCM16
    messages = await drain_queue(queue, n_chunks + 2)
    start, chunks, end = messages[0], messages[1:-1], messages[-1]
    assert start == {
        "type": "start",
        "session_id": session,
        "sample_rate": 16_000,
        "channels": 1,
        "state": "listening",
        "speaker_id": "spk-1",
        "language": None,
    }
    assert end == {"type": "end"}
    assert all(c["type"] == "chunk" and c["audio"] is None for c in chunks)
    assert [c["seq"] for c in chunks] == list(range(n_chunks))
    pieces = [base64.b64decode(c["audio_b64"]) for c in chunks]
    assert all(len(piece) == 640 for piece in pieces[:-1])
    assert b"".join(pieces) == frames
    assert [c["timestamp"] for c in chunks] == stats.chunk_send_times

    assert stats.chunks == n_chunks
    assert stats.audio_s == pytest.approx(len(frames) / 2 / 16_000)
    assert stats.chunk_send_times == sorted(stats.chunk_send_times)
    assert elapsed < 1.0, "speed=0 must not pace a 3.3 s clip"


async def test_raw_stereo_44k_chunks_are_the_interleaved_frames(nc: Client, stereo_44k: Path):
    session = sid()
    queue, _ = await collect_session(nc, session)
    stats = await stream_file(nc, session, stereo_44k, speed=0, raw_audio=True, state="responding")
    frames = wav_frames(stereo_44k)
    frames_per_chunk = 882  # 20 ms at 44.1 kHz
    n_chunks = math.ceil(22_050 / frames_per_chunk)
    messages = await drain_queue(queue, n_chunks + 2)
    assert messages[0]["sample_rate"] == 44_100 and messages[0]["channels"] == 2
    assert messages[0]["state"] == "responding"
    chunks = messages[1:-1]
    assert all(c["audio_b64"] is None for c in chunks)
    assert all(len(c["audio"]) == frames_per_chunk * 4 for c in chunks[:-1])
    assert b"".join(c["audio"] for c in chunks) == frames
    assert messages[-1] == {"type": "end"}
    assert stats.chunks == n_chunks and stats.channels == 2
    assert stats.audio_s == pytest.approx(0.5)


async def test_start_and_end_can_be_left_out(nc: Client):
    session = sid()
    queue, _ = await collect_session(nc, session)
    samples = np.arange(1000, dtype=np.int16)
    await publish_pcm(nc, session, samples, speed=0, send_start=False, send_end=False)
    messages = await drain_queue(queue, 4)  # 1000 samples = 3 full chunks of 320 and a rest
    assert [m["type"] for m in messages] == ["chunk"] * 4
    # Without our start the session's chunk count is unknown: no seq rather than a wrong one.
    assert [m["seq"] for m in messages] == [None] * 4
    assert queue.empty()


async def test_passing_stats_back_continues_the_session(nc: Client):
    session = sid()
    queue, _ = await collect_session(nc, session)
    first = await publish_pcm(nc, session, np.zeros(640, np.int16), speed=0, send_end=False)
    stats = await publish_pcm(
        nc, session, np.ones(480, np.int16), speed=0, send_start=False, stats=first
    )
    messages = await drain_queue(queue, 1 + 2 + 2 + 1)
    assert [m["type"] for m in messages] == ["start"] + ["chunk"] * 4 + ["end"]
    assert [m["seq"] for m in messages[1:-1]] == [0, 1, 2, 3]
    assert stats is first and stats.chunk_end_s == [0.02, 0.04, 0.06, 0.07]
    empty = await publish_pcm(nc, sid(), np.zeros(0, np.int16), speed=0)
    assert empty.chunks == 0 and empty.audio_s == 0.0
    with pytest.raises(ValueError, match="cannot continue"):
        await publish_pcm(nc, "other", np.zeros(320, np.int16), speed=0, stats=stats)


async def test_pacing_follows_real_time_divided_by_speed(nc: Client, tmp_path: Path):
    path = write_wav(tmp_path / "one_second.wav", np.zeros(16_000, np.int16), 16_000)
    started = time.monotonic()
    stats = await stream_file(nc, sid(), path, speed=4.0)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    assert stats.chunks == 50
    # Chunk i leaves (i + 1) * 5 ms after the start at 4x; absolute deadlines, no drift.
    assert stats.wall_s == pytest.approx(49 * 0.005, abs=0.1)


def test_read_wav_rejects_other_sample_widths(tmp_path: Path):
    eight_bit = write_wav(tmp_path / "u8.wav", np.full(160, 128, np.uint8), 16_000, 1)
    with pytest.raises(WavFormatError, match=r"8-bit.*only 16-bit"):
        read_wav(eight_bit)
    not_a_wav = tmp_path / "noise.wav"
    not_a_wav.write_bytes(b"RIFF....not really")
    with pytest.raises(WavFormatError, match="not a PCM WAV"):
        read_wav(not_a_wav)


def test_read_wav_shapes_frames_by_channel(stereo_44k: Path):
    samples, rate = read_wav(stereo_44k)
    assert rate == 44_100 and samples.shape == (22_050, 2) and samples.dtype == np.int16
    assert samples[:, 0].tobytes() != samples[:, 1].tobytes()


def test_send_time_for_maps_an_offset_to_the_chunk_that_completed_it():
    stats = StreamStats(chunk_ms=20, chunk_send_times=[10.0, 10.02, 10.04])
    stats.chunk_end_s = [0.02, 0.04, 0.05]
    assert stats.send_time_for(0.0) == 10.0
    assert stats.send_time_for(0.02) == 10.0
    assert stats.send_time_for(0.021) == 10.02
    assert stats.send_time_for(0.05) == 10.04
    assert stats.send_time_for(0.06) == 10.04  # rounding just past the end
    assert stats.send_time_for(0.2) is None  # not sent yet
    assert StreamStats().send_time_for(0.0) is None


# ---------------------------------------------------------------- console and CLI


def transcript(**fields: object) -> Transcription:
    base = Transcription(
        session_id="s1",
        transcript=" hello there",
        sequence=3,
        is_partial=True,
        is_final=False,
        timestamp=0.0,
        speaker_id=None,
        has_voice_activity=True,
        state="listening",
        utterance_id=1,
    )
    return msgspec.structs.replace(base, **fields)


# The seed's result: its nine fields, no `type`, no utterance id.
SEED_RESULT = {
    "session_id": "s1",
    "transcript": "",
    "sequence": 0,
    "is_partial": False,
    "is_final": True,
    "timestamp": 0.0,
    "speaker_id": None,
    "has_voice_activity": False,
    "state": "listening",
}


def test_format_message_renders_each_type():
    assert format_message(transcript(), color=False) == "[s1] … hello there  (seq 3, utt 1)"
    final = transcript(is_final=True, is_partial=False, sequence=4, speaker_id="ann")
    assert (
        format_message(final, latency_s=0.4213, color=False)
        == "[s1] ✔ hello there  (seq 4, utt 1, speaker ann, 0.42 s after last audio)"
    )
    assert format_message(final, color=False).endswith("(seq 4, utt 1, speaker ann)")
    seed_style = decode_server_message(msgpack.packb(SEED_RESULT))
    assert format_message(seed_style, color=False) == "[s1] ✔ (no speech)  (seq 0)"
    interrupt = Interrupt(session_id="s1", timestamp=0.0, speaker_id=None, utterance_id=2)
    assert format_message(interrupt, color=False) == "[s1] ⚡ interrupt  (utt 2)"
    error = Error(session_id="s1", code="invalid_audio", message="bad b64", timestamp=0.0)
    assert format_message(error, color=False) == "[s1] ✖ invalid_audio: bad b64"
    closed = SessionClosed(
        session_id="s1", reason="end", timestamp=0.0, speaker_id=None, utterances=3
    )
    assert format_message(closed, color=False) == "[s1] ■ session closed  (end, 3 utterances)"
    eager = EagerEndOfTurn("s1", 2, 5, " Turn it off.", 0.0, "ann")
    assert format_message(eager, color=False) == (
        "[s1] ⏵ eager end of turn: Turn it off.  (seq 5, utt 2, speaker ann)"
    )
    resumed = TurnResumed("s1", 2, 6, 0.0)
    assert format_message(resumed, color=False) == "[s1] ↺ turn resumed  (seq 6, utt 2)"
    odd = {"type": "mystery", "session_id": "s1", "blob": b"\0" * 99, "note": "x" * 200}
    line = format_delivery(deliver("ai.voice.transcription.s1", msgpack.packb(odd)), color=False)
    assert line.startswith("[s1] ? mystery blob=<99 bytes> note='xxx") and len(line) < 120


def test_colour_only_when_asked_or_on_a_terminal(capsys: pytest.CaptureFixture[str]):
    assert "\033[" in format_message(transcript(), color=True)
    assert "\033[" not in format_message(transcript())  # captured stdout is not a TTY


def test_tail_rendering_of_payloads():
    payload = encode_server_message(transcript(is_final=True))
    assert json.loads(render_json(deliver("ai.voice.transcription.s1", payload)))["is_final"]
    assert render_line(deliver("ai.voice.transcription.s1", payload)).startswith("[s1] ✔")
    assert render_line(deliver("ai.voice.transcription.s9", b"\xc1")) == (
        "[s9] ? undecodable size_bytes=1"
    )
    assert render_json(deliver("ai.voice.transcription.s9", b"\xc1")) == (
        '{"type":"undecodable","size_bytes":1,"session_id":"s9"}'
    )


@settings(max_examples=200, deadline=None)
@given(server_messages)
def test_tail_json_is_the_wire_map_as_json(message):
    """`tail --json` printed the decoded msgpack map; the typed message prints the same."""
    payload = encode_server_message(message)
    wire_map = msgspec.msgpack.decode(payload)
    delivery = deliver(f"ai.voice.transcription.{message.session_id}", payload)
    assert render_json(delivery) == msgspec.json.encode(wire_map).decode()


async def test_cli_stream_publishes_to_a_running_nats(nc: Client, nats_url: str, tmp_path: Path):
    path = write_wav(tmp_path / "short.wav", np.arange(800, dtype=np.int16), 16_000)
    queue, _ = await collect_session(nc, "cli-session")
    argv = ["stream", str(path), "--session", "cli-session", "--nats-url", nats_url]
    status = await asyncio.to_thread(main, [*argv, "--speed", "0", "--raw", "--speaker", "bob"])
    assert status == 0
    messages = await drain_queue(queue, 5)  # start, 3 chunks (320 + 320 + 160), end
    assert [m["type"] for m in messages] == ["start", "chunk", "chunk", "chunk", "end"]
    assert messages[0]["speaker_id"] == "bob"
    assert b"".join(m["audio"] for m in messages[1:-1]) == wav_frames(path)


def test_cli_reports_a_missing_file_and_unreachable_nats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["demo", str(tmp_path / "missing.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
    path = write_wav(tmp_path / "a.wav", np.zeros(320, np.int16), 16_000)
    assert main(["stream", str(path), "--nats-url", "nats://127.0.0.1:1"]) == 1
    assert "cannot connect to NATS" in capsys.readouterr().err


async def test_demo_end_to_end_on_an_embedded_server(capsys: pytest.CaptureFixture[str]):
    """`stt-streaming demo` as a user runs it: own nats-server, worker, stream, summary."""
    clip = SPEECH_DIR / "conv_2utt_1p5s.wav"
    status = await asyncio.to_thread(main, ["demo", str(clip), "--speed", "0", "--timeout", "120"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "(embedded nats-server)" in out and "■ session closed  (end, 2 utterances)" in out
    assert out.count(" ✔ ") == 2 and "s after last audio)" in out
    assert "2 final(s) from 10.3 s of audio" in out and "latency  " in out


@pytest.mark.parametrize(
    ("engine", "shown"),
    [
        pytest.param("http", "engine   http whisper-1 on http://127.0.0.1:", id="http"),
        pytest.param("openai-whisper", "engine   openai-whisper tiny.en on ", id="openai-whisper"),
    ],
)
async def test_demo_runs_the_other_engines_end_to_end(
    engine: str, shown: str, capsys: pytest.CaptureFixture[str]
):
    """`demo --engine http` serves whisper-server in-process; openai-whisper needs PyTorch."""
    if engine == "openai-whisper":
        pytest.importorskip("torch")
    clip = SPEECH_DIR / "ls_1089-134691-0000.wav"
    started = time.monotonic()
    status = await asyncio.to_thread(main, ["demo", str(clip), "--engine", engine, "--speed", "0"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert shown in out and "■ session closed  (end, 1 utterances)" in out
    if engine == "http":
        assert "whisper  faster-whisper tiny.en on " in out and "(in-process)" in out
    text = next(line for line in out.splitlines() if line.startswith("text     "))
    assert "he could wait no longer" in text.lower()
    assert time.monotonic() - started < 30


def test_demo_whisper_url_needs_the_http_engine(capsys: pytest.CaptureFixture[str]):
    assert main(["demo", "--whisper-url", "http://127.0.0.1:1"]) == 2
    assert "--whisper-url needs --engine http" in capsys.readouterr().err


def test_demo_sample_audio_is_found_or_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert find_sample_audio().name == "conv_3utt_2s_1s.wav"
    monkeypatch.setenv("STT_SAMPLE_AUDIO", str(tmp_path / "mine.wav"))
    assert find_sample_audio() == tmp_path / "mine.wav"


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        pytest.param([], "[tail-1] ✔ hello  (seq 1, utt 2, speaker ann)", id="lines"),
        pytest.param(["--json"], '{"session_id":"tail-1","transcript":"hello",', id="json"),
    ],
)
async def test_cli_tail_prints_what_is_published(
    nc: Client, nats_url: str, options: list[str], shown: str
):
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stt_worker.tools.cli", "tail", "--nats-url", nats_url),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(30):
            assert b"listening on ai.voice.transcription.>" in await process.stderr.readline()
            result = transcript(session_id="tail-1", is_final=True, sequence=1, utterance_id=2)
            result = msgspec.structs.replace(result, transcript="hello", speaker_id="ann")
            await nc.publish("ai.voice.transcription.tail-1", encode_server_message(result))
            await nc.publish("ai.voice.transcription.tail-2", b"\xc1")
            await nc.flush()
            first = (await process.stdout.readline()).decode()
            second = (await process.stdout.readline()).decode()
        assert first.startswith(shown)
        assert "undecodable" in second and "tail-2" in second
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
