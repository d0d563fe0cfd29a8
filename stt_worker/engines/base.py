"""The engine interface every speech engine implements, and what it returns.

An engine turns float32 16 kHz mono audio into a `Transcript`. Local engines run their
synchronous `_decode` on their own executor, one thread per parallel decode, so the event
loop never waits on inference. `transcribe_batch` takes several sessions' jobs at once; an
engine with `batching` decodes them in one model call (`_decode_batch`), any other one by one.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import time
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stt_worker.core.errors import EngineError, SttError
from stt_worker.core.protocol import Task, Word

logger = logging.getLogger(__name__)

Audio = npt.NDArray[np.float32]

# Whisper's silence rule (openai/whisper `transcribe`): both must hold to call it silence.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
# Whisper's loop test (openai/whisper `compression_ratio_threshold`): text that zlib shrinks
# more than this repeats itself.
COMPRESSION_RATIO_THRESHOLD = 2.4
# A second, stricter pair for what Whisper's rule lets through: on non-speech the multilingual
# base model writes whole sentences at no_speech_prob 0.46-0.58 with avg_logprob -1.6 to -2.8
# (tests/test_nonspeech.py: breathing, a swelling tone; 0.46 on another install's breathing).
# Real speech in our corpus decodes at avg_logprob >= -1.12 wherever no_speech_prob passes
# 0.3, except 0.6 s onsets that give junk such as "1.". Set between the two with room on
# both sides (the measured windows are in tests/test_nonspeech.py, checked with a 0.1 margin):
# the nearest non-speech window is 0.16 above 0.3 and 0.28 below -1.3, the nearest speech
# window 0.18 above -1.3.
DOUBTFUL_NO_SPEECH_THRESHOLD = 0.3
VERY_LOW_LOG_PROB_THRESHOLD = -1.3
# What Whisper writes for a breath or a tone when it hears no words (measured: "Ah!", "Ahh!",
# "Ah...", "...Urgh... ...", "I", "you"), and text with no word at all ("...", "."). Dropped
# only when the decode is also unsure (avg_logprob < -1.0); tiny.en wrote "Ah!" for a breath
# at no_speech_prob 0.35, so the no-speech rules alone miss it.
NON_LEXICAL_TEXT = re.compile(r"((a+h+|u+r*g+h+|u+h+|h*m+|e+r+m*|i|you)( |$))*")
# Whisper's log-mel scaling is relative to the clip's own maximum, so it hears +-1 LSB dither
# as loudly as speech (base wrote "I am a man who is a man who is" at avg_logprob -0.18). No
# speech peaks this low: -70 dBFS is about 10 LSB of PCM16.
INAUDIBLE_PEAK_DBFS = -70.0


def is_silence(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's own test for a window it decoded although nobody spoke."""
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD


