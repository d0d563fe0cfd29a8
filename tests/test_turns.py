"""Barge-in modes end to end: a real nats-server, the real model, real recorded words.

Word mode must not stop the assistant for a backchannel ("right", "yes") but must for a
real interruption ("stop", a sentence); voice-activity mode stops it for any speech. Clips
are streamed at real-time pace so the quick transcriptions (probes) race the audio as they
would live.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest

from stt_worker.core.turns import words_of
from stt_worker.runtime.publisher import publish_pcm, read_wav
from tests.helpers import REPO, SPEECH_DIR, Inbox

TURNS = REPO / "tests" / "data" / "turns"
RATE = 16_000


def sid() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


def padded(path: Path, before_s: float = 0.3, after_s: float = 0.8) -> np.ndarray:
    samples, rate = read_wav(path)
    assert rate == RATE
    silence = np.zeros
    return np.concatenate(
        [
            silence(int(before_s * RATE), np.int16),
            samples.reshape(-1),
            silence(int(after_s * RATE), np.int16),
        ]
    )


async def said_while_responding(nc, samples: np.ndarray) -> list[dict]:
    session = sid()
    inbox = await Inbox.open(nc, session)
    await publish_pcm(nc, session, samples, sample_rate_hz=RATE, speed=1, state="responding")
    return await inbox.until_closed(within_s=60)


def of_type(messages: list[dict], kind: str) -> list[dict]:
    return [m for m in messages if m.get("type") == kind]


@pytest.mark.parametrize("clip", ["right_03401e93_nohash_0.wav", "yes_0cb74144_nohash_1.wav"])
async def test_word_mode_lets_a_backchannel_pass_and_still_publishes_it(make_worker, nc, clip):
    await make_worker(barge_in_mode="words")
    messages = await said_while_responding(nc, padded(TURNS / clip))
    assert of_type(messages, "interrupt") == []
    (final,) = of_type(messages, "transcript")
    assert final["is_final"] and final["backchannel"] is True
    assert final["state"] == "responding"  # the assistant keeps the turn
    assert final["transcript"].strip(" .!").lower() == clip.split("_")[0]


async def test_word_mode_interrupts_for_a_real_word(make_worker, nc):
    await make_worker(barge_in_mode="words")
    messages = await said_while_responding(nc, padded(TURNS / "stop_022cd682_nohash_0.wav"))
    (interrupt,) = of_type(messages, "interrupt")
    assert "stop" in interrupt["transcript"].lower()
    (final,) = [m for m in of_type(messages, "transcript") if m["is_final"]]
    assert final["backchannel"] is False and final["state"] == "listening"
    assert messages.index(interrupt) < messages.index(final)


async def test_word_mode_interrupts_a_sentence_before_its_final(make_worker, nc):
    await make_worker(barge_in_mode="words")
    samples = padded(SPEECH_DIR / "ls_1089-134691-0000.wav")  # "He could wait no longer."
    messages = await said_while_responding(nc, samples)
    (interrupt,) = of_type(messages, "interrupt")
    finals = [m for m in of_type(messages, "transcript") if m["is_final"]]
    assert finals and messages.index(interrupt) < messages.index(finals[0])
    assert interrupt["transcript"]  # the words that confirmed it


async def test_voice_mode_interrupts_for_the_same_backchannel(make_worker, nc):
    await make_worker(barge_in_mode="vad")
    messages = await said_while_responding(nc, padded(TURNS / "right_03401e93_nohash_0.wav"))
    (interrupt,) = of_type(messages, "interrupt")
    assert interrupt.get("transcript") is None  # voice activity alone decided
    (final,) = [m for m in of_type(messages, "transcript") if m["is_final"]]
    assert final["backchannel"] is False


async def test_adaptive_endpoint_ends_a_finished_sentence_before_the_fixed_silence(make_worker, nc):
    """ "He could wait no longer." then silence: the turn check at 300 ms hears a finished
    sentence and its text becomes the final, 600 ms of silence before the fixed rule (900 ms
    here, so a check slowed down by a loaded machine still answers first) would."""
    samples = padded(SPEECH_DIR / "ls_1089-134691-0000.wav", after_s=2.0)
    finals = {}
    for mode in ("fixed", "adaptive"):
        _, stop, task = await make_worker(
            return_handles=True, endpoint_mode=mode, endpoint_silence_ms=900
        )
        session = sid()
        inbox = await Inbox.open(nc, session)
        await publish_pcm(nc, session, samples, sample_rate_hz=RATE, speed=1)
        messages = await inbox.until_closed(within_s=60)
        (finals[mode],) = [m for m in of_type(messages, "transcript") if m["is_final"]]
        stop.set()
        await task  # one worker at a time on the shared subject
    assert finals["adaptive"]["end_reason"] == finals["fixed"]["end_reason"] == "silence"
    assert "longer" in finals["adaptive"]["transcript"].lower()
    waited_less_s = finals["fixed"]["audio_end_s"] - finals["adaptive"]["audio_end_s"]
    assert waited_less_s == pytest.approx(0.6, abs=0.041)  # 900 ms vs 300 ms of silence


# ---------------------------------------------------------------- echo


def echo_mix(user: Path | None = None, at_s: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The assistant's voice (a real sentence) as played, and the microphone: that voice
    back 150 ms later at -8 dB, a little noise and, optionally, the user speaking over it."""
    assistant, _ = read_wav(SPEECH_DIR / "lj_LJ001-0006.wav")
    assistant = assistant.reshape(-1)
    played = np.concatenate([assistant, np.zeros(RATE, np.int16)])
    mic = np.zeros(played.size, np.float64)
    delay = int(0.15 * RATE)
    mic[delay:] += 0.4 * played[: played.size - delay]
    mic += np.random.default_rng(7).normal(0, 30, mic.size)
    if user is not None:
        words, _ = read_wav(user)
        start = int(at_s * RATE)
        mic[start : start + words.size] += words.reshape(-1)
    return played, np.clip(mic, -32768, 32767).astype(np.int16)


