"""Turn events (`turn_events`): the session on its own, no NATS.

As in tests/test_speculation.py: a fixed endpoint of 200 ms (10 frames), the speculation at
80 ms (4 frames) of pause. Its answer with words, in a pause with no speech since, is an
`eager_end_of_turn`; a voiced frame after it a `turn_resumed`.
"""

from __future__ import annotations

import dataclasses

import pytest

from stt_worker.core.protocol import EagerEndOfTurn, Transcription, TurnResumed
from stt_worker.core.session import Session
from tests.test_session import feed, jobs, published
from tests.test_speculation import SPECULATING, answer, speculation

EVENTS = dataclasses.replace(SPECULATING, turn_events=True)


def new_session(config=EVENTS) -> Session:
    return Session("s1", config, now=0.0, speaker_id="alice")


def sequences(actions) -> list[int]:
    kinds = (Transcription, EagerEndOfTurn, TurnResumed)
    return [message.sequence for message in published(actions, kinds)]


def test_a_speculation_with_words_is_an_eager_end_of_turn_and_the_final_confirms_it():
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    answered = answer(session, job, "Turn it off.")
    # The event first (an assistant starts its answer on it), then the text as a partial.
    eager, shown = published(answered, EagerEndOfTurn | Transcription)
    assert isinstance(eager, EagerEndOfTurn) and shown.is_partial
    assert (eager.type, eager.session_id, eager.speaker_id) == ("eager_end_of_turn", "s1", "alice")
    assert (eager.utterance_id, eager.text, eager.language) == (1, "Turn it off.", "en")
    assert eager.audio_start_s == 0.0 and eager.audio_end_s == pytest.approx(27 * 0.02)
    assert eager.inference_ms == 123.0 and eager.timestamp == 1.0
    ended = feed(session, "......")
    assert published(ended, TurnResumed) == []
    (final,) = published(ended, Transcription)
    assert final.is_final and final.transcript == eager.text
    # One numbering for the session's transcripts and turn events.
    assert sequences(answered) + sequences(ended) == [0, 1, 2]


def test_speech_after_an_eager_end_of_turn_resumes_the_turn_once():
    session = new_session()
    answer(session, speculation(feed(session, "s" * 23 + "....")), "Turn it")
    resumed = feed(session, "sss")
    (event,) = published(resumed, TurnResumed)
    assert (event.type, event.utterance_id, event.speaker_id) == ("turn_resumed", 1, "alice")
    # The first voiced frame after the pause (the 28th of the utterance) resumed it.
    assert event.audio_end_s == pytest.approx(28 * 0.02) and event.sequence == 2
    # A later pause brings a new eager event for the same utterance, which its final confirms.
    again = speculation(feed(session, "...."))
    (eager,) = published(answer(session, again, "Turn it off."), EagerEndOfTurn)
    assert (eager.utterance_id, eager.sequence) == (1, 3)
    ended = feed(session, "......")
    (final,) = published(ended, Transcription)
    assert final.is_final and final.transcript == "Turn it off." and final.sequence == 5
    assert published(ended, TurnResumed) == []
    # The next utterance's speech resumes nothing: its turn was settled by the final.
    assert published(feed(session, "s" * 10), TurnResumed) == []


def test_no_turn_events_unless_the_session_asks_for_them():
    session = new_session(SPECULATING)
    job = speculation(feed(session, "s" * 23 + "...."))
    (shown,) = published(answer(session, job, "Turn it"), EagerEndOfTurn | Transcription)
    assert isinstance(shown, Transcription) and shown.sequence == 0
    assert published(feed(session, "sss" + "." * 10), EagerEndOfTurn | TurnResumed) == []


def test_a_speculation_without_words_is_no_eager_end_of_turn():
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    assert answer(session, job, "") == []
    assert published(feed(session, "sss"), TurnResumed) == []  # no eager event to resume
    (final,) = jobs(feed(session, "." * 10), final=True)
    assert final.is_final


def test_speech_before_the_answer_makes_it_no_eager_end_of_turn():
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    assert published(feed(session, "ss"), TurnResumed) == []
    (shown,) = published(answer(session, job, "Turn it"), EagerEndOfTurn | Transcription)
    assert isinstance(shown, Transcription)  # still a partial of the speech so far


def test_an_answer_after_the_end_is_no_eager_end_of_turn():
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    feed(session, "......")  # the engine was busy: the final waits behind the speculation
    # Its text is the final now (`core/speculation.Speculation.late`), with no eager event.
    (final,) = published(answer(session, job, "Turn it off."), EagerEndOfTurn | Transcription)
    assert isinstance(final, Transcription) and final.is_final


def test_a_session_without_partials_still_gets_its_eager_end_of_turn():
    session = new_session(dataclasses.replace(EVENTS, partials=False))
    job = speculation(feed(session, "s" * 23 + "...."))
    (eager,) = published(answer(session, job, "Turn it off."), EagerEndOfTurn | Transcription)
    assert isinstance(eager, EagerEndOfTurn) and eager.sequence == 0
    (final,) = published(feed(session, "......"), Transcription)
    assert final.transcript == "Turn it off." and final.sequence == 1