def compression_ratio(text: str) -> float:
    """How much zlib shrinks the text's UTF-8 bytes, as openai/whisper computes it."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def is_hallucination(
    text: str, no_speech_prob: float, avg_logprob: float, *, speech_heard: bool = False
) -> bool:
    """Whether a window's decoded `text` is Whisper writing words for audio without speech.

    Whisper's silence rule, then the same rule with a loop (compression ratio) standing in for
    low confidence, since Whisper would retry such a decode at a higher temperature; then a
    stricter pair for the base model, and lone non-lexical words decoded without confidence.
    With `speech_heard` (see `DecodeOptions`) the plain silence rule is skipped.
    """
    if not speech_heard and is_silence(no_speech_prob, avg_logprob):
        return True
    looping = compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
    if no_speech_prob > NO_SPEECH_THRESHOLD and looping:
        return True
    if no_speech_prob > DOUBTFUL_NO_SPEECH_THRESHOLD and avg_logprob < VERY_LOW_LOG_PROB_THRESHOLD:
        return True
    words = " ".join(re.findall(r"[\w']+", text.lower()))
    return avg_logprob < LOG_PROB_THRESHOLD and NON_LEXICAL_TEXT.fullmatch(words) is not None


def is_inaudible(audio: Audio) -> bool:
    """Whether `audio` is too quiet to hold speech (digital silence, dither)."""
    if len(audio) == 0:
        return True
    return float(np.max(np.abs(audio))) < 10 ** (INAUDIBLE_PEAK_DBFS / 20)


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """Per-call decoding options."""

    language: str | None = None
    # Text of the session's recent finals, to condition decoding (Whisper's initial prompt).
    prompt: str | None = None
    # A short window that loops may be decoded again at 30 s: worth it for a final, not for a
    # partial that the next partial or the final replaces anyway.
    full_window_retry: bool = True
    # With `full_window_retry`, also a short window's text that the hallucination rules blank
    # in doubt (not on noise) is decoded again at 30 s: a final's words would be lost. A
    # speculation or turn check turns it off: blanked so, it just leaves the final to decode.
    doubt_retry: bool = True
    # The caller's VAD already heard speech here (a barge-in probe). Whisper's plain silence
    # rule, made for windows of a long recording, then blanks short real words ("stop" over
    # cancelled echo: no_speech_prob 0.78, avg_logprob -1.04); the stricter rules still hold.
    speech_heard: bool = False
    # A cap on the tokens decoded: a probe decides on its first words, and a loop ("No? No?
    # ...") would otherwise run to the window's budget (200 ms instead of 40 on tiny.en).
    max_new_tokens: int | None = None
    # Report `Transcript.end_prob` (engines that can; the others leave it None).
    end_probability: bool = False
    # Report `Transcript.turn_prob`: Smart Turn's verdict on the same audio (turn checks in
    # `turn` mode; `engines/turn_check.TurnCheckEngine` adds it around any engine).
    turn_probability: bool = False
    # Translate into English instead of transcribing (multilingual models only).
    task: Task = "transcribe"
    # Report `Transcript.words`; the alignment costs decode time, so only when asked.
    word_timestamps: bool = False
    # Work that can wait (partials): decoded at a lower CPU priority where the engine can
    # (`engines/ct2_replicas`), so that it yields the CPU to finals.
    background: bool = False


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
    # How likely the decoder found it that the text ends where the audio does: the
    # probability of a sentence mark or end of text right after the last word. Whisper's
    # decoder is a language model too: "He could wait no longer" scores 0.90, "For a full
    # hour he had paced up and down waiting" (cut mid-sentence) 0.60, although both get a
    # full stop. None when not asked for or the engine cannot tell.
    end_prob: float | None = None
    # Smart Turn's probability that the speaker's turn is complete at the end of the audio
    # (prosody, not words). None when not asked for or not available.
    turn_prob: float | None = None
    # With `DecodeOptions.word_timestamps`: the text's words, timed from the start of the
    # audio given.
    words: tuple[Word, ...] = ()


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
    # Slots beside those for background calls (`DecodeOptions.background`: partials), which
    # the engine runs at a lower CPU priority (`engines/ct2_replicas`); 0: none, partials
    # share the `parallelism` slots.
    background_slots: int = 0
    # Requests to a backend that were retried (HTTP engine), for the metrics.
    retries: int = 0
    # Whether the model can translate and hear other languages than English; None when
    # the engine cannot tell (a remote backend).
    multilingual: bool | None = None

    # Whether `transcribe_batch` decodes several jobs in one model call (not one by one).
    batching: bool = False

    @abc.abstractmethod
    async def transcribe(self, audio: Audio, options: DecodeOptions) -> Transcript:
        """Transcribe `audio`; raise `EngineError` (never a library exception) on failure."""

    async def transcribe_batch(
        self, jobs: Sequence[tuple[Audio, DecodeOptions]]
    ) -> list[Transcript | SttError]:
        """Each job's transcript, or its error: one job's failure is its own. This default
        decodes them one by one; engines with `batching` decode them together."""
        outcomes: list[Transcript | SttError] = []
        for audio, options in jobs:
            try:
                outcomes.append(await self.transcribe(audio, options))
            except SttError as exc:
                outcomes.append(exc)
        return outcomes

    def batch_key(self, samples: int, options: DecodeOptions) -> Hashable:
        """Jobs whose keys are equal decode in one model call when batched (an engine that
        splits a batch by window size says so here, so the scheduler batches alike jobs)."""
        return ()

    @property
    def batch_engine(self) -> Engine | None:
        """The engine whose `transcribe_batch` decodes this one's plain jobs in one call (a
        wrapper names its inner engine), or None when it cannot batch."""
        return self if self.batching else None

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

    def __init__(self, parallelism: int = 1, background_slots: int = 0) -> None:
        self.parallelism = parallelism
        self.background_slots = background_slots
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=parallelism + background_slots,
            thread_name_prefix=f"engine-{type(self).__name__}",
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

    def _decode_batch(self, jobs: Sequence[tuple[Audio, DecodeOptions]]) -> list[Transcript]:
        """Blocking decode of several jobs at once (engines with `batching` override it)."""
        return [self._decode(audio, options) for audio, options in jobs]

    async def transcribe_batch(
        self, jobs: Sequence[tuple[Audio, DecodeOptions]]
    ) -> list[Transcript | SttError]:
        if not self.batching or len(jobs) < 2:
            return await super().transcribe_batch(jobs)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._decode_batch, jobs)
        except Exception as exc:
            # One bad job must not fail its companions: each is tried alone, failing alone.
            logger.warning("batch of %d failed (%r); decoding one by one", len(jobs), exc)
            return await super().transcribe_batch(jobs)
        # Each job took as long as the whole batch: that is how long its session waited.
        elapsed = time.perf_counter() - started
        return [
            _with_timing(r, audio, elapsed) for r, (audio, _) in zip(results, jobs, strict=True)
        ]

    def transcribe_blocking(self, audio: Audio, options: DecodeOptions) -> Transcript:
        """Synchronous decode for benchmarks and offline baselines (not for the event loop)."""
        started = time.perf_counter()
        return _with_timing(self._decode(audio, options), audio, time.perf_counter() - started)

    async def warmup(self) -> None:
        # Quiet noise, not zeros: digital silence is skipped before the model (`is_inaudible`).
        noise = np.random.default_rng(0).normal(0.0, 0.01, 16_000).astype(np.float32)
        await self.transcribe(noise, DecodeOptions())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _with_timing(result: Transcript, audio: Audio, inference_s: float) -> Transcript:
    return dataclasses.replace(result, audio_s=len(audio) / 16_000, inference_s=inference_s)
