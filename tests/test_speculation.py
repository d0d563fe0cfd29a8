"""Speculative finals (`STT_ENDPOINT_SPECULATE_MS`): the session on its own, no NATS.

Fixed endpoint of 200 ms (10 frames), speculation at 80 ms (4 frames) of pause: the text of
the speculation, asked early in the pause, is the final when the pause ends the utterance
with no speech since; anything else leaves the final to its own decode, as before.
"""

from __future__ import annotations

import dataclasses

import pytest

from stt_worker.core.jobs import Job, JobKind, Speculated
from stt_worker.core.protocol import Transcription
from stt_worker.core.session import Session
from stt_worker.runtime.decode_plan import EngineRole, Lane, plan
from tests.test_session import CONFIG, feed, jobs, published

SPECULATING = dataclasses.replace(CONFIG, speculate_ms=80, partial_first_ms=10_000)


def new_session(config=SPECULATING) -> Session:
    return Session("s1", config, now=0.0)


def speculation(actions):
    (job,) = [job for job in jobs(actions) if job.speculative]
    return job


def answer(session: Session, job, text: str, inference_s: float = 0.123):
    return session.result(job, text, now=1.0, language="en", inference_s=inference_s)


def test_a_pause_that_ends_the_utterance_publishes_the_speculation_as_its_final():
    session = new_session()
    asked = feed(session, "sss" + "s" * 20 + "....")
    job = speculation(asked)
    assert job.kind is JobKind.PARTIAL and not job.is_final
    # Decoded as the final would be, by the finals' engine, in the partials' line.
    decode = plan(job)
    assert decode.engine is EngineRole.FINAL and decode.lane is Lane.PARTIAL
    assert decode.options.full_window_retry and not decode.options.speech_heard
    assert not decode.options.doubt_retry  # a blank in doubt leaves it to the final
    # It hears the pause so far, then digital silence up to the endpoint's length (10
    # frames): Whisper's window follows the audio's length, and the final it stands for
    # hears that much pause. Its span is the audio received.
    assert len(job.pcm) == 23 + 10 and job.audio_end_s == pytest.approx(27 * 0.02)
    assert all(not frame.any() for frame in job.pcm[27:])
    (shown,) = published(answer(session, job, "Turn it off."), Transcription)
    assert shown.is_partial and shown.transcript == "Turn it off."
    ended = feed(session, "......")
    assert jobs(ended) == []  # no decode asked for the final
    (final,) = published(ended, Transcription)
    assert final.is_final and final.transcript == "Turn it off."
    assert final.end_reason == "silence" and final.inference_ms == 123.0
    assert final.audio_end_s == pytest.approx(33 * 0.02)  # the whole utterance and pause
    assert session.finals.pending == 0


def test_speech_after_the_speculation_leaves_the_final_to_its_own_decode():
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    answer(session, job, "Turn it")
    (final,) = jobs(feed(session, "ssss" + ".........."), final=True)
    assert final.kind is JobKind.FINAL and final.audio_end_s == pytest.approx(41 * 0.02)


def test_a_speculation_without_words_leaves_the_final_to_its_own_decode():
    # A short phrase can decode to nothing early in the pause and to its words with the
    # rest of it (JFK's "ask not"): no words is no answer.
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    assert answer(session, job, "") == []
    (final,) = jobs(feed(session, "......"), final=True)
    assert final.kind is JobKind.FINAL


def test_a_speculation_answered_after_the_end_is_the_final_its_own_decode_is_dropped():
    # Under load the speculation may still decode when its pause ends the utterance; the
    # final's decode waits behind it (one job per session), so its text is the final, sooner.
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    (final,) = jobs(feed(session, "......"), final=True)  # the engine was busy
    actions = answer(session, job, "Turn it off.")
    # Counted as a speculative final, against the final's job (its end times the latency);
    # `late`: the final was counted as asked for when it was queued.
    (speculated,) = [a for a in actions if isinstance(a, Speculated)]
    assert speculated.job is final and speculated.late and final.ended_at is not None
    (message,) = published(actions, Transcription)
    assert message.is_final and message.transcript == "Turn it off."
    assert message.end_reason == "silence" and message.inference_ms == 123.0
    assert message.audio_end_s == pytest.approx(final.audio_end_s)  # the final's own span
    assert session.finals.pending == 0
    # The final's own decode, when it comes, is not published again (nor its failure).
    assert session.result(final, "Turn it off.", now=1.5, language="en", inference_s=0.2) == []


