"""The worker end to end: a real nats-server, the real bundled model, real speech.

Every test publishes what a live publisher would and asserts on what comes back on
``ai.voice.transcription.{session_id}``. Waiting is always for a message, with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import msgpack
import numpy as np
import pytest
import soxr

from bench.speech_marks import speech_span
from stt_worker.runtime.publisher import publish_pcm, read_wav, stream_file
from tests.helpers import SPEECH_DIR, Inbox, manifest_text
from tests.textnorm import wer

WER_BOUND = 0.2


def sid() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m.get("type") == "transcript" and m["is_final"]]


def final_text(messages: list[dict]) -> str:
    return " ".join(m["transcript"] for m in finals(messages))


def assert_sequences(messages: list[dict]) -> None:
    results = [m for m in messages if m.get("type") == "transcript"]
    assert [m["sequence"] for m in results] == list(range(len(results)))


async def test_seed_example_exactly(worker, nc):
    """The seed README's own snippet: a bare start and end, with plain msgpack dicts."""
    session = sid()
    inbox = await Inbox.open(nc, session)
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb({"type": "start"}))
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb({"type": "end"}))
    messages = await inbox.until_closed()
    assert [m["type"] for m in messages] == ["session_closed"]
    assert messages[0]["utterances"] == 0


async def test_seed_publisher_with_audio_gets_the_seed_fields(worker, nc):
    """A seed-style publisher (msgpack dicts, base64 chunks with timestamps) and its result."""
    session = sid()
    inbox = await Inbox.open(nc, session)
    samples, rate = read_wav(SPEECH_DIR / "jfk.wav")
    subject = f"ai.voice.stream.{session}"
    start = {
        "type": "start",
        "session_id": session,
        "sample_rate": rate,
        "channels": 1,
        "state": "listening",
        "speaker_id": "speaker-1",
    }
    await nc.publish(subject, msgpack.packb(start))
    pcm = samples.astype("<i2").tobytes()
    step = rate * 2 // 50  # 20 ms
    for offset in range(0, len(pcm), step):
        chunk = {
            "type": "chunk",
            "audio_b64": base64.b64encode(pcm[offset : offset + step]).decode(),
            "timestamp": 1234567890.123,
        }
        await nc.publish(subject, msgpack.packb(chunk))
    await nc.publish(subject, msgpack.packb({"type": "end"}))
    messages = await inbox.until_closed(within_s=120)
    results = finals(messages)
    assert results
    seed_fields = {
        "session_id",
        "transcript",
        "sequence",
        "is_partial",
        "is_final",
        "timestamp",
        "speaker_id",
        "has_voice_activity",
        "state",
    }
    for message in results:
        assert seed_fields <= message.keys()
        assert message["session_id"] == session and message["speaker_id"] == "speaker-1"
        assert message["is_final"] and not message["is_partial"]
        assert message["has_voice_activity"] is True and message["state"] == "listening"
    assert_sequences(messages)
    assert wer(manifest_text("jfk.wav"), final_text(messages)) <= WER_BOUND


async def test_real_clip_streams_partials_then_final(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, SPEECH_DIR / "ls_1089-134686-0000.wav", speed=2.0)
    messages = await inbox.until_closed(within_s=120)
    results = [m for m in messages if m.get("type") == "transcript"]
    assert results[0]["is_partial"], "a partial should come before the first final"
    assert results[-1]["is_final"]
    assert_sequences(messages)
    error = wer(manifest_text("ls_1089-134686-0000.wav"), final_text(messages))
    assert error <= WER_BOUND, final_text(messages)


