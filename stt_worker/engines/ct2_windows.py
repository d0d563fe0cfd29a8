"""A decoded window's result, and the transcript of consecutive windows (CTranslate2 engine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stt_worker.core.protocol import Word
from stt_worker.engines.base import Segment, Transcript
from stt_worker.engines.decoding import FRAMES_PER_S


@dataclass(frozen=True, slots=True)
class WindowResult:
    text: str
    avg_logprob: float
    no_speech_prob: float
    language: str
    end_prob: float | None = None
    words: tuple[Word, ...] = ()  # `word_timestamps`: from the window's start
    # The decoder wrote words that the hallucination rules then took away (`text` is empty).
    blanked: bool = False


def window_transcript(windows: Sequence[tuple[int, int, WindowResult]]) -> Transcript:
    """The transcript of consecutive windows, each (start frame, audio frames, result)."""
    segments = [
        Segment(
            start_s=start / FRAMES_PER_S,
            end_s=(start + frames) / FRAMES_PER_S,
            text=result.text,
            avg_logprob=result.avg_logprob,
            no_speech_prob=result.no_speech_prob,
        )
        for start, frames, result in windows
    ]
    results = [result for _, _, result in windows]
    return Transcript(
        text=" ".join(r.text for r in results if r.text),
        segments=tuple(s for s in segments if s.text),
        language=results[0].language,
        no_speech_prob=min(r.no_speech_prob for r in results),
        end_prob=results[-1].end_prob,
        words=tuple(
            _shifted(word, start / FRAMES_PER_S) for start, _, r in windows for word in r.words
        ),
    )


def _shifted(word: Word, offset_s: float) -> Word:
    return Word(word.word, word.start_s + offset_s, word.end_s + offset_s, word.probability)
