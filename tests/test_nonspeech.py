"""Non-speech audio must never produce a transcript: silence, noise, tones, hum, breathing.

The set is generated here with numpy (fixed seeds, 16 kHz int16, 3-6 s each), so CI needs
no sox and no committed files. Each item goes through the engine directly (tiny.en and the
multilingual base, which hallucinates more readily) and through the worker over the real
nats-server, with VAD on and off.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from stt_worker.config import load_settings
from stt_worker.engines.base import DecodeOptions, Engine, is_hallucination
from stt_worker.engines.faster_whisper import FasterWhisperEngine
from stt_worker.runtime.publisher import publish_pcm
from tests.helpers import Inbox

SAMPLE_RATE_HZ = 16_000
FULL_SCALE = 32767


def _seconds(duration_s: float) -> np.ndarray:
    return np.arange(round(duration_s * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ


def _white(seed: int, duration_s: float) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(round(duration_s * SAMPLE_RATE_HZ))


def _coloured(seed: int, duration_s: float, exponent: float) -> np.ndarray:
    """White noise shaped to a 1/f**exponent power spectrum (pink: 1, brown: 2) by FFT."""
    spectrum = np.fft.rfft(_white(seed, duration_s))
    freqs_hz = np.fft.rfftfreq(round(duration_s * SAMPLE_RATE_HZ), 1 / SAMPLE_RATE_HZ)
    # Amplitude goes as f**(-exponent / 2); below 20 Hz held flat so DC does not dominate.
    spectrum *= np.maximum(freqs_hz, 20.0) ** (-exponent / 2)
    return np.fft.irfft(spectrum, n=round(duration_s * SAMPLE_RATE_HZ))


def _band_passed(signal: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    spectrum = np.fft.rfft(signal)
    freqs_hz = np.fft.rfftfreq(len(signal), 1 / SAMPLE_RATE_HZ)
    spectrum[(freqs_hz < low_hz) | (freqs_hz > high_hz)] = 0
    return np.fft.irfft(spectrum, n=len(signal))


def _at_rms_dbfs(signal: np.ndarray, rms_dbfs: float) -> np.ndarray:
    """Scale to an RMS level in dBFS (0 dBFS: a full-scale square wave)."""
    rms = np.sqrt(np.mean(signal**2))
    return signal / rms * 10 ** (rms_dbfs / 20)


def _breathing(seed: int, duration_s: float) -> np.ndarray:
    """Breath-like bursts: 300-2000 Hz noise, ~0.6 s on with soft edges, ~1 s off."""
    noise = _band_passed(_white(seed, duration_s), 300, 2000)
    t = _seconds(duration_s)
    phase_s = t % 1.6
    # A raised-cosine burst over the first 0.6 s of every 1.6 s.
    envelope = np.where(phase_s < 0.6, np.sin(np.pi * phase_s / 0.6) ** 2, 0.0)
    return noise * envelope


def _clicks(duration_s: float) -> np.ndarray:
    """A short decaying impulse every 300 ms."""
    signal = np.zeros(round(duration_s * SAMPLE_RATE_HZ))
    click = np.exp(-np.arange(32) / 6.0) * np.array([1, -1] * 16)
    for start in range(0, len(signal) - len(click), round(0.3 * SAMPLE_RATE_HZ)):
        signal[start : start + len(click)] = click
    return signal


def _to_pcm16(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal * FULL_SCALE), -FULL_SCALE, FULL_SCALE).astype(np.int16)


# name -> float signal in [-1, 1]; levels are RMS dBFS: -30 moderate, -12 loud.
NONSPEECH: dict[str, Callable[[], np.ndarray]] = {
    "digital_silence": lambda: np.zeros(4 * SAMPLE_RATE_HZ),
    # +-1 LSB triangular dither, as a converter's noise floor.
    "dither": lambda: (
        np.random.default_rng(1).triangular(-1, 0, 1, 4 * SAMPLE_RATE_HZ) / FULL_SCALE
    ),
    "white_moderate": lambda: _at_rms_dbfs(_white(2, 4), -30),
    "white_loud": lambda: _at_rms_dbfs(_white(3, 4), -12),
    "pink_moderate": lambda: _at_rms_dbfs(_coloured(4, 4, 1.0), -30),
    "pink_loud": lambda: _at_rms_dbfs(_coloured(5, 4, 1.0), -12),
    "brown": lambda: _at_rms_dbfs(_coloured(6, 4, 2.0), -20),
    "tone_440hz": lambda: 0.3 * np.sin(2 * np.pi * 440 * _seconds(3)),
    # 1 kHz with a slow 0.5 Hz swell, so its level keeps changing like a voice would.
    "tone_1khz_swell": lambda: (
        0.3 * np.sin(np.pi * 0.5 * _seconds(4)) ** 2 * np.sin(2 * np.pi * 1000 * _seconds(4))
    ),
    "hum_50hz": lambda: sum(
        0.2 / k * np.sin(2 * np.pi * 50 * k * _seconds(4) + k) for k in range(1, 6)
    ),
    "breathing": lambda: _at_rms_dbfs(_breathing(7, 5), -30),
    "clicks": lambda: 0.5 * _clicks(4),
}


def nonspeech_pcm16(name: str) -> np.ndarray:
    return _to_pcm16(NONSPEECH[name]())


def as_float32(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


ITEMS = sorted(NONSPEECH)

# Both decode paths the worker uses: finals (with the 30 s retries) and partials.
OPTIONS = {
    "final": DecodeOptions(),
    "partial": DecodeOptions(full_window_retry=False),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FasterWhisperEngine]:
    cache = tmp_path_factory.mktemp("model-cache")
    engine = FasterWhisperEngine(
        load_settings(whisper_model_size="base", whisper_model_cache_dir=str(cache))
    )
    yield engine
    engine.close()


@pytest.mark.parametrize("kind", sorted(OPTIONS))
@pytest.mark.parametrize("name", ITEMS)
def test_tiny_en_gives_no_text(engine: Engine, name: str, kind: str) -> None:
    result = engine.transcribe_blocking(as_float32(nonspeech_pcm16(name)), OPTIONS[kind])
    assert result.text == "", result


@pytest.mark.parametrize("kind", sorted(OPTIONS))
@pytest.mark.parametrize("name", ITEMS)
def test_base_gives_no_text(base: FasterWhisperEngine, name: str, kind: str) -> None:
    result = base.transcribe_blocking(as_float32(nonspeech_pcm16(name)), OPTIONS[kind])
    assert result.text == "", result


@pytest.mark.parametrize("enable_vad", [True, False], ids=["vad", "no_vad"])
@pytest.mark.parametrize("name", ITEMS)
async def test_worker_publishes_no_words(make_worker, nc, name: str, enable_vad: bool) -> None:
    await make_worker(enable_vad=enable_vad)
    session = f"t-{uuid.uuid4().hex[:10]}"
    inbox = await Inbox.open(nc, session)
    await publish_pcm(nc, session, nonspeech_pcm16(name), speed=0)
    messages = await inbox.until_closed(within_s=60)
    # An empty final after a partial is allowed by the protocol; words are not.
    words = [m["transcript"] for m in messages if m.get("type") == "transcript"]
    assert [w for w in words if w.strip()] == [], words
    assert [m["type"] for m in messages if m.get("type") != "transcript"] == ["session_closed"], (
        messages
    )


# ------------------------------------------------------------------ the rules' margins

# Every window of the set above that decoded text (text, no_speech_prob, avg_logprob), both
# models and both decode paths (the same figures), measured on one install with the raw
# scores `is_hallucination` was called with; plus the window that failed on a fresh clone
# (issue 20; its avg_logprob was not reported: base decodes breathing at -1.6 to -2.8, the
# nearest to speech is taken).
NONSPEECH_WINDOWS = [
    ("tiny.en/breathing", "I'm going to do that.", 0.6797, -1.5797),
    ("tiny.en/brown", "I'm gonna go to the ground.", 0.9338, -2.0368),
    ("tiny.en/clicks", "I'm going to go to the next one.", 0.857, -1.7035),
    ("tiny.en/hum_50hz", "You", 0.9515, -1.7687),
    ("tiny.en/pink_loud", "I'm gonna get it.", 0.9424, -2.2091),
    ("tiny.en/pink_moderate", "I'm gonna get a little bit more of a good one.", 0.9279, -2.0467),
    ("tiny.en/tone_1khz_swell", "...", 0.7456, -1.9119),
    ("tiny.en/tone_440hz", "You", 0.7576, -2.2706),
    ("tiny.en/white_loud", "I'm gonna go to the end of the video.", 0.9514, -2.0205),
    ("tiny.en/white_moderate", "I'm going to go to the ground.", 0.9274, -1.7993),
    ("base/breathing", "...", 0.5618, -2.7461),
    ("base/brown", "1.5%", 0.6869, -1.761),
    ("base/clicks", "1.0", 0.703, -2.0084),
    ("base/hum_50hz", "I", 0.8675, -2.311),
    ("base/pink_loud", "1.5m", 0.6991, -2.0502),
    ("base/pink_moderate", "1.5%", 0.7794, -1.6961),
    ("base/tone_1khz_swell", "I", 0.4997, -2.7314),
    ("base/tone_440hz", "you", 0.7506, -1.6818),
    ("base/white_loud", "1.5mm", 0.6688, -1.9186),
    ("base/white_moderate", "1.5%", 0.7283, -1.9363),
    ("base/breathing (fresh clone)", "...Urgh... ...", 0.46, -1.6),
]
# The real-speech windows nearest the rules (shared speech set, 0.6-1 s onsets as partials
# see them), which must keep their words.
SPEECH_WINDOWS = [
    ("tiny.en/ls_1089-134691-0001 0.6 s", "for a...", 0.3788, -1.1159),
    ("base/jfk 0.6 s", "and", 0.1391, -1.0422),
    ("base/noisy10db_lj_LJ001-0004 1 s", "produced", 0.4569, -0.9586),
    ("tiny.en/ls_1089-134691-0000 0.6 s", "Thank you.", 0.6312, -0.8989),
    ("tiny.en/long_lj_LJ001-0001_to_0005 0.6 s", "printing", 0.2865, -0.8876),
]
# How far a window may move toward the other side and still be judged the same: another
# install, another CPU or another library version moves these figures by a few hundredths.
MARGIN = 0.1


@pytest.mark.parametrize("where, text, no_speech_prob, avg_logprob", NONSPEECH_WINDOWS)
def test_nonspeech_windows_are_dropped_with_margin(where, text, no_speech_prob, avg_logprob):
    for shift in (0.0, MARGIN):
        # Toward speech: less sure it is silence, more confident in the words.
        assert is_hallucination(text, no_speech_prob - shift, avg_logprob + shift), (where, shift)


@pytest.mark.parametrize("where, text, no_speech_prob, avg_logprob", SPEECH_WINDOWS)
def test_speech_windows_keep_their_words_with_margin(where, text, no_speech_prob, avg_logprob):
    for shift in (0.0, MARGIN):
        # Toward non-speech: surer it is silence, less confident in the words.
        assert not is_hallucination(text, no_speech_prob + shift, avg_logprob - shift), (
            where,
            shift,
        )
