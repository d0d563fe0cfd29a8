"""The barge-in policies on their own: voiced-frame counts and probe texts in, events out."""

from __future__ import annotations

import pytest

from stt_worker.core.barge_in import PROBE_PAUSE_FRAMES, VoiceBargeIn, WordBargeIn
from stt_worker.core.phases import Event
from stt_worker.core.session_config import SessionConfig
from stt_worker.core.turns import Backchannels, Commands

VOICE = VoiceBargeIn(interrupt_frames=10, quiet_frames=20)
WORDS = WordBargeIn(
    interrupt_frames=10, probe_step_frames=5, backchannels=Backchannels(), commands=Commands()
)
PAUSE_S = PROBE_PAUSE_FRAMES * 0.02


def voice(voiced: int, silence: int) -> Event | None:
    return VOICE.on_frame(voiced_frames=voiced, silence_run=silence, voiced_at_last_probe=0)


def words(voiced: int, silence: int, last_probe: int = 0) -> Event | None:
    return WORDS.on_frame(
        voiced_frames=voiced, silence_run=silence, voiced_at_last_probe=last_probe
    )


def test_voice_mode_interrupts_on_enough_voiced_frames():
    assert voice(9, 0) is None
    assert voice(10, 0) is Event.BARGE_IN
    assert voice(10, 3) is Event.BARGE_IN  # counted over the whole candidate, pauses too


def test_voice_mode_drops_speech_that_falls_silent_before_it_interrupts():
    assert voice(9, 19) is None
    assert voice(9, 20) is Event.DROPPED
    assert VOICE.unconfirmed_end is Event.DROPPED  # unconfirmed speech is not transcribed


def test_word_mode_probes_first_once_enough_speech_is_heard():
    assert [words(v, 0) for v in range(10)] == [None] * 10
    assert words(10, 0) is Event.PROBE_DUE
    assert words(9, PROBE_PAUSE_FRAMES) is None  # a pause before enough speech: nothing


def test_word_mode_probes_again_after_each_step_of_more_speech():
    assert [words(v, 0, last_probe=10) for v in range(11, 15)] == [None] * 4
    assert words(15, 0, last_probe=10) is Event.PROBE_DUE
    # Only on a voiced frame: mid-pause the step waits for the pause's own probe.
    assert words(15, 1, last_probe=10) is None


def test_word_mode_marks_the_pause_that_makes_the_last_word_whole():
    runs = {run: words(12, run, last_probe=12) for run in range(1, 10)}
    assert runs.pop(PROBE_PAUSE_FRAMES) is Event.PAUSE_BEGAN
    assert set(runs.values()) == {None}
    assert WORDS.unconfirmed_end is Event.ENDED  # unconfirmed speech is transcribed


def judge(text: str, *, audio_s: float = 0.4, silence_s: float = 0.0, previous: str | None = None):
    return WORDS.judge_probe(
        text, audio_s=audio_s, trailing_silence_s=silence_s, previous_last_word=previous
    )


@pytest.mark.parametrize(
    ("text", "silence_s", "previous", "event"),
    [
        ("Yeah.", 0.0, None, Event.PROBE_ANSWERED),
        ("Mm-hmm, okay.", PAUSE_S, None, Event.PROBE_ANSWERED),
        ("Stop", 0.0, None, Event.BARGE_IN),  # a command, even as an unfinished last word
        ("Okay, hold on", 0.0, None, Event.BARGE_IN),
        ("Hold", 0.0, None, Event.PROBE_ANSWERED),  # half a phrase
        ("Yeah, ru", 0.0, None, Event.PROBE_ANSWERED),  # "ru" may be "right" cut off
        ("Yeah, ru", PAUSE_S, None, Event.BARGE_IN),  # after a pause it is whole
        ("Yeah, ru", 0.0, "ru", Event.BARGE_IN),  # or when two probes end on it
        ("Yeah, ru", PAUSE_S - 0.02, "yeah", Event.PROBE_ANSWERED),
        ("Tell me more", 0.0, None, Event.BARGE_IN),  # real words before the last one
        ("", PAUSE_S, None, Event.PROBE_ANSWERED),
    ],
)
def test_a_probes_text_takes_the_turn_or_not(text, silence_s, previous, event):
    assert judge(text, silence_s=silence_s, previous=previous).event is event


def test_a_probe_reports_its_last_word_and_whether_it_was_whole():
    verdict = judge("Yeah, ru")
    assert (verdict.text, verdict.last_word, verdict.whole) == ("Yeah, ru", "ru", False)
    assert judge("Yeah, ru", silence_s=PAUSE_S).whole
    assert judge("", silence_s=0.0).last_word is None


def test_a_probe_with_more_words_than_its_audio_holds_counts_as_nothing():
    heard = "I'm not gonna be a good one."  # Whisper's, not the user's: 7 words in 0.4 s
    verdict = judge(heard, audio_s=0.4, silence_s=PAUSE_S)
    assert verdict.event is Event.PROBE_ANSWERED
    assert (verdict.text, verdict.last_word) == ("", None)
    # The same words in enough audio are judged as said.
    assert judge(heard, audio_s=2.0, silence_s=PAUSE_S).event is Event.BARGE_IN


def test_configured_phrases_are_the_ones_judged():
    quiet = WordBargeIn(
        interrupt_frames=10,
        probe_step_frames=5,
        backchannels=Backchannels(["yeah", "right"]),
        commands=Commands(()),
    )
    verdict = quiet.judge_probe(
        "Stop", audio_s=0.4, trailing_silence_s=0.0, previous_last_word=None
    )
    assert verdict.event is Event.PROBE_ANSWERED  # no commands: the cut-off word waits
    paused = quiet.judge_probe(
        "Okay", audio_s=0.4, trailing_silence_s=PAUSE_S, previous_last_word=None
    )
    assert paused.event is Event.BARGE_IN  # "okay" is no backchannel here


def test_an_unconfirmed_candidates_final_takes_the_turn_on_real_words():
    assert WORDS.final_takes_turn("Stop talking.")
    assert not WORDS.final_takes_turn("Mm-hmm, okay.")
    assert not WORDS.final_takes_turn("")


def test_the_settings_choose_the_mode():
    assert SessionConfig(enable_interrupt_detection=False).barge_in_policy() is None
    voice_mode = SessionConfig(interrupt_min_speech_ms=250, endpoint_silence_ms=500)
    policy = voice_mode.barge_in_policy()
    assert isinstance(policy, VoiceBargeIn)
    assert (policy.interrupt_frames, policy.quiet_frames) == (12, 25)
    word_mode = SessionConfig(barge_in_words=True, probe_step_ms=150).barge_in_policy()
    assert isinstance(word_mode, WordBargeIn) and word_mode.probe_step_frames == 7