async def stream_with_playback(nc, played: np.ndarray | None, mic: np.ndarray) -> list[dict]:
    """A publisher that sends each 20 ms of what the speaker plays just before the 20 ms of
    microphone audio recorded meanwhile (order is what matters, not pace)."""
    session = sid()
    inbox = await Inbox.open(nc, session)
    subject = f"ai.voice.stream.{session}"
    pack = msgpack.packb
    await nc.publish(subject, pack({"type": "start", "sample_rate": RATE, "state": "responding"}))
    step = RATE // 50
    for offset in range(0, mic.size, step):
        if played is not None:
            audio = played[offset : offset + step].astype("<i2").tobytes()
            await nc.publish(subject, pack({"type": "playback", "audio": audio}))
        audio = mic[offset : offset + step].astype("<i2").tobytes()
        await nc.publish(subject, pack({"type": "chunk", "audio": audio}))
    await nc.publish(subject, pack({"type": "end"}))
    return await inbox.until_closed(within_s=60)


async def test_echo_of_the_assistant_interrupts_without_playback_and_not_with_it(worker, nc):
    played, mic = echo_mix()
    without = await stream_with_playback(nc, None, mic)
    assert of_type(without, "interrupt"), "the echo alone should barge in: the test is void"
    with_reference = await stream_with_playback(nc, played, mic)
    assert of_type(with_reference, "interrupt") == []
    assert of_type(with_reference, "error") == []


async def test_the_user_still_interrupts_over_the_cancelled_echo(worker, nc):
    # A real sentence over the echo. In double talk AEC3 dims the user too, and a single
    # short word survives it about three times in four (bench/echo.py); a sentence does.
    played, mic = echo_mix(SPEECH_DIR / "ls_1089-134691-0000.wav", at_s=3.0)
    messages = await stream_with_playback(nc, played, mic)
    assert len(of_type(messages, "interrupt")) == 1
    finals = " ".join(m["transcript"] for m in of_type(messages, "transcript") if m["is_final"])
    assert {"wait", "longer"} <= set(words_of(finals))
