"""Smart Turn v3.2: the audio end-of-turn model, on ONNX Runtime.

The model (pipecat-ai's, BSD-2) hears the last 8 s of a speaker's audio as Whisper log-mel
features and answers how likely it is that they finished their turn, from prosody alone:
no words. The ONNX file ships inside the installed `pipecat-ai` wheel; it is found there
without importing pipecat (whose import pulls in its whole framework), never downloaded, and
refused unless its SHA-256 is the pinned one (`weights`).

Inputs as the model was trained on them (pipecat's `local_smart_turn_v3.py`): float audio
in [-1, 1] at 16 kHz, the last 8 s kept, a shorter clip padded with zeros at its start, the
padded window normalised to zero mean and unit variance, then an 80-bin Slaney log-mel of
800 frames (25 ms Hann windows every 10 ms, centred with reflected edges), clamped 8 decades
below its peak and scaled by (x + 4) / 4. The output `logits` is already a sigmoid: the
probability that the turn is complete.

`SmartTurn.probability` is blocking (about 30 ms on one core): callers run it off the loop.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.errors import ModelNotFoundError
from stt_worker.engines.weights import SMART_TURN, verified

(_MODEL_FILE,) = SMART_TURN.files
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE_HZ
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 80
FRAMES = WINDOW_SAMPLES // HOP  # 800: the centred STFT's one extra frame is dropped

Floats = npt.NDArray[np.float64]


def model_path() -> Path:
    """The Smart Turn ONNX file inside the installed pipecat-ai package."""
    try:
        return SMART_TURN.root() / _MODEL_FILE.path
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"Smart Turn v3.2: {exc}; or set STT_ENDPOINT_MODE=fixed or adaptive"
        ) from exc


_MEL_LOG_STEP = np.log(6.4) / 27.0  # Slaney: above 1 kHz, 27 mels per factor 6.4


def _slaney_mel(hz: Floats) -> Floats:
    """Hertz to Slaney mels: linear to 1 kHz (15 mels), logarithmic above."""
    above = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / _MEL_LOG_STEP
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, above)


def _slaney_hz(mel: Floats) -> Floats:
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * _MEL_LOG_STEP))


@cache
def _mel_matrix() -> Floats:
    """(N_MELS, N_FFT // 2 + 1) triangular filters, each scaled to unit area (Slaney)."""
    edges = _slaney_hz(np.linspace(0.0, _slaney_mel(np.array(SAMPLE_RATE_HZ / 2.0)), N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE_HZ / 2.0, N_FFT // 2 + 1)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - low) / (centre - low)
    falling = (high - bins[None, :]) / (high - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    return triangles * (2.0 / (high - low))


@cache
def _hann() -> Floats:
    """The periodic Hann window (as torch's `hann_window`), not the symmetric one."""
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


def log_mel(samples: Pcm16) -> npt.NDArray[np.float32]:
    """Smart Turn's (N_MELS, FRAMES) input for audio ending now."""
    audio = samples[-WINDOW_SAMPLES:].astype(np.float32) / 32768.0
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[WINDOW_SAMPLES - audio.size :] = audio  # short clips: silence before, never after
    window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    padded = np.pad(window.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:FRAMES]
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2
    mel = np.log10(np.maximum(_mel_matrix() @ power.T, 1e-10))
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """One loaded Smart Turn model; `probability` may be called from any one thread at a
    time per instance (ONNX Runtime sessions are thread-safe, but one intra-op thread each)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort  # only deployments that run the turn model pay for it

        verified(path, _MODEL_FILE, SMART_TURN)  # ModelIntegrityError unless the pinned file

        options = ort.SessionOptions()
        # One core per check: turn checks are short and many sessions share the CPU.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name  # "input_features"

    def probability(self, samples: Pcm16) -> float:
        """The probability that the speaker's turn is complete, for 16 kHz mono audio that
        ends now (the utterance with its trailing pause). Blocking."""
        features = log_mel(samples)[None, :, :]
        (output,) = self._session.run(None, {self._input: features})
        return float(np.asarray(output).reshape(-1)[0])


@cache
def load_smart_turn() -> SmartTurn:
    """Smart Turn v3.2 from the installed pipecat-ai package, loaded once per process (its
    ONNX session is safe to share between threads)."""
    return SmartTurn(model_path())
