"""Silero VAD, the default speech detector: the real model on real speech and on the generated
non-speech set, its 32 ms windows mapped onto the 20 ms frame grid, its hysteresis, and the
setting that chooses between it and webrtcvad."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from pydantic import ValidationError

from bench.speech_marks import speech_span
from stt_worker.config import load_settings
from stt_worker.core.errors import ModelNotFoundError
from stt_worker.core.vad import (
    FRAME_MS,
    FRAME_SAMPLES,
    Hysteresis,
    VoiceActivityDetector,
    WebrtcDetector,
    label_stream,
)
from stt_worker.engines import silero_vad
from stt_worker.engines.silero_vad import SileroDetector, shared_model
from stt_worker.runtime.pipeline import speech_detectors
from stt_worker.runtime.publisher import read_wav
from tests.helpers import SPEECH_DIR
from tests.test_nonspeech import NONSPEECH, nonspeech_pcm16


def _silero() -> SileroDetector:
    return SileroDetector(shared_model(), 0.5)


def _clip(name: str) -> np.ndarray:
    samples, _ = read_wav(SPEECH_DIR / name)
    return np.ascontiguousarray(samples[:, 0])


@pytest.mark.parametrize("name", ["ls_1089-134691-0000.wav", "lj_LJ001-0008.wav"])
def test_speech_is_found_where_the_sentence_is(name: str) -> None:
    pcm = _clip(name)
    span = speech_span(pcm, 16_000)
    speech = np.array(label_stream(_silero(), pcm))
    starts_s = np.arange(speech.size) * FRAME_MS / 1000
    inside = (starts_s >= span.start_s) & (starts_s + FRAME_MS / 1000 <= span.end_s)
    # Measured: every frame of these clean sentences (no pause in them) is speech.
    assert speech[inside].mean() > 0.9
    voiced_s = starts_s[speech]
    # Measured: the first voiced frame within 20 ms of the energy onset, the last 70-110 ms
    # after the energy end (the model's hangover).
    assert span.start_s - 0.1 <= voiced_s[0] <= span.start_s + 0.15
    assert span.end_s - 0.1 <= voiced_s[-1] + FRAME_MS / 1000 <= span.end_s + 0.3


def test_digital_silence_and_a_pause_hold_no_speech() -> None:
    pcm = _clip("conv_2utt_1p5s.wav")  # 0.5 s, a sentence, 1.5 s of digital zero, a sentence
    speech = label_stream(_silero(), np.concatenate([np.zeros(16_000, np.int16), pcm]))
    assert not any(speech[:75])  # the 1 s of zeros and the clip's own 0.5 s
    span = speech_span(_clip("ls_1089-134691-0000.wav"), 16_000)
    gap = slice(round((1.5 + span.end_s + 0.3) * 50), round((1.5 + 2.085 + 1.5) * 50))
    assert any(speech) and not any(speech[gap])


@pytest.mark.parametrize("name", sorted(NONSPEECH))
def test_noise_tones_and_breathing_are_not_speech(name: str) -> None:
    speech = label_stream(_silero(), nonspeech_pcm16(name))
    # Measured: no frame of any item. webrtcvad takes 97% of loud white noise for speech.
    assert sum(speech) <= len(speech) * 0.02, name


def test_room_noise_from_the_first_frame_is_not_speech() -> None:
    # What WARMUP_FRAMES covers for webrtcvad; Silero needs no such thing.
    for seed in range(5):
        for rms in (8.0, 100.0, 1000.0):
            noise = np.random.default_rng(seed).normal(0.0, rms, 32_000)
            assert not any(label_stream(_silero(), noise.astype(np.int16))), (seed, rms)


@pytest.mark.parametrize("chunk", [7, FRAME_SAMPLES, 512, 1_600, 100_000])
def test_any_chunking_gives_the_same_frames_in_order(chunk: int) -> None:
    pcm = _clip("ls_1089-134686-0001.wav")
    vad = VoiceActivityDetector(_silero())
    pieces = [vad.push(pcm[i : i + chunk]) for i in range(0, pcm.size, chunk)] + [vad.flush()]
    speech = sum((p.speech for p in pieces), ())
    samples = np.concatenate([p.samples for p in pieces])
    assert speech == label_stream(_silero(), pcm)
    assert len(speech) == -(-pcm.size // FRAME_SAMPLES) and samples.size == len(speech) * 320
    assert np.array_equal(samples[: pcm.size], pcm) and not samples[pcm.size :].any()


def test_a_frame_waits_only_for_the_window_that_ends_it() -> None:
    vad = VoiceActivityDetector(_silero())
    out = [len(vad.push(np.zeros(FRAME_SAMPLES, np.int16)).speech) for _ in range(9)]
    # Windows end at 512, 1024, ... samples, frames at 320, 640, ...: a frame comes out with
    # the first window that reaches its end; the last one waits for the flush.
    assert out == [0, 1, 0, 2, 1, 0, 2, 2, 0]
    assert len(vad.flush().speech) == 1


def test_hysteresis_ends_speech_only_well_below_the_threshold() -> None:
    gate = Hysteresis(0.5)
    decisions = [gate.update(p) for p in (0.45, 0.6, 0.4, 0.36, 0.34, 0.45, 0.5)]
    assert decisions == [False, True, True, True, False, False, True]
    with pytest.raises(ValueError):
        Hysteresis(0.15)


def test_the_setting_chooses_the_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().vad_engine == "silero"
    assert isinstance(speech_detectors(load_settings())(), SileroDetector)
    monkeypatch.setenv("STT_VAD_ENGINE", "webrtc")
    assert isinstance(speech_detectors(load_settings())(), WebrtcDetector)
    with pytest.raises(ValidationError):
        load_settings(vad_threshold=0.1)  # speech would never end: 0.1 - 0.15 < 0


def test_a_missing_model_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pipecat-ai"):
        silero_vad.model_path()
