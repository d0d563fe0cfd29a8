"""The VAD's framing and webrtcvad's start of stream (its first frames are not trusted); Silero
has its own tests in test_vad_silero.py."""

from __future__ import annotations

import numpy as np
import webrtcvad

from stt_worker.core.vad import FRAME_SAMPLES, WARMUP_FRAMES, VoiceActivityDetector, WebrtcDetector
from stt_worker.runtime.publisher import read_wav
from tests.helpers import SPEECH_DIR


def _room_noise(seed: int, rms: float, seconds: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.0, rms, int(16_000 * seconds)), -32768, 32767).astype(np.int16)


def test_webrtcvad_alone_hears_speech_in_the_first_frames_of_room_noise() -> None:
    # Why the warm-up exists: the library's own first frames of a -50 dBFS noise floor.
    noise = _room_noise(0, rms=100.0)
    vad = webrtcvad.Vad(2)
    step = FRAME_SAMPLES * 2
    data = noise.tobytes()
    speech = [vad.is_speech(data[i : i + step], 16_000) for i in range(0, len(data), step)]
    assert any(speech[:WARMUP_FRAMES])
    assert not any(speech[WARMUP_FRAMES:])


def test_room_noise_from_the_start_of_a_stream_is_not_speech() -> None:
    for seed in range(20):
        for rms in (8.0, 30.0, 100.0):
            frames = VoiceActivityDetector(WebrtcDetector(2)).push(_room_noise(seed, rms))
            assert not any(frames.speech), (seed, rms)


def test_the_warm_up_counts_frames_across_chunks_of_any_size() -> None:
    noise = _room_noise(1, rms=100.0)
    vad = VoiceActivityDetector(WebrtcDetector(2))
    speech: list[bool] = []
    for start in range(0, noise.size, 160):  # 10 ms pieces: half a frame each
        speech += vad.push(noise[start : start + 160]).speech
    assert len(speech) == noise.size // FRAME_SAMPLES
    assert not any(speech)


def test_speech_is_still_heard() -> None:
    samples, _ = read_wav(SPEECH_DIR / "jfk.wav")
    pcm = np.ascontiguousarray(samples[:, 0])
    speech = VoiceActivityDetector(WebrtcDetector(2)).push(pcm).speech
    assert sum(speech) > len(speech) / 3
