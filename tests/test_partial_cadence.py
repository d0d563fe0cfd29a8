"""When partials are asked for: the first after a short stretch of speech, then a steady
cadence of new audio, a lead sooner than the interval while partials do not wait, stretched
by how long they wait for the engine. Plain calls on `PartialCadence` and `Session`, no
I/O."""

from __future__ import annotations

import numpy as np

from stt_worker.config import load_settings
from stt_worker.core.cadence import WORDLESS_STEP_SAMPLES, PartialCadence
from stt_worker.core.jobs import Transcribe
from stt_worker.core.session import Session, SessionConfig, frames_of
from stt_worker.core.vad import FRAME_SAMPLES
from stt_worker.runtime.sessions import session_config

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


def test_a_sentence_gets_its_first_partial_200_ms_into_speech_then_one_every_200_ms():
    # 0.5 s of silence, then 2 s of speech: onset at 0.5 s. The interval (300 ms) less the
    # lead (100 ms): a decode up to 100 ms slower than the last still lands within 300 ms.
    ends = partial_ends("." * 25 + "s" * 100)
    assert ends[0] == 0.5 + 0.2
    assert np.allclose(np.diff(ends), 0.2)
    assert ends[-1] > 2.5 - 0.2


def test_the_lead_asks_sooner_only_while_partials_do_not_wait():
    cadence = PartialCadence(first_voiced_frames=10, interval_samples=4800, lead_samples=1600)
    plain = PartialCadence(first_voiced_frames=10, interval_samples=4800)
    assert cadence.interval(0.0) == 4800 - 1600
    # It fades as partials wait, and once they wait as long as the lead (100 ms) the step is
    # the plain interval stretched by the wait: a loaded engine gets no more partials.
    assert cadence.interval(0.05) == 4800 - 800 + 800
    for wait_s in (0.1, 0.3, 1.5):
        assert cadence.interval(wait_s) == plain.interval(wait_s)
    steps = [cadence.interval(wait_s) for wait_s in np.linspace(0.0, 0.5, 51)]
    assert steps == sorted(steps)  # a longer wait never asks for partials sooner


def test_the_lead_never_makes_a_step_shorter_than_a_wordless_one():
    cadence = PartialCadence(first_voiced_frames=10, interval_samples=2400, lead_samples=2400)
    assert cadence.interval(0.0) == WORDLESS_STEP_SAMPLES


def test_partial_lead_ms_0_keeps_a_partial_every_interval_of_new_audio():
    settings = load_settings(nats_url="nats://unused:4222", partial_lead_ms=0)
    assert session_config(settings).partial_cadence().interval(0.0) == 4800
    assert load_settings(nats_url="nats://unused:4222").partial_lead_ms == 100


def test_under_load_partials_come_less_often_but_the_first_is_not_delayed():
    idle = partial_ends("." * 25 + "s" * 150)
    busy = partial_ends("." * 25 + "s" * 150, partial_wait_s=0.6)
    assert busy[0] == idle[0]
    assert np.allclose(np.diff(busy), 0.9)
    assert len(busy) < len(idle)


def test_a_pause_holds_the_next_partial_until_speech_resumes():
    # A 300 ms pause, shorter than the endpoint: the partial due in it (at 0.9 s) waits for
    # speech.
    ends = partial_ends("." * 25 + "s" * 15 + "." * 15 + "s" * 5)
    assert ends == [0.7, round((25 + 15 + 15 + 1) * FRAME_S, 2)]


def test_after_a_partial_without_a_word_the_next_comes_after_100_ms():
    # The first two partials hear no word ("", "n"): the next come 100 ms apart; from the
    # first with words on, 200 ms (the interval less the lead).
    ends = partial_ends("." * 25 + "s" * 60, answers=("", "n", "he", "he could"))
    assert ends[:4] == [0.7, 0.8, 0.9, 1.1]
    cadence = CONFIG.partial_cadence()
    assert cadence.interval(0.2, wordless=True) == 1600 + 3200