async def test_first_partial_comes_early_in_the_speech_then_every_300_ms(worker, nc):
    # Positions in the audio, not wall-clock times: what each partial had heard.
    path = SPEECH_DIR / "ls_1089-134691-0001.wav"  # "FOR A FULL HOUR HE HAD PACED UP ..."
    samples, rate = read_wav(path)
    speech = speech_span(samples, rate)
    session = sid()
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, path, speed=1.0)
    messages = await inbox.until_closed(within_s=120)
    partials = [m for m in messages if m.get("type") == "transcript" and m["is_partial"]]
    first = partials[0]
    # Published by 0.6 s into the speech (the old cadence: 1 s of audio, about 0.6 s of
    # speech after the pre-roll, plus its own interval when that one heard no word).
    assert first["audio_end_s"] - speech.start_s <= 0.6, first
    assert first["transcript"].split()[0].strip(".,").upper() == "FOR", first
    heard = np.array([m["audio_end_s"] for m in partials if m["audio_end_s"] <= speech.end_s])
    # Then one per 300 ms of audio (more apart only across pauses in the sentence).
    assert np.median(np.diff(heard)) <= 0.35, heard


async def test_a_pause_s_speculation_is_its_final_with_no_decode_after_it(make_worker, nc):
    # A long endpoint gives the speculation (asked 200 ms into the pause) time to come back
    # on a loaded machine; the final is then its text, decoded once, in the pause.
    worker = await make_worker(endpoint_silence_ms=2000, endpoint_speculate_ms=200)
    samples, rate = read_wav(SPEECH_DIR / "ls_1089-134691-0001.wav")
    pause = np.zeros((3 * rate, *samples.shape[1:]), dtype=samples.dtype)
    session = sid()
    inbox = await Inbox.open(nc, session)
    await publish_pcm(nc, session, np.concatenate([samples, pause]), sample_rate_hz=rate)
    messages = await inbox.until_closed(within_s=120)
    (final,) = finals(messages)
    assert final["end_reason"] == "silence" and final["audio_end_s"] > samples.shape[0] / rate
    assert wer(manifest_text("ls_1089-134691-0001.wav"), final["transcript"]) <= WER_BOUND
    async with httpx.AsyncClient(base_url=worker.probe_url) as http:
        metrics = (await http.get("/metrics")).text
    # Counted as a speculative final, and no engine call was a final's.
    assert "stt_speculative_finals_total 1.0" in metrics
    final_decodes = 'stt_inference_duration_seconds_count{engine="faster-whisper",kind="final"}'
    assert final_decodes not in metrics
    assert "stt_final_latency_seconds_count 1.0" in metrics


async def test_a_late_speculation_answers_and_its_finals_queued_decode_is_withdrawn(
    make_worker, nc
):
    # The endpoint 20 ms after the speculation is asked: the pause ends the utterance while
    # the speculation still decodes, so the final's decode queues behind it (one job per
    # session); the speculation's text answers, and that queued decode is withdrawn unrun.
    worker = await make_worker(endpoint_silence_ms=220, endpoint_speculate_ms=200)
    samples, rate = read_wav(SPEECH_DIR / "ls_1089-134691-0001.wav")
    pause = np.zeros((rate, *samples.shape[1:]), dtype=samples.dtype)
    session = sid()
    inbox = await Inbox.open(nc, session)
    # No partials: none of the session's own decodes runs when the speculation is asked.
    start = {"type": "start", "partials": False, "sample_rate": rate}
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb(start))
    audio = np.concatenate([samples, pause])
    await publish_pcm(nc, session, audio, sample_rate_hz=rate, send_start=False)
    messages = await inbox.until_closed(within_s=120)
    texts = " ".join(m["transcript"] for m in finals(messages))
    assert wer(manifest_text("ls_1089-134691-0001.wav"), texts) <= WER_BOUND, texts
    async with httpx.AsyncClient(base_url=worker.probe_url) as http:
        metrics = (await http.get("/metrics")).text
    # At least the sentence's end was answered so; each withdrawn decode's final went out
    # once, with the speculation's text (a final whose speculation heard no words, or
    # speech after it, still decodes).
    (withdrawn,) = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("stt_final_decodes_withdrawn_total ")
    ]
    assert withdrawn >= 1
    ids = [m["utterance_id"] for m in finals(messages)]
    assert len(ids) == len(set(ids))


