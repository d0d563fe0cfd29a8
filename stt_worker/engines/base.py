"""The engine interface every speech engine implements, and what it returns.

An engine turns float32 16 kHz mono audio into a `Transcript`. Local engines run their
synchronous `_decode` on their own executor, one thread per parallel decode, so the event
loop never waits on inference.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stt_worker.errors import EngineError, SttError

Audio = npt.NDArray[np.float32]

# Whisper's silence rule (openai/whisper `transcribe`): both must hold to call it silence.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


def is_silence(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's own test for a window it decoded although nobody spoke."""
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """Per-call decoding options."""

    language: str | None = None
    # Text of the session's recent finals, to condition decoding (Whisper's initial prompt).
    prompt: str | None = None
    # A short window that loops may be decoded again at 30 s: worth it for a final, not for a
    # partial that the next partial or the final replaces anyway.
    full_window_retry: bool = True


@dataclass(frozen=True, slots=True)
class Segment:
    start_s: float
    end_s: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...] = ()
    language: str | None = None
    no_speech_prob: float = 0.0
    audio_s: float = 0.0
    inference_s: float = 0.0


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    model: str
    device: str
    extra: dict[str, str] = field(default_factory=dict)


class Engine(abc.ABC):
    """One speech engine. `transcribe` may be awaited from any number of tasks."""

    info: EngineInfo
    # How many `transcribe` calls make progress at once; the scheduler runs exactly this many
    # so that its finals-first order is the order work really starts in.
    parallelism: int = 1

    @abc.abstractmethod
    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        """Transcribe `audio`; raise `EngineError` (never a library exception) on failure."""

    @property
    def healthy(self) -> bool:
        """False while the engine's backend is failing; the scheduler then sheds partials."""
        return True

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once before the worker reports ready, so the first user waits for nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model and threads."""

    async def aclose(self) -> None:
        """Release from inside the running loop (network clients need their loop)."""
        self.close()


class LocalEngine(Engine):
    """An engine whose model runs in this process, on its own executor."""

    def __init__(self, parallelism: int = 1) -> None:
        self.parallelism = parallelism
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=parallelism, thread_name_prefix=f"engine-{type(self).__name__}"
        )

    @abc.abstractmethod
    def _decode(self, audio: Audio, options: DecodeOptions) -> Transcript:
        """Blocking decode; runs on the engine's executor thread only."""

    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, self._decode, audio, options)
        except SttError:
            raise
        except Exception as exc:  # library errors are mapped here, in one place
            raise EngineError(f"{self.info.name} failed: {exc!r}") from exc
        return _with_timing(result, audio, time.perf_counter() - started)

    def transcribe_blocking(self, audio: Audio, options: DecodeOptions) -> Transcript:
        """Synchronous decode for benchmarks and offline baselines (not for the event loop)."""
        started = time.perf_counter()
        return _with_timing(self._decode(audio, options), audio, time.perf_counter() - started)

    async def warmup(self) -> None:
        await self.transcribe(np.zeros(16_000, dtype=np.float32), DecodeOptions())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _with_timing(result: Transcript, audio: Audio, inference_s: float) -> Transcript:
    return Transcript(
        text=result.text,
        segments=result.segments,
        language=result.language,
        no_speech_prob=result.no_speech_prob,
        audio_s=len(audio) / 16_000,
        inference_s=inference_s,
    )
