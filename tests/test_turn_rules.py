"""The text rules of turn-taking and the probe's silence rule, without audio."""

from __future__ import annotations

import pytest

from stt_worker.core.turns import (
    Backchannels,
    Commands,
    more_words_than_said,
    sounds_finished,
    turn_is_over,
)
from stt_worker.engines.base import is_hallucination


def test_backchannels_are_judged_on_every_word():
    backchannels = Backchannels()
    assert backchannels.only("Mm-hmm, okay.") and backchannels.only("Mhm.")
    assert not backchannels.only("") and not backchannels.only("Okay, stop.")
    assert backchannels.takes_turn("Yeah, but no.")
    # Mid-speech the last word may be cut off: it is not judged.
    assert not backchannels.takes_turn("Yeah Ru", last_word_whole=False)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("Stop.", True),
        ("No, no.", True),
        ("Okay, hold on", True),
        ("Hold", False),  # half a phrase
        ("Stopping by the woods", False),
        ("Yeah.", False),
        ("", False),
    ],
)
def test_commands_are_whole_words_and_phrases(text: str, said: bool):
    assert Commands().said(text) is said


def test_commands_can_be_configured_away():
    assert not Commands(()).said("Stop.")
    assert Commands(["that's enough"]).said("Okay, that's enough!")


@pytest.mark.parametrize(
    ("text", "finished"),
    [("He could wait no longer.", True), ("I went to the", False), ("and so,", False)],
)
def test_sounds_finished(text: str, finished: bool):
    assert sounds_finished(text) is finished


def test_a_probe_skips_whispers_plain_silence_rule_but_not_the_stricter_ones():
    # "stop" over cancelled echo, as tiny.en decoded it (bench/turns.py, -10 dB echo).
    assert is_hallucination("stop", 0.78, -1.04)
    assert not is_hallucination("stop", 0.78, -1.04, speech_heard=True)
    # Unsure non-speech ("you", a breath's "Ah!") and very unlikely decodes stay out.
    assert is_hallucination("you", 0.4, -1.2, speech_heard=True)
    assert is_hallucination("We'll be done.", 0.55, -2.0, speech_heard=True)
    # A loop at a high no-speech probability, too.
    assert is_hallucination("dot " * 40, 0.7, -0.1, speech_heard=True)


def test_a_probe_cannot_hold_more_words_than_anyone_says_in_its_time():
    # Heard by tiny.en in 0.8 s holding one "stop" (bench/turns.py, stop_0fa1e7a9).
    assert more_words_than_said("I'm not gonna be a good one.", 0.8)
    assert not more_words_than_said("Stop, wait.", 0.8)
    assert not more_words_than_said("For a full hour he had paced", 2.0)


@pytest.mark.parametrize(
    ("text", "end_prob", "over"),
    [
        ("He could wait no longer.", 0.9, True),
        ("He could wait no longer.", 0.6, None),  # the fixed endpoint decides
        ("For a full hour he had paced up and down waiting.", 0.35, False),
        ("And so my fellow Americans,", 0.95, False),  # a comma: mid-phrase whatever
        ("I went to the", 0.9, False),  # a continuation word
        ("He could wait no longer.", None, True),  # no score: punctuation decides
        ("has never been", None, False),
        ("", 0.9, None),
    ],
)
def test_turn_is_over(text: str, end_prob: float | None, over: bool | None):
    assert turn_is_over(text, end_prob, finished_prob=0.75, unfinished_prob=0.5) is over
