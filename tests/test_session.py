"""The session state machine on its own: frames and events in, actions out, no NATS."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stt_worker.core.errors import EngineError
from stt_worker.core.jobs import Close, Job, JobKind, Publish, Transcribe
from stt_worker.core.phases import Phase
from stt_worker.core.protocol import Error, Interrupt, SessionClosed, Transcription
from stt_worker.core.session import Session, SessionConfig, frames_of
from stt_worker.core.streaming import Partial
from stt_worker.core.turns import Commands
from stt_worker.core.utterance import Utterance
from stt_worker.core.vad import FRAME_SAMPLES
from stt_worker.runtime.decode_plan import plan

CONFIG = SessionConfig(
    endpoint_silence_ms=200,
    partial_first_ms=400,  # with all-speech patterns from sample 0: every 400 ms of audio
    partial_interval_ms=400,
    partial_lead_ms=0,  # no lead: partials exactly every 400 ms of audio
    speech_start_ms=60,
    preroll_ms=100,
    interrupt_min_speech_ms=200,
    max_utterance_samples=16_000 * 3,
    chunk_timeout_s=2.0,
    idle_timeout_s=10.0,
)


def frames(pattern: str):
    """'s' = a speech frame, '.' = a silent frame, 20 ms each; samples carry the frame index."""
    samples = np.repeat(np.arange(len(pattern), dtype=np.int16), FRAME_SAMPLES)
    return frames_of(samples, [c == "s" for c in pattern])


def feed(session: Session, pattern: str, now: float = 0.0):
    actions = []
    for index in range(len(pattern)):
        actions += session.audio(frames(pattern[index]), now=now)
    return actions


def jobs(actions, *, final: bool | None = None) -> list[Job]:
    found = [a.job for a in actions if isinstance(a, Transcribe)]
    return [j for j in found if final is None or j.is_final == final]


def published(actions, kind):
    return [a.message for a in actions if isinstance(a, Publish) and isinstance(a.message, kind)]


def new_session(config: SessionConfig = CONFIG, **kwargs) -> Session:
    return Session("s1", config, now=0.0, **kwargs)


def test_silence_alone_asks_for_nothing():
    session = new_session()
    assert feed(session, "." * 200) == []
    assert session.end(now=1.0) == [
        Publish(SessionClosed("s1", "end", 1.0, None, 0)),
        Close("end"),
    ]


def test_utterance_ends_after_trailing_silence_with_preroll():
    session = new_session()
    actions = feed(session, "....." + "sss" + "s" * 10 + "." * 10)
    (final,) = jobs(actions, final=True)
    # Pre-roll: the 100 ms before the first voiced frame are kept, so no phoneme is cut.
    assert final.audio_start_s == 0.0
    assert final.audio_end_s == 28 * 0.02
    assert final.has_voice_activity and final.end_reason == "silence"
    assert sum(p.size for p in final.pcm) == 28 * FRAME_SAMPLES


def test_isolated_voiced_frames_do_not_start_speech():
    session = new_session()
    assert jobs(feed(session, "s...s...s..." * 20)) == []


def test_partials_follow_the_cadence_and_results_get_sequences():
    session = new_session()
    actions = feed(session, "s" * 50)  # 1 s of speech, partial every 400 ms
    partials = jobs(actions, final=False)
    assert len(partials) == 2
    first = session.result(partials[0], "hello", now=1.0, language="en", inference_s=0.1)
    second = session.result(partials[1], "hello world", now=1.1, language="en", inference_s=0.1)
    messages = published(first + second, Transcription)
    assert [m.sequence for m in messages] == [0, 1]
    assert all(m.is_partial and not m.is_final and m.end_reason is None for m in messages)
    # Two hypotheses agree on "hello": it is stable from the second partial on.
    assert [m.stable_chars for m in messages] == [0, len("hello")]
    (final,) = jobs(feed(session, "." * 10), final=True)
    out = published(
        session.result(final, "hello world.", now=2.0, language="en", inference_s=0.2),
        Transcription,
    )
    assert [(m.sequence, m.is_final, m.transcript, m.stable_chars) for m in out] == [
        (2, True, "hello world.", len("hello world."))
    ]


def test_the_same_text_again_is_published_at_the_cadence_with_its_stable_words():
    session = new_session()
    partials = jobs(feed(session, "s" * 70), final=False)  # 0.4, 0.8, 1.2 s
    assert len(partials) == 3
    out = []
    for job in partials:
        out += session.result(job, "hello world", now=1.5, language="en", inference_s=0.1)
    # The second agrees with the first: its words are now stable, which the client hears;
    # the third repeats it an interval of speech later, so the client hears the words stand.
    assert [m.stable_chars for m in published(out, Transcription)] == [0, 11, 11]


def test_a_repeated_partial_waits_for_half_an_interval_of_audio_more_stability_does_not():
    utterance = Utterance(utterance_id=1, start_sample=0, phase=Phase.SPEAKING)
    said, surer = Partial("hello world", 0), Partial("hello world", 6)
    assert utterance.shows(said, 0.4, repeat_after_s=0.15)
    assert not utterance.shows(said, 0.5, repeat_after_s=0.15)  # 100 ms more: held back
    assert utterance.shows(surer, 0.52, repeat_after_s=0.15)  # more of it stable: at once
    assert not utterance.shows(surer, 0.6, repeat_after_s=0.15)
    assert utterance.shows(surer, 0.67, repeat_after_s=0.15)  # 150 ms after the last shown
    # Exactly the step, however the float sum rounds (2.15 - 2.0 < 0.15 in binary).
    utterance.shows(surer, 2.0, repeat_after_s=0.15)
    assert utterance.shows(surer, 2.15, repeat_after_s=0.15)


def test_no_partial_is_asked_for_during_a_pause():
    session = new_session()
    assert len(jobs(feed(session, "s" * 20), final=False)) == 1  # the first, at 0.4 s
    assert jobs(feed(session, "s" * 12 + "." * 8), final=False) == []  # due, but paused
    (partial,) = jobs(feed(session, "s"), final=False)  # speech resumes: now it comes
    assert partial.audio_end_s == pytest.approx(41 * 0.02)


def test_partial_arriving_after_its_final_is_dropped():
    session = new_session()
    (partial,) = jobs(feed(session, "s" * 25), final=False)
    (final,) = jobs(feed(session, "." * 10), final=True)
    assert session.result(partial, "late", now=1.0, language=None, inference_s=0.1) == []
    assert published(
        session.result(final, "on time", now=1.0, language=None, inference_s=0.1), Transcription
    )


def test_empty_final_is_published_only_when_a_partial_promised_text():
    session = new_session()
    (final,) = jobs(feed(session, "sss" + "." * 10), final=True)
    assert session.result(final, "", now=1.0, language=None, inference_s=0.1) == []
    session2 = new_session()
    (partial,) = jobs(feed(session2, "s" * 25), final=False)
    session2.result(partial, "uh", now=1.0, language=None, inference_s=0.1)
    (final2,) = jobs(feed(session2, "." * 10), final=True)
    (message,) = published(
        session2.result(final2, "", now=1.0, language=None, inference_s=0.1), Transcription
    )
    assert message.is_final and message.transcript == ""


def test_barge_in_interrupts_first_then_transcribes_the_speech():
    session = new_session(state="responding")
    actions = feed(session, "...." + "s" * 30 + "." * 10)
    kinds = [type(a).__name__ for a in actions]
    assert "Publish" in kinds
    first_interrupt = kinds.index("Publish")
    assert isinstance(actions[first_interrupt].message, Interrupt)
    assert all(not isinstance(a, Transcribe) for a in actions[:first_interrupt])
    assert len(published(actions, Interrupt)) == 1
    assert session.state == "listening"
    (final,) = jobs(actions, final=True)
    assert final.audio_start_s <= 4 * 0.02  # the barge-in words, pre-roll included
    # Where its utterance began, for elastic mode to tell a replayed interrupt apart.
    assert actions[first_interrupt].start_sample == round(final.audio_start_s * 16_000)


def test_short_noise_while_responding_is_not_an_interrupt():
    session = new_session(state="responding")
    actions = feed(session, "...." + "sssss" + "." * 20)  # 100 ms < 200 ms threshold
    assert actions == []
    assert session.state == "responding"


WORDS = dataclasses.replace(CONFIG, barge_in_words=True, probe_step_ms=100)


def probes(actions) -> list[Job]:
    return [j for j in jobs(actions) if j.kind is JobKind.BARGE_IN_PROBE]


def test_word_mode_probes_the_speech_and_a_backchannel_does_not_interrupt():
    session = new_session(WORDS, state="responding")
    actions = feed(session, "...." + "s" * 12)  # 200 ms voiced: the interrupt threshold
    (probe,) = probes(actions)
    assert not published(actions, Interrupt) and not probe.is_final
    assert feed(session, "s" * 3) == []  # one probe at a time
    assert session.result(probe, "Yeah.", now=1.0, language=None, inference_s=0.05) == []
    assert session.state == "responding"
    # More speech: probed again after each 100 ms step; still a backchannel.
    (again,) = probes(feed(session, "s" * 5))
    assert session.result(again, "Mm-hmm, okay.", now=1.1, language=None, inference_s=0.05) == []
    # It ends: transcribed and published, marked as a backchannel, and the turn stays.
    (final,) = jobs(feed(session, "." * 10), final=True)
    assert final.kind is JobKind.CANDIDATE_FINAL and final.end_reason == "silence"
    out = session.result(final, "Mm-hmm, okay.", now=1.5, language=None, inference_s=0.05)
    (message,) = published(out, Transcription)
    assert message.backchannel and message.transcript == "Mm-hmm, okay."
    assert not published(out, Interrupt) and session.state == "responding"


def test_word_mode_interrupts_when_the_probe_holds_real_words():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    out = session.result(probe, "Stop, wait.", now=1.0, language=None, inference_s=0.05)
    (interrupt,) = published(out, Interrupt)
    assert interrupt.transcript == "Stop, wait." and interrupt.utterance_id == probe.utterance_id
    (publish,) = [a for a in out if isinstance(a, Publish)]
    assert publish.start_sample == round(probe.audio_start_s * 16_000)
    assert session.state == "listening"
    # From here on it is the user's turn: partials and an ordinary final.
    actions = feed(session, "s" * 30 + "." * 10)
    (final,) = jobs(actions, final=True)
    assert final.kind is not JobKind.CANDIDATE_FINAL
    message = published(
        session.result(final, "Stop, wait.", now=2.0, language=None, inference_s=0.1), Transcription
    )[0]
    assert not message.backchannel


def test_word_mode_judges_a_word_cut_off_mid_speech_only_after_a_pause():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    assert probe.trailing_silence_s == 0
    # "Ri-" of "right", heard as "Run" while the word goes on: not judged yet.
    assert session.result(probe, "Run.", now=1.0, language=None, inference_s=0.05) == []
    (paused,) = probes(feed(session, "...."))  # 80 ms of pause: the word is whole
    assert paused.trailing_silence_s == pytest.approx(0.08)
    assert session.result(paused, "Right.", now=1.1, language=None, inference_s=0.05) == []
    assert session.state == "responding"
    # A pause that starts while a probe is out is probed again as soon as that one returns.
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    assert probes(feed(session, "....")) == []
    (again,) = probes(session.result(probe, "Sto", now=1.0, language=None, inference_s=0.05))
    out = session.result(again, "Stop.", now=1.1, language=None, inference_s=0.05)
    assert published(out, Interrupt)


def test_word_mode_a_command_interrupts_at_once_even_as_an_unfinished_last_word():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    out = session.result(probe, "Stop", now=1.0, language=None, inference_s=0.05)
    assert published(out, Interrupt) and session.state == "listening"
    # "Hold on" is a phrase: both words, in order.
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    assert session.result(probe, "Hold", now=1.0, language=None, inference_s=0.05) == []
    (again,) = probes(feed(session, "s" * 5))
    assert published(
        session.result(again, "Hold on", now=1.1, language=None, inference_s=0.05), Interrupt
    )
    # Without command phrases, the same unfinished "Stop" waits to be whole.
    plain = dataclasses.replace(WORDS, commands=Commands(()))
    session = new_session(plain, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    assert session.result(probe, "Stop", now=1.0, language=None, inference_s=0.05) == []


def test_word_mode_ignores_a_probe_with_more_words_than_its_audio_can_hold():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    assert probe.audio_s < 0.5
    heard = "I'm not gonna be a good one."  # Whisper, not the user
    assert session.result(probe, heard, now=1.0, language=None, inference_s=0.05) == []
    assert session.state == "responding"


def test_word_mode_late_words_in_the_final_still_interrupt_and_noise_publishes_nothing():
    session = new_session(WORDS, state="responding")
    (probe,) = probes(feed(session, "...." + "s" * 12))
    final_actions = feed(session, "." * 10)  # ends before the probe answers
    (final,) = jobs(final_actions, final=True)
    assert session.result(probe, "Stop", now=1.0, language=None, inference_s=0.05) == []
    out = session.result(final, "Stop talking.", now=1.1, language=None, inference_s=0.05)
    assert [type(a.message).__name__ for a in out if isinstance(a, Publish)] == [
        "Interrupt",
        "Transcription",
    ]
    # Speech that transcribes to nothing (a cough) publishes nothing at all.
    session = new_session(WORDS, state="responding")
    (final,) = jobs(feed(session, "...." + "s" * 12 + "." * 10), final=True)
    assert session.result(final, "", now=1.0, language=None, inference_s=0.05) == []


ADAPTIVE = dataclasses.replace(
    CONFIG, endpoint_mode="adaptive", endpoint_min_ms=200, endpoint_max_ms=600
)


def turn_checks(actions) -> list[Job]:
    return [j for j in jobs(actions) if j.kind is JobKind.TURN_CHECK]


def test_adaptive_endpoint_ends_a_finished_sentence_at_the_short_pause_with_its_text():
    config = dataclasses.replace(ADAPTIVE, endpoint_silence_ms=400)
    session = new_session(config)
    actions = feed(session, "s" * 30 + "." * 10)  # 200 ms of pause: checked, not ended
    (check,) = turn_checks(actions)
    assert not jobs(actions, final=True) and check.trailing_silence_s == pytest.approx(0.2)
    feed(session, "...")  # silence goes on while the check decodes
    out = session.result(check, "He could wait no longer.", now=5.0, language="en", inference_s=0.1)
    (final,) = published(out, Transcription)
    assert final.is_final and final.end_reason == "silence"
    assert final.transcript == "He could wait no longer."
    assert not session.in_utterance  # no second decode: the turn is over
    assert feed(session, "." * 30) == []


def test_adaptive_endpoint_waits_longer_after_a_phrase_that_is_not_finished():
    config = dataclasses.replace(ADAPTIVE, endpoint_silence_ms=400)
    session = new_session(config)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    assert (
        session.result(
            check, "For a full hour he had paced up and", now=5.0, language=None, inference_s=0.1
        )
        == []
    )
    assert jobs(feed(session, "." * 15), final=True) == []  # past the usual 400 ms
    (final,) = jobs(feed(session, "." * 5), final=True)  # 600 ms: the longer wait
    assert final.end_reason == "silence"
    # Speech that resumes during a check makes that check moot.
    session = new_session(config)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    feed(session, "sss")
    assert session.result(check, "He could.", now=5.0, language=None, inference_s=0.1) == []
    assert session.in_utterance


def test_adaptive_endpoint_follows_the_decoders_end_probability_over_punctuation():
    config = dataclasses.replace(ADAPTIVE, endpoint_silence_ms=400)
    text = "For a full hour he had paced up and down waiting."  # a full stop mid-sentence

    def checked(end_prob: float) -> tuple[Session, list]:
        session = new_session(config)
        (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
        out = session.result(
            check, text, now=5.0, language=None, inference_s=0.1, end_prob=end_prob
        )
        return session, out

    session, out = checked(0.9)  # likely over: ends now, with that text
    assert published(out, Transcription)[0].transcript == text
    session, out = checked(0.6)  # cannot tell: the fixed 400 ms rule
    assert out == [] and jobs(feed(session, "." * 10), final=True)
    session, out = checked(0.3)  # likely mid-sentence: the long wait
    assert out == [] and jobs(feed(session, "." * 15), final=True) == []
    assert jobs(feed(session, "." * 5), final=True)


def test_adaptive_endpoint_a_late_turn_check_still_gives_the_final_sooner():
    """Under load the check (at 200 ms) can outlast the fixed endpoint (400 ms): the final
    is asked for as usual, and whichever of the two answers first is published, once."""
    config = dataclasses.replace(ADAPTIVE, endpoint_silence_ms=400)
    text = "He could wait no longer."
    for check_first in (True, False):
        session = new_session(config)
        (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
        (final,) = jobs(feed(session, "." * 10), final=True)  # the fixed endpoint
        first, second = (check, final) if check_first else (final, check)
        out = session.result(first, text, now=5.0, language=None, inference_s=0.1)
        (message,) = published(out, Transcription)
        assert message.is_final and message.end_reason == "silence"
        assert message.utterance_id == final.utterance_id and message.transcript == text
        assert session.result(second, text, now=5.1, language=None, inference_s=0.1) == []
        assert session.finals.pending == 0
    # A check that fails leaves the final to its own decode.
    session = new_session(config)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 10))
    (final,) = jobs(feed(session, "." * 10), final=True)
    assert session.failed(check, EngineError("boom"), now=5.0) == []
    out = session.result(final, text, now=5.1, language=None, inference_s=0.1)
    assert published(out, Transcription)[0].transcript == text


def test_no_interrupt_detection_means_responding_audio_is_ignored():
    config = dataclasses.replace(CONFIG, enable_interrupt_detection=False)
    session = new_session(config, state="responding")
    assert feed(session, "s" * 60 + "." * 20) == []
    session.change_state("listening", now=1.0)
    assert jobs(feed(session, "s" * 10 + "." * 20), final=True)


def test_switch_to_responding_finalises_the_open_utterance():
    session = new_session()
    feed(session, "s" * 10)
    actions = session.change_state("responding", now=1.0)
    assert [j.end_reason for j in jobs(actions, final=True)] == ["responding"]
    assert session.state == "responding"


def test_end_flushes_then_closes_after_the_final_is_published():
    session = new_session(speaker_id="spk")
    feed(session, "s" * 10)
    actions = session.end(now=1.0)
    (final,) = jobs(actions, final=True)
    assert not any(isinstance(a, Close) for a in actions)
    out = session.result(final, "bye", now=2.0, language=None, inference_s=0.1)
    assert isinstance(out[-1], Close)
    (closed,) = published(out, SessionClosed)
    assert closed.utterances == 1 and closed.speaker_id == "spk"
    (message,) = published(out, Transcription)
    assert message.speaker_id == "spk" and message.end_reason == "end"


def test_failed_final_publishes_an_error_and_still_closes():
    session = new_session()
    feed(session, "s" * 10)
    (final,) = jobs(session.end(now=1.0), final=True)
    out = session.failed(final, EngineError("boom"), now=2.0)
    (error,) = published(out, Error)
    assert error.code == "engine_error" and "boom" in error.message
    assert isinstance(out[-1], Close)


def test_long_speech_is_cut_in_a_pause_near_the_bound_without_losing_audio():
    session = new_session()
    # 2.8 s of speech, a 60 ms pause, more speech: the bound (3 s) falls after the pause.
    pattern = "s" * 140 + "..." + "s" * 100 + "." * 10
    finals = jobs(feed(session, pattern), final=True)
    assert [j.end_reason for j in finals] == ["size", "silence"]
    assert finals[0].audio_end_s == pytest.approx(141 * 0.02)  # mid-pause, not at the bound
    assert finals[1].audio_start_s == finals[0].audio_end_s
    covered = sum(sum(p.size for p in j.pcm) for j in finals)
    assert covered == len(pattern) * FRAME_SAMPLES  # every frame in exactly one final


def test_no_partial_is_asked_for_within_one_interval_of_the_length_bound():
    session = new_session()
    partials = jobs(feed(session, "s" * 149), final=False)  # bound: 150 frames
    # One every 0.4 s; the one due at 2.8 s is skipped: the cut at 3.0 s comes first.
    assert [round(j.audio_end_s, 2) for j in partials] == [0.4, 0.8, 1.2, 1.6, 2.0, 2.4]


def test_without_a_pause_the_cut_takes_the_quietest_frame():
    session = new_session()
    actions = []
    for index in range(160):
        level = 5 if index == 140 else 3000  # one quiet frame inside the search window
        samples = np.full(FRAME_SAMPLES, level, dtype=np.int16)
        actions += session.audio(frames_of(samples, [True]), now=0.0)
    (final,) = jobs(actions, final=True)
    assert final.audio_end_s == pytest.approx(140 * 0.02)


def test_chunk_timeout_and_idle_eviction():
    session = new_session()
    feed(session, "s" * 10, now=0.0)
    assert session.tick(now=1.0) == []
    (final,) = jobs(session.tick(now=2.5), final=True)
    assert final.end_reason == "timeout"
    assert session.tick(now=20.0) == []  # evicted, but its final is still due
    closing = session.result(final, "text", now=21.0, language=None, inference_s=0.1)
    assert published(closing, Transcription)[0].transcript == "text"
    assert closing[-1] == Close("idle")


def test_without_vad_everything_is_buffered_and_cut_by_size():
    config = dataclasses.replace(CONFIG, enable_vad=False)
    session = new_session(config)
    actions = feed(session, "." * 160)  # 3.2 s of silence, bound 3 s
    (final,) = jobs(actions, final=True)
    assert not final.has_voice_activity
    assert final.audio_start_s == 0.0 and final.audio_end_s == 3.0
    assert len(jobs(session.end(now=1.0), final=True)) == 1


def test_context_carries_recent_finals_as_the_prompt_within_its_bound():
    session = new_session(dataclasses.replace(CONFIG, context_chars=20))
    (first,) = jobs(feed(session, "s" * 10 + "." * 10), final=True)
    assert first.prompt is None
    session.result(first, "the quick brown fox jumps", now=1.0, language=None, inference_s=0.1)
    (second,) = jobs(feed(session, "s" * 10 + "." * 10), final=True)
    assert second.prompt == "brown fox jumps"  # whole words, at most 20 characters
    assert jobs(feed(new_session(), "s" * 10 + "." * 10), final=True)[0].prompt is None


def test_first_unsettled_sample_follows_the_preroll_the_utterance_and_its_final():
    """Durable mode acknowledges audio before this point: it must never pass audio whose
    result is still to come."""
    session = new_session()
    feed(session, "." * 50)  # silence: only the pre-roll window may still join speech
    window = 5 + 3 + 2  # frames: pre-roll 100 ms, onset 60 ms, and the onset's 2 of slack
    assert session.first_unsettled_sample == session.samples_seen - window * FRAME_SAMPLES
    feed(session, "sss")
    start = session.first_unsettled_sample
    assert 0 < start < 50 * FRAME_SAMPLES  # the utterance, pre-roll included
    (final,) = jobs(feed(session, "s" * 10 + "." * 10), final=True)
    # Ended, but its final is not answered yet: its audio stays unsettled.
    assert session.first_unsettled_sample == start == round(final.audio_start_s * 16_000)
    session.result(final, "hello", now=1.0, language="en", inference_s=0.1)
    assert session.first_unsettled_sample > final.audio_end_s * 16_000 - FRAME_SAMPLES


def test_empty_audio_does_not_keep_an_utterance_open():
    session = new_session()
    feed(session, "s" * 10, now=0.0)
    empty = frames("")
    for now in (1.0, 1.9, 2.8):  # an empty chunk more often than the chunk timeout
        assert session.audio(empty, now=now) == []
    (final,) = jobs(session.tick(now=2.9), final=True)
    assert final.end_reason == "timeout"
    assert not session.in_utterance


TURN = dataclasses.replace(
    CONFIG, endpoint_mode="turn", turn_check_ms=80, turn_recheck_ms=300, turn_max_ms=600
)


def checked(session: Session, check: Job, text: str, end_prob: float, turn_prob: float):
    return session.result(
        check,
        text,
        now=5.0,
        language="en",
        inference_s=0.1,
        end_prob=end_prob,
        turn_prob=turn_prob,
    )


def test_turn_mode_ends_a_finished_turn_at_the_first_short_pause_with_the_checks_text():
    session = new_session(TURN)
    actions = feed(session, "s" * 30 + "." * 4)  # 80 ms of pause: checked
    (check,) = turn_checks(actions)
    assert check.trailing_silence_s == pytest.approx(0.08) and not jobs(actions, final=True)
    # The check decodes past the fixed 200 ms silence: the check, not the clock, decides.
    assert jobs(feed(session, "." * 12), final=True) == []
    (final,) = published(
        checked(session, check, "He could wait no longer.", 0.9, 0.95), Transcription
    )
    assert final.is_final and final.transcript == "He could wait no longer."
    assert not session.in_utterance and feed(session, "." * 40) == []


def test_turn_mode_holds_a_turn_that_smart_turn_hears_unfinished_and_checks_it_again():
    session = new_session(TURN)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 4))
    assert checked(session, check, "He hoped there would be stew.", 0.9, 0.05) == []
    held = feed(session, "." * 11)  # 300 ms of pause: past the fixed 200 ms, checked again
    (again,) = turn_checks(held)
    assert not jobs(held, final=True) and again.trailing_silence_s == pytest.approx(0.3)
    assert checked(session, again, "He hoped there would be stew.", 0.9, 0.1) == []
    assert jobs(feed(session, "." * 14), final=True) == []
    (final,) = jobs(feed(session, "."), final=True)  # 600 ms: the longest wait
    assert final.end_reason == "silence"
    # The same turn, heard as over at the second check, ends there with that check's text.
    session = new_session(TURN)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 4))
    checked(session, check, "He hoped there would be stew.", 0.9, 0.05)
    (again,) = turn_checks(feed(session, "." * 11))
    out = checked(session, again, "He hoped there would be stew for dinner.", 0.9, 0.9)
    assert published(out, Transcription)[0].transcript == "He hoped there would be stew for dinner."


def test_a_recheck_that_came_due_while_the_first_check_decoded_is_asked_when_it_holds():
    # Under load the first check answers after the recheck's 300 ms: the recheck is asked at
    # the next frame, with the audio up to 300 ms of pause (what an on-time one heard),
    # instead of leaving the turn to the longest wait.
    session = new_session(TURN)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 4))
    assert turn_checks(feed(session, "." * 14)) == []  # 360 ms of pause, the check still out
    assert checked(session, check, "", 0.0, 0.05) == []  # Smart Turn held it
    (again,) = turn_checks(feed(session, "."))
    assert again.trailing_silence_s == pytest.approx(0.3)
    assert again.audio_s == pytest.approx(check.audio_s + 0.22)  # 15 frames of pause, not 19
    assert turn_checks(feed(session, "." * 5)) == []  # asked once
    out = checked(session, again, "He hoped there would be stew for dinner.", 0.9, 0.95)
    assert published(out, Transcription)[0].transcript == "He hoped there would be stew for dinner."


def test_turn_mode_rechecks_a_held_pause_with_the_stricter_veto():
    # Smart Turn hears the clause end as over by the recheck; the decoder, only fairly sure
    # (above the first check's veto, below the recheck's), keeps the turn open.
    session = new_session(TURN)
    (check,) = turn_checks(feed(session, "s" * 30 + "." * 4))
    assert checked(session, check, "", 0.0, 0.05) == []  # Smart Turn alone held it
    (again,) = turn_checks(feed(session, "." * 11))
    assert checked(session, again, "For a full hour he had paced up.", 0.7, 0.96) == []
    assert jobs(feed(session, "." * 14), final=True) == []
    (final,) = jobs(feed(session, "."), final=True)  # the longest wait decides
    assert final.end_reason == "silence"


def test_partials_are_marked_first_words_until_a_partial_with_words_is_published():
    session = new_session()
    (first,) = jobs(feed(session, "s" * 20), final=False)
    assert first.first_words
    session.result(first, ".", now=1.0, language="en", inference_s=0.1)  # no word yet
    (again,) = jobs(feed(session, "s" * 5), final=False)  # 100 ms on after a wordless one
    assert again.first_words
    assert published(
        session.result(again, "He could", now=1.2, language="en", inference_s=0.1), Transcription
    )
    (later,) = jobs(feed(session, "s" * 20), final=False)
    assert not later.first_words


def test_partials_of_speech_a_trusted_vad_heard_skip_whispers_silence_rule():
    # Whisper's plain silence rule blanks a first short word; Silero hears no speech in
    # noise, so its partials are decoded as speech heard (`DecodeOptions.speech_heard`).
    trusted = new_session(dataclasses.replace(CONFIG, vad_trusted=True))
    (partial,) = jobs(feed(trusted, "s" * 20), final=False)
    assert partial.speech_heard and plan(partial).options.speech_heard
    (final,) = jobs(feed(trusted, "." * 30), final=True)
    assert not final.speech_heard and not plan(final).options.speech_heard
    # webrtcvad hears speech in much noise: its partials keep the rule.
    (partial,) = jobs(feed(new_session(), "s" * 20), final=False)
    assert not partial.speech_heard and not plan(partial).options.speech_heard
