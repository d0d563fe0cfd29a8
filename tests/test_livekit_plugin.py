"""The LiveKit Agents plugin with livekit-agents' own classes, against the real worker and
nats-server.

Speech clips go into the plugin's `SpeechStream` as 20 ms `rtc.AudioFrame`s at twice real
time, as an agent's audio input would push them; the `SpeechEvent`s that come out must say
what the clip says, in LiveKit's order. `recognize()` (LiveKit's one-shot path, with its
retries and metrics) gets a whole clip as one buffer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest
import soxr
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions
from livekit.agents.stt import SpeechEvent, SpeechEventType, STTError

from stt_worker.config import load_settings
from stt_worker.integrations.livekit import NatsSpeechStream, NatsSTT
from stt_worker.runtime.connection import Reconnect
from stt_worker.runtime.publisher import read_wav
from stt_worker.tools.extras import extra_for
from tests.helpers import REPO, SPEECH_DIR, manifest_text
from tests.textnorm import wer

WER_BOUND = 0.2
FRAME_S = 0.02


def clip_pcm(clip: str, rate: int, silence_s: float = 1.0) -> np.ndarray:
    samples, clip_rate = read_wav(SPEECH_DIR / clip)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    pcm = soxr.resample(mono.astype(np.float32), clip_rate, rate).astype(np.int16)
    return np.concatenate([pcm, np.zeros(int(rate * silence_s), np.int16)])


def frame_of(pcm: np.ndarray, rate: int) -> rtc.AudioFrame:
    return rtc.AudioFrame(pcm.tobytes(), rate, 1, len(pcm))


async def stream_clip(stream: NatsSpeechStream, clip: str, rate: int) -> list[SpeechEvent]:
    """Push the clip as 20 ms frames at twice real time, end the input and collect every
    event the stream emits until it ends."""
    pcm = clip_pcm(clip, rate)
    step = int(rate * FRAME_S)

    async def push() -> None:
        for at in range(0, len(pcm), step):
            stream.push_frame(frame_of(pcm[at : at + step], rate))
            await asyncio.sleep(FRAME_S / 2)
        stream.end_input()

    pushing = asyncio.create_task(push())
    events = [event async for event in stream]
    await pushing
    return events


def kinds(events: list[SpeechEvent]) -> list[SpeechEventType]:
    return [event.type for event in events]


def of(kind: SpeechEventType, events: list[SpeechEvent]) -> list[SpeechEvent]:
    return [event for event in events if event.type == kind]


def finals_text(events: list[SpeechEvent]) -> str:
    return " ".join(e.alternatives[0].text for e in of(SpeechEventType.FINAL_TRANSCRIPT, events))


async def test_a_stream_emits_interims_then_the_final_between_speech_onset_and_end(
    worker, nats_url
):
    # 24 kHz in: the `start` must carry the frames' rate, or the worker would hear the speech
    # slowed down and get the words wrong. A LiveKit language name is taken down to Whisper's
    # code: as given, it would get the whole `start` refused, rate included.
    clip = "ls_1089-134691-0001.wav"
    plugin = NatsSTT(nats=load_settings(nats_url=nats_url), language="English")
    errors: list[STTError] = []
    plugin.on("error", errors.append)
    async with plugin.stream() as stream:
        events = await stream_clip(stream, clip, 24_000)

    order = kinds(events)
    assert order[0] == SpeechEventType.START_OF_SPEECH, order
    first_final = order.index(SpeechEventType.FINAL_TRANSCRIPT)
    assert SpeechEventType.INTERIM_TRANSCRIPT in order[:first_final], "interims come first"
    assert order[first_final - 1] == SpeechEventType.RECOGNITION_USAGE
    assert order[first_final + 1] == SpeechEventType.END_OF_SPEECH
    assert wer(manifest_text(clip), finals_text(events)) <= WER_BOUND, finals_text(events)

    final = of(SpeechEventType.FINAL_TRANSCRIPT, events)[0].alternatives[0]
    assert final.language == "en"
    # Times are seconds of the stream's audio: the clip is 5.4 s, then a second of silence.
    assert 0 <= final.start_time < 1.0 < 5.0 < final.end_time <= 6.5, final
    # Usage before the final counts the audio sent until then (the clip and some of the
    # silence after it); the rest is billed as the stream ends: all of it, once.
    usages = [e.recognition_usage for e in of(SpeechEventType.RECOGNITION_USAGE, events)]
    assert 5.4 <= usages[0].audio_duration < 6.4, usages
    sent_s = len(clip_pcm(clip, 24_000)) / 24_000
    assert sum(u.audio_duration for u in usages) == pytest.approx(sent_s, abs=0.03), usages
    assert errors == []


async def test_speech_over_the_agent_starts_on_the_workers_interrupt(worker, nats_url):
    # While the agent speaks the worker decides barge-in; its `interrupt` comes on the voice
    # (vad mode), before any words, and is LiveKit's START_OF_SPEECH.
    clip = "ls_1089-134691-0000.wav"
    plugin = NatsSTT(nats=load_settings(nats_url=nats_url))
    plugin.set_agent_speaking(True)
    async with plugin.stream() as stream:
        events = await stream_clip(stream, clip, 16_000)

    order = kinds(events)
    assert order[0] == SpeechEventType.START_OF_SPEECH, order
    assert events[0].speech_start_time is None  # an interrupt carries no audio time
    assert order.count(SpeechEventType.START_OF_SPEECH) == 1
    assert wer(manifest_text(clip), finals_text(events)) <= WER_BOUND, finals_text(events)


async def test_recognize_returns_the_buffers_finals_with_word_times(worker, nats_url):
    clip = "ls_1089-134691-0001.wav"
    plugin = NatsSTT(nats=load_settings(nats_url=nats_url), options={"word_timestamps": True})
    assert plugin.capabilities.aligned_transcript == "word"
    event = await plugin.recognize(frame_of(clip_pcm(clip, 48_000), 48_000))

    assert event.type == SpeechEventType.FINAL_TRANSCRIPT
    data = event.alternatives[0]
    assert wer(manifest_text(clip), data.text) <= WER_BOUND, data.text
    assert data.words and " ".join(data.words) == data.text
    assert all(a.end_time <= b.start_time + 1e-6 for a, b in pairwise(data.words))
    assert 0 < data.confidence <= 1


async def test_a_refused_option_is_a_recoverable_error_and_the_words_still_come(worker, nats_url):
    clip = "ls_1089-134691-0000.wav"
    plugin = NatsSTT(nats=load_settings(nats_url=nats_url), options={"endpoint_silence_ms": -5})
    errors: list[STTError] = []
    plugin.on("error", errors.append)
    event = await plugin.recognize(frame_of(clip_pcm(clip, 16_000), 16_000))

    assert len(errors) == 1 and errors[0].recoverable, errors
    assert "invalid_field" in str(errors[0].error)
    assert wer(manifest_text(clip), event.alternatives[0].text) <= WER_BOUND


async def test_nats_out_of_reach_ends_the_stream_with_a_connection_error():
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plugin = NatsSTT(
        nats=load_settings(nats_url=f"nats://127.0.0.1:{port}"),
        reconnect=Reconnect(attempts=1, wait_s=0.1, connect_timeout_s=1),
    )
    errors: list[STTError] = []
    plugin.on("error", errors.append)
    stream = plugin.stream(conn_options=APIConnectOptions(max_retry=0, timeout=5))
    stream.push_frame(frame_of(np.zeros(320, np.int16), 16_000))
    with pytest.raises(APIConnectionError, match="stt-streaming worker"):
        async for _ in stream:
            pass
    await stream.aclose()
    assert len(errors) == 1 and not errors[0].recoverable


def test_without_the_extra_the_import_says_which_extra_to_install():
    code = "import sys\nsys.modules['livekit'] = None\nimport stt_worker.integrations.livekit\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 1
    assert "ModuleNotFoundError: stt_worker.integrations.livekit needs the `livekit` extra" in (
        done.stderr
    )
    assert "pip install 'stt-streaming[livekit]'" in done.stderr
    assert extra_for(ModuleNotFoundError(name="livekit.agents")) == "livekit"
