"""Silero VAD: the speech detector behind `STT_VAD_ENGINE=silero`.

The ONNX model ships in the pipecat-ai wheel (`pipecat/audio/vad/data/silero_vad.onnx`); it is
read from there without importing pipecat, never downloaded, and refused unless its SHA-256 is
the pinned one (`weights`). One `InferenceSession` serves
the whole process (one thread each way: the worker's parallelism is its sessions); each
session's `SileroDetector` carries its own recurrent state.

At 16 kHz the model scores 512-sample (32 ms) windows, each preceded by the last 64 samples of
the window before it, and returns the probability that the window holds speech.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

from stt_worker.core.audio import SAMPLE_RATE_HZ, Pcm16
from stt_worker.core.errors import ModelNotFoundError
from stt_worker.core.vad import FRAME_SAMPLES, Hysteresis
from stt_worker.engines.weights import SILERO_VAD, verified

WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
_STATE_SHAPE = (2, 1, 128)
(_MODEL_FILE,) = SILERO_VAD.files

Float32 = npt.NDArray[np.float32]


def model_path() -> Path:
    """Where the installed pipecat-ai wheel keeps the model; `ModelNotFoundError` if absent."""
    try:
        return SILERO_VAD.root() / _MODEL_FILE.path
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"Silero VAD: {exc}; or set STT_VAD_ENGINE=webrtc") from exc


class SileroModel:
    """The loaded model; stateless itself, so every session shares it."""

    def __init__(self, path: Path) -> None:
        verified(path, _MODEL_FILE, SILERO_VAD)  # ModelIntegrityError unless the pinned file
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # Windows are tiny and fixed in size: ORT's growing arena would only hold memory.
        options.enable_cpu_mem_arena = False
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._rate = np.array(SAMPLE_RATE_HZ, dtype=np.int64)

    def score(self, window: Float32, state: Float32) -> tuple[float, Float32]:
        """Speech probability of one window (context included, shape [1, 576]) and the next
        recurrent state."""
        probability, next_state = self._session.run(
            None, {"input": window, "state": state, "sr": self._rate}
        )
        return float(probability[0, 0]), next_state


@functools.cache
def shared_model() -> SileroModel:
    """The process's one model, loaded on first use."""
    return SileroModel(model_path())


class SileroDetector:
    """One stream's frames labelled by Silero, with hysteresis on its probabilities.

    A frame takes the decision of the latest window covering it, the one that holds its last
    sample, so it is held until that window is complete: 0-28 ms (14 ms on average) after it
    arrives, as 20 ms frames and 32 ms windows fall in and out of step. webrtcvad labels each
    frame as it arrives, but on its 20 ms alone; Silero's decision on the same audio is at
    most one window behind the stream either way.
    """

    # About 100 us a window, scored on one chunk in three of 20 ms: off the event loop.
    inline = False

    def __init__(self, model: SileroModel, threshold: float) -> None:
        self._model = model
        self._gate = Hysteresis(threshold)
        self._state: Float32 = np.zeros(_STATE_SHAPE, dtype=np.float32)
        # The context the next window is scored with, then the samples not yet scored.
        self._pending: Float32 = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._unlabelled = 0  # samples received and not yet labelled: whole frames

    def label(self, frames: Pcm16) -> list[bool]:
        if frames.size:
            scaled = frames.astype(np.float32) / 32768.0
            self._pending = np.concatenate([self._pending, scaled])
            self._unlabelled += frames.size
        labels: list[bool] = []
        while self._pending.size >= CONTEXT_SAMPLES + WINDOW_SAMPLES:
            labels += self._score_window()
        return labels

    def flush(self) -> list[bool]:
        """The held frames, their last window padded with zeros."""
        if not self._unlabelled:
            return []
        short = CONTEXT_SAMPLES + WINDOW_SAMPLES - self._pending.size
        self._pending = np.concatenate([self._pending, np.zeros(short, dtype=np.float32)])
        return self._score_window()

    def _score_window(self) -> list[bool]:
        window = self._pending[: CONTEXT_SAMPLES + WINDOW_SAMPLES]
        probability, self._state = self._model.score(window[np.newaxis, :], self._state)
        speech = self._gate.update(probability)
        self._pending = self._pending[WINDOW_SAMPLES:]
        # Frames that end at or before the window's end; the rest wait for the next window.
        unscored = self._pending.size - CONTEXT_SAMPLES
        ready = max(self._unlabelled - unscored, 0) // FRAME_SAMPLES
        self._unlabelled -= ready * FRAME_SAMPLES
        return [speech] * ready