async def test_turn_events_announce_the_final_before_the_endpoint(make_worker, nc):
    # As above; the session asks for turn events: the speculation's text comes as an
    # `eager_end_of_turn` in the pause, and the final after the endpoint confirms it.
    worker = await make_worker(endpoint_silence_ms=2000, endpoint_speculate_ms=200)
    samples, rate = read_wav(SPEECH_DIR / "ls_1089-134691-0001.wav")
    pause = np.zeros((3 * rate, *samples.shape[1:]), dtype=samples.dtype)
    session = sid()
    inbox = await Inbox.open(nc, session)
    start = {"type": "start", "turn_events": True}
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb(start))
    audio = np.concatenate([samples, pause])
    await publish_pcm(nc, session, audio, sample_rate_hz=rate, send_start=False)
    messages = await inbox.until_closed(within_s=120)
    (final,) = finals(messages)
    at = messages.index(final)
    kinds = [m["type"] for m in messages[:at]]
    assert "eager_end_of_turn" in kinds, kinds
    last = max(i for i, kind in enumerate(kinds) if kind == "eager_end_of_turn")
    # No speech came after the last eager event: the final is its text, for its utterance.
    assert "turn_resumed" not in kinds[last:], kinds
    eager = messages[last]
    assert eager["text"] == final["transcript"] and eager["utterance_id"] == final["utterance_id"]
    assert eager["audio_end_s"] <= final["audio_end_s"] and eager["sequence"] < final["sequence"]
    assert wer(manifest_text("ls_1089-134691-0001.wav"), eager["text"]) <= WER_BOUND
    # Transcripts and turn events share the session's numbering.
    numbered = [m["sequence"] for m in messages if "sequence" in m]
    assert numbered == list(range(len(numbered)))
    async with httpx.AsyncClient(base_url=worker.probe_url) as http:
        metrics = (await http.get("/metrics")).text
    eager_count = kinds.count("eager_end_of_turn")
    assert f'stt_turn_events_total{{type="eager_end_of_turn"}} {eager_count}.0' in metrics


