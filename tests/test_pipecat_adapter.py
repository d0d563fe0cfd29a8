"""The pipecat adapter in a real pipecat pipeline, against the real worker and nats-server.

pipecat's own test helper (`pipecat.tests.utils.run_test`) runs a real `Pipeline` in a real
`PipelineWorker`: a source, our `NatsSTTService` and a sink that records every frame. Speech
clips go in as `InputAudioRawFrame`s of 20 ms at twice real time; what the worker publishes
must come out as pipecat's frames.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import numpy as np
import soxr
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    TranscriptionFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from stt_worker.config import load_settings
from stt_worker.integrations.pipecat import NatsSTTService
from stt_worker.runtime.connection import Reconnect
from stt_worker.runtime.publisher import read_wav
from tests.helpers import SPEECH_DIR, manifest_text
from tests.textnorm import wer

WER_BOUND = 0.2
FRAME_S = 0.02


def audio_frames(clip: str, rate: int, silence_s: float = 1.0) -> list[Frame]:
    """The clip at `rate` then `silence_s` of silence, as a live transport would send it:
    20 ms frames, here paced at twice real time."""
    samples, clip_rate = read_wav(SPEECH_DIR / clip)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    pcm = soxr.resample(mono.astype(np.float32), clip_rate, rate).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(int(rate * silence_s), np.int16)])
    step = int(rate * FRAME_S)
    frames: list[Frame] = []
    for at in range(0, len(pcm), step):
        frames.append(InputAudioRawFrame(pcm[at : at + step].tobytes(), rate, 1))
        frames.append(SleepFrame(sleep=FRAME_S / 2))
    return frames


def of(kind: type[Frame], frames: Sequence[Frame]) -> list:
    return [frame for frame in frames if isinstance(frame, kind)]


def finals_text(frames: Sequence[Frame]) -> str:
    return " ".join(frame.text for frame in of(TranscriptionFrame, frames))


async def run(service: NatsSTTService, frames: list[Frame], rate: int = 16_000):
    return await run_test(
        service,
        frames_to_send=frames,
        pipeline_params=PipelineParams(audio_in_sample_rate=rate),
        start_timeout=10,
    )


async def test_partials_and_finals_become_pipecat_transcription_frames(worker, nats_url):
    # 24 kHz in: the session's `start` must carry the pipeline's rate, or the worker would
    # hear the speech slowed down and get the words wrong.
    clip = "ls_1089-134691-0001.wav"
    service = NatsSTTService(nats=load_settings(nats_url=nats_url))
    down, up = await run(service, audio_frames(clip, 24_000), rate=24_000)

    interims, finals = of(InterimTranscriptionFrame, down), of(TranscriptionFrame, down)
    assert interims and finals
    assert down.index(interims[0]) < down.index(finals[0]), "a partial comes before the final"
    assert all(frame.finalized and frame.text for frame in finals)
    assert wer(manifest_text(clip), finals_text(down)) <= WER_BOUND, finals_text(down)
    assert of(InputAudioRawFrame, down), "audio passes through for the processors after it"
    assert not of(InterruptionFrame, down + up)
    assert not of(ErrorFrame, up)


async def test_speech_while_the_bot_speaks_interrupts_it(worker, nats_url):
    clip = "ls_1089-134691-0000.wav"
    service = NatsSTTService(nats=load_settings(nats_url=nats_url))
    frames = [BotStartedSpeakingFrame(), *audio_frames(clip, 16_000)]
    down, up = await run(service, frames)

    interruptions = of(InterruptionFrame, down)
    assert len(interruptions) == 1
    assert of(InterruptionFrame, up), "broadcast both ways, as pipecat's own interruptions"
    finals = of(TranscriptionFrame, down)
    # In vad mode the worker interrupts on the voice, before any words were transcribed.
    cut = down.index(interruptions[0])
    assert finals and cut < down.index(finals[0])
    assert not of(InterimTranscriptionFrame, down[:cut])
    assert wer(manifest_text(clip), finals_text(down)) <= WER_BOUND, finals_text(down)


async def test_a_worker_error_becomes_an_error_frame_and_the_pipeline_goes_on(worker, nats_url):
    # The worker refuses this `start` (`invalid_field`); the chunks then open its session
    # with the defaults, which fit this 16 kHz pipeline.
    clip = "ls_1089-134691-0000.wav"
    service = NatsSTTService(nats=load_settings(nats_url=nats_url), language="not a language")
    down, up = await run(service, audio_frames(clip, 16_000))

    errors = of(ErrorFrame, up)
    assert len(errors) == 1 and "invalid_field" in errors[0].error, errors
    assert not errors[0].fatal and service.is_usable
    assert wer(manifest_text(clip), finals_text(down)) <= WER_BOUND, finals_text(down)


async def test_a_session_the_worker_closed_is_opened_again_at_the_pipeline_rate(
    make_worker, nats_url
):
    # The worker evicts the session while the pipeline is quiet; the next audio must open a
    # new one with a `start` at 48 kHz, not fall to the 16 kHz a bare chunk gets (speech
    # three times too slow, which Whisper does not make out).
    await make_worker(session_idle_timeout_s=0.5)
    clip = "ls_1089-134691-0000.wav"
    service = NatsSTTService(nats=load_settings(nats_url=nats_url))
    speech = audio_frames(clip, 48_000)
    down, up = await run(service, [*speech, SleepFrame(sleep=1.5), *speech], rate=48_000)

    finals = of(TranscriptionFrame, down)
    assert len(finals) == 2, [frame.text for frame in finals]
    for frame in finals:
        assert wer(manifest_text(clip), frame.text) <= WER_BOUND, frame.text
    assert not of(ErrorFrame, up)


async def test_nats_out_of_reach_is_one_error_frame_and_the_pipeline_still_ends():
    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = NatsSTTService(
        nats=load_settings(nats_url=f"nats://127.0.0.1:{port}"),
        reconnect=Reconnect(attempts=1, wait_s=0.1, connect_timeout_s=1),
    )
    down, up = await run(service, audio_frames("ls_1089-134691-0000.wav", 16_000))

    errors = of(ErrorFrame, up)
    assert len(errors) == 1 and "cannot reach the stt-streaming worker" in errors[0].error
    assert not service.is_usable
    assert not of(TranscriptionFrame, down)