def test_a_late_speculation_without_words_or_after_speech_leaves_the_final_to_its_decode():
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    (final,) = jobs(feed(session, "......"), final=True)
    assert answer(session, job, "") == []  # no words is no answer
    (message,) = published(
        session.result(final, "Turn it off.", now=1.5, language="en", inference_s=0.2),
        Transcription,
    )
    assert message.is_final and message.inference_ms == 200.0
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    feed(session, "ss")  # speech since it, then the client ends the session at once
    (final,) = jobs(session.end(now=1.0), final=True)
    assert published(answer(session, job, "Turn it"), Transcription) == []


def test_an_older_pause_s_late_speculation_is_not_the_final():
    session = new_session()
    first = speculation(feed(session, "s" * 23 + "...."))
    second = speculation(feed(session, "sss" + "...."))  # asked; the first still decodes
    (final,) = jobs(feed(session, "......"), final=True)  # and the second is dropped unstarted
    assert published(answer(session, first, "Turn"), Transcription) == []
    (message,) = published(
        session.result(final, "Turn it off.", now=1.5, language="en", inference_s=0.2),
        Transcription,
    )
    assert message.is_final and message.transcript == "Turn it off."
    assert second.audio_end_s > first.audio_end_s


def test_an_earlier_pause_s_speculation_is_not_the_final_of_a_later_one():
    session = new_session()
    first = speculation(feed(session, "s" * 23 + "...."))
    second = speculation(feed(session, "sss" + "...."))
    answer(session, first, "Turn")  # it heard only the speech before the first pause
    assert jobs(feed(session, "......"), final=True)  # the final is decoded
    assert second.audio_end_s > first.audio_end_s


def test_no_speculation_while_the_assistant_talks_or_when_turned_off():
    # Speech over the assistant, shorter than a barge-in (200 ms): a candidate, not a turn.
    session = Session("s1", SPECULATING, now=0.0, state="responding")
    assert not [job for job in jobs(feed(session, "s" * 7 + "....")) if job.speculative]
    off = new_session(dataclasses.replace(SPECULATING, speculate_ms=0))
    assert not [job for job in jobs(feed(off, "s" * 23 + "....")) if job.speculative]
    # At or past the endpoint it would come too late to matter.
    late = new_session(dataclasses.replace(SPECULATING, speculate_ms=200))
    assert late.config.speculate_frames == 0
    # The adaptive and turn modes decode their own checks in the pause.
    turn = dataclasses.replace(SPECULATING, endpoint_mode="turn")
    assert turn.speculate_frames == 0


def test_a_session_without_partials_still_speculates_but_shows_nothing():
    session = new_session(dataclasses.replace(SPECULATING, partials=False))
    job = speculation(feed(session, "s" * 23 + "...."))
    assert answer(session, job, "Turn it off.") == []
    (final,) = published(feed(session, "......"), Transcription)
    assert final.is_final and final.transcript == "Turn it off."


def ended_behind_its_speculation() -> tuple[Session, Job, Job]:
    """A session whose pause ended the utterance while its speculation still decoded: the
    session, the speculation and the final queued behind it."""
    session = new_session()
    job = speculation(feed(session, "s" * 23 + "...."))
    (final,) = jobs(feed(session, "......"), final=True)
    return session, job, final


def test_a_late_speculations_final_withdrawn_unrun_leaves_no_entry_behind():
    # The runtime took the final's queued decode out of line (`InferenceScheduler.withdraw`):
    # none will come back, so the entry, which holds the final's job and audio, goes now.
    session, job, final = ended_behind_its_speculation()
    answer(session, job, "Turn it off.")
    assert session.finals.returned(final.utterance_id) is None  # held: answered already
    session, job, final = ended_behind_its_speculation()
    answer(session, job, "Turn it off.")
    session.finals.withdrawn(final.utterance_id)
    assert session.finals.returned(final.utterance_id) is False  # no entry left
    assert session.finals.pending == 0 and session.closing is None


def test_a_final_still_to_be_published_keeps_its_entry_when_withdrawn():
    # Only an answered final's entry may go: one whose decode must still publish it stays.
    session, job, final = ended_behind_its_speculation()
    session.finals.withdrawn(final.utterance_id)
    assert session.finals.pending == 1
    (message,) = published(answer(session, job, "Turn it off."), Transcription)
    assert message.is_final  # the late speculation still answers for it