async def test_two_utterances_separated_by_silence_give_two_finals(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    await stream_file(nc, session, SPEECH_DIR / "conv_2utt_1p5s.wav", speed=0)
    messages = await inbox.until_closed(within_s=120)
    results = finals(messages)
    assert len(results) == 2, [m["transcript"] for m in results]
    assert results[0]["audio_end_s"] <= results[1]["audio_start_s"]
    assert wer(manifest_text("conv_2utt_1p5s.wav"), final_text(messages)) <= WER_BOUND


async def test_barge_in_interrupts_before_the_words_arrive(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    clip = "ls_1089-134691-0000.wav"
    await stream_file(
        nc, session, SPEECH_DIR / clip, speed=0, state="responding", speaker_id="user-7"
    )
    messages = await inbox.until_closed(within_s=120)
    types = [m["type"] for m in messages]
    assert types.count("interrupt") == 1
    interrupt = messages[types.index("interrupt")]
    assert interrupt["speaker_id"] == "user-7" and interrupt["session_id"] == session
    assert "transcript" not in types[: types.index("interrupt")]
    words = finals(messages)
    assert words and words[-1]["state"] == "listening"
    assert wer(manifest_text(clip), final_text(messages)) <= WER_BOUND


async def test_interrupt_detection_off_means_no_interrupt_and_no_transcript(make_worker, nc):
    await make_worker(enable_interrupt_detection=False)
    session = sid()
    inbox = await Inbox.open(nc, session)
    clip = SPEECH_DIR / "ls_1089-134691-0000.wav"
    await stream_file(nc, session, clip, speed=0, state="responding", send_end=False)
    subject = f"ai.voice.stream.{session}"
    await nc.publish(subject, msgpack.packb({"type": "state_change", "state": "listening"}))
    await stream_file(nc, session, clip, speed=0, send_start=False)
    messages = await inbox.until_closed(within_s=120)
    assert "interrupt" not in [m["type"] for m in messages]
    assert len(finals(messages)) == 1  # only the speech sent while listening
    assert wer(manifest_text(clip.name), final_text(messages)) <= WER_BOUND


async def test_silence_only_gives_no_transcript(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    rng = np.random.default_rng(0)
    hiss = (rng.normal(0, 30, 16_000 * 4)).astype(np.int16)  # 4 s of very quiet noise
    silence = np.concatenate([np.zeros(16_000 * 2, np.int16), hiss])
    await publish_pcm(nc, session, silence, speed=0)
    messages = await inbox.until_closed()
    assert [m["type"] for m in messages] == ["session_closed"]


async def test_silence_without_vad_gives_no_transcript_text(make_worker, nc):
    await make_worker(enable_vad=False)
    session = sid()
    inbox = await Inbox.open(nc, session)
    await publish_pcm(nc, session, np.zeros(16_000 * 3, np.int16), speed=0)
    messages = await inbox.until_closed(within_s=60)
    assert all(not m.get("transcript") for m in messages)
    assert all(not m["has_voice_activity"] for m in finals(messages))


async def test_without_vad_the_chunk_timeout_finalises(make_worker, nc):
    await make_worker(enable_vad=False, chunk_timeout_s=0.5)
    session = sid()
    inbox = await Inbox.open(nc, session)
    clip = "ls_1089-134691-0000.wav"
    await stream_file(nc, session, SPEECH_DIR / clip, speed=0, send_end=False)
    final = await inbox.until(
        lambda m: m.get("type") == "transcript" and m["is_final"], within_s=60
    )
    assert wer(manifest_text(clip), final["transcript"]) <= WER_BOUND


async def test_end_without_audio(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    await publish_pcm(nc, session, np.zeros(0, np.int16), speed=0, speaker_id="s")
    messages = await inbox.until_closed()
    assert messages == [
        {
            **messages[0],
            "type": "session_closed",
            "reason": "end",
            "utterances": 0,
            "speaker_id": "s",
        }
    ]


async def test_chunks_without_start_open_a_session(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    clip = "lj_LJ001-0006.wav"
    await stream_file(nc, session, SPEECH_DIR / clip, speed=0, send_start=False)
    messages = await inbox.until_closed(within_s=60)
    assert all(m["session_id"] == session for m in messages)
    assert wer(manifest_text(clip), final_text(messages)) <= WER_BOUND


async def test_resampled_stereo_and_raw_bytes(worker, nc):
    """44.1 kHz stereo sent as raw msgpack bytes: downmixed, resampled, transcribed."""
    session = sid()
    inbox = await Inbox.open(nc, session)
    clip = "ls_1089-134691-0001.wav"
    samples, _ = read_wav(SPEECH_DIR / clip)
    upsampled = soxr.resample(samples.reshape(-1).astype(np.float32), 16_000, 44_100)
    stereo = np.stack([upsampled, upsampled * 0.5], axis=1).clip(-32768, 32767).astype(np.int16)
    await publish_pcm(nc, session, stereo, sample_rate_hz=44_100, speed=0, raw_audio=True)
    messages = await inbox.until_closed(within_s=60)
    assert wer(manifest_text(clip), final_text(messages)) <= WER_BOUND


async def test_eight_concurrent_sessions_each_get_their_own_transcript(worker, nc):
    clips = [
        "jfk.wav",
        "ls_1089-134686-0001.wav",
        "ls_1089-134691-0000.wav",
        "ls_1089-134691-0001.wav",
        "ls_1089-134686-0002.wav",
        "lj_LJ001-0006.wav",
        "lj_LJ001-0008.wav",
        "noisy10db_lj_LJ001-0004.wav",
    ]
    sessions = [sid() for _ in clips]
    inboxes = [await Inbox.open(nc, s) for s in sessions]
    await asyncio.gather(
        *(
            stream_file(nc, s, SPEECH_DIR / clip, speed=4.0)
            for s, clip in zip(sessions, clips, strict=True)
        )
    )
    results = await asyncio.gather(*(inbox.until_closed(within_s=180) for inbox in inboxes))
    for clip, session, messages in zip(clips, sessions, results, strict=True):
        assert all(m["session_id"] == session for m in messages)
        assert_sequences(messages)
        error = wer(manifest_text(clip), final_text(messages))
        assert error <= 0.25, (clip, final_text(messages))


BAD_INPUTS: list[tuple[str, bytes]] = [
    ("malformed_msgpack", b"\xc1\xc1\xc1"),
    ("not_a_map", msgpack.packb([1, 2, 3])),
    ("missing_type", msgpack.packb({"audio_b64": ""})),
    ("unknown_type", msgpack.packb({"type": "dance"})),
    ("invalid_field", msgpack.packb({"type": "start", "sample_rate": "fast"})),
    ("invalid_field", msgpack.packb({"type": "state_change", "state": "sleeping"})),
    ("invalid_audio", msgpack.packb({"type": "chunk", "audio_b64": "%%%not base64%%%"})),
    ("invalid_audio", msgpack.packb({"type": "chunk", "audio": b"\x01\x02\x03"})),
    ("missing_audio", msgpack.packb({"type": "chunk", "timestamp": 1.0})),
    ("unsupported_audio_format", msgpack.packb({"type": "start", "sample_rate": 5})),
    ("unsupported_audio_format", msgpack.packb({"type": "start", "channels": 0})),
    ("chunk_too_large", msgpack.packb({"type": "chunk", "audio": b"\x00" * 300_000})),
]


@pytest.mark.parametrize(("code", "payload"), BAD_INPUTS, ids=[c for c, _ in BAD_INPUTS])
async def test_bad_input_gets_its_error_and_nothing_else_breaks(worker, nc, code, payload):
    bad, good = sid(), sid()
    bad_inbox, good_inbox = await Inbox.open(nc, bad), await Inbox.open(nc, good)
    clip = "ls_1089-134691-0000.wav"
    healthy = asyncio.create_task(stream_file(nc, good, SPEECH_DIR / clip, speed=8.0))
    await nc.publish(f"ai.voice.stream.{bad}", payload)
    error = await bad_inbox.until(lambda m: m.get("type") == "error")
    assert error["code"] == code and error["message"] and error["session_id"] == bad
    await healthy
    messages = await good_inbox.until_closed(within_s=60)
    assert wer(manifest_text(clip), final_text(messages)) <= WER_BOUND
    # The bad session (if it opened) still works after the error.
    await stream_file(nc, bad, SPEECH_DIR / clip, speed=0)
    after = await bad_inbox.until_closed(within_s=60)
    assert wer(manifest_text(clip), final_text(after)) <= WER_BOUND


async def test_end_for_unknown_session_is_reported(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    await nc.publish(f"ai.voice.stream.{session}", msgpack.packb({"type": "end"}))
    error = await inbox.until(lambda m: m.get("type") == "error")
    assert error["code"] == "unknown_session"


async def test_repeated_chunk_seq_is_reported_not_mixed_in(worker, nc):
    session = sid()
    inbox = await Inbox.open(nc, session)
    subject = f"ai.voice.stream.{session}"
    await nc.publish(subject, msgpack.packb({"type": "start"}))
    for seq in (0, 1, 1):
        await nc.publish(
            subject, msgpack.packb({"type": "chunk", "audio": b"\0" * 640, "seq": seq})
        )
    error = await inbox.until(lambda m: m.get("type") == "error")
    assert error["code"] == "chunk_out_of_order" and "seq 1" in error["message"]


async def test_drain_on_stop_publishes_the_open_utterance(make_worker, nc):
    """What SIGTERM does: stop taking audio, finalise open sessions, publish, return."""
    _, stop, task = await make_worker(return_handles=True)
    session = sid()
    inbox = await Inbox.open(nc, session)
    clip = "ls_1089-134691-0001.wav"
    await stream_file(nc, session, SPEECH_DIR / clip, speed=0, send_end=False)
    await nc.flush()
    await inbox.until(lambda m: m.get("type") == "transcript", within_s=60)  # mid-utterance
    stop.set()
    await asyncio.wait_for(task, 60)
    await inbox.until_closed(within_s=10)
    messages = inbox.received
    closed = messages[-1]
    assert closed["type"] == "session_closed" and closed["reason"] == "shutdown"
    assert wer(manifest_text(clip), final_text(messages)) <= WER_BOUND
