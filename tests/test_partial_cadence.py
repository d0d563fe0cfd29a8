"""When partials are asked for: the first after a short stretch of speech, then a steady
cadence of new audio, stretched by how long partials wait for the engine. Plain calls on
`PartialCadence` and `Session`, no I/O."""

from __future__ import annotations

import numpy as np

from stt_worker.core.cadence import PartialCadence
from stt_worker.core.jobs import Transcribe
from stt_worker.core.session import Session, SessionConfig, frames_of
from stt_worker.core.vad import FRAME_SAMPLES

CONFIG = SessionConfig(partial_first_ms=200, partial_interval_ms=300, preroll_ms=300)
FRAME_S = 0.02


def partial_ends(
    pattern: str, *, partial_wait_s: float = 0.0, answers: tuple[str, ...] = ("he could",)
) -> list[float]:
    """Where in the audio (s) each partial asked for while `pattern` streams ends: 's' a
    speech frame, '.' a silent one, one frame per chunk. Each partial is answered at once,
    the n-th with `answers[n]` (the last one repeated)."""
    session = Session("s1", CONFIG, now=0.0)
    ends = []
    for flag in pattern:
        chunk = frames_of(np.zeros(FRAME_SAMPLES, np.int16), [flag == "s"])
        for action in session.audio(chunk, now=0.0, partial_wait_s=partial_wait_s):
            if isinstance(action, Transcribe) and not action.job.is_final:
                ends.append(round(action.job.audio_end_s, 2))
                text = answers[min(len(ends), len(answers)) - 1]
                session.result(action.job, text, now=0.0, language="en", inference_s=0.05)
    return ends


def test_first_partial_comes_after_the_first_stretch_of_speech_not_the_interval():
    cadence = CONFIG.partial_cadence()
    assert not cadence.due(voiced_frames=9, samples=20 * 320, samples_at_last_partial=0)
    assert cadence.due(voiced_frames=10, samples=20 * 320, samples_at_last_partial=0)


def test_later_partials_follow_the_interval_of_new_audio():
    cadence = PartialCadence(first_voiced_frames=10, interval_samples=4800)
    assert not cadence.due(voiced_frames=40, samples=9599, samples_at_last_partial=4800)
    assert cadence.due(voiced_frames=40, samples=9600, samples_at_last_partial=4800)


def test_a_busy_engine_stretches_the_interval_by_the_partials_wait():
    cadence = PartialCadence(first_voiced_frames=10, interval_samples=4800)
    assert cadence.interval(0.5) == 4800 + 8000
    assert not cadence.due(
        voiced_frames=80, samples=4800 + 12799, samples_at_last_partial=4800, partial_wait_s=0.5
    )
    assert cadence.due(
        voiced_frames=80, samples=4800 + 12800, samples_at_last_partial=4800, partial_wait_s=0.5
    )
    assert cadence.interval(-1.0) == 4800  # a wait is never negative


def test_a_sentence_gets_its_first_partial_200_ms_into_speech_then_one_every_300_ms():
    # 0.5 s of silence, then 2 s of speech: onset at 0.5 s.
    ends = partial_ends("." * 25 + "s" * 100)
    assert ends[0] == 0.5 + 0.2
    assert np.allclose(np.diff(ends), 0.3)
    assert ends[-1] > 2.5 - 0.3


def test_under_load_partials_come_less_often_but_the_first_is_not_delayed():
    idle = partial_ends("." * 25 + "s" * 150)
    busy = partial_ends("." * 25 + "s" * 150, partial_wait_s=0.6)
    assert busy[0] == idle[0]
    assert np.allclose(np.diff(busy), 0.9)
    assert len(busy) < len(idle)


def test_a_pause_holds_the_next_partial_until_speech_resumes():
    # A 300 ms pause, shorter than the endpoint: the partial due in it waits for speech.
    ends = partial_ends("." * 25 + "s" * 20 + "." * 15 + "s" * 5)
    assert ends == [0.7, round((25 + 20 + 15 + 1) * FRAME_S, 2)]


def test_after_a_partial_without_a_word_the_next_comes_after_100_ms():
    # The first two partials hear no word ("", "n"): the next come 100 ms apart; from the
    # first with words on, 300 ms.
    ends = partial_ends("." * 25 + "s" * 60, answers=("", "n", "he", "he could"))
    assert ends[:4] == [0.7, 0.8, 0.9, 1.2]
    cadence = CONFIG.partial_cadence()
    assert cadence.interval(0.2, wordless=True) == 1600 + 3200
