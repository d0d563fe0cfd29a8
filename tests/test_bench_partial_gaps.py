"""`bench.partial_gaps`: each gap between two partials over the target is put down to the
first cause that explains it. Plain calls, no I/O."""

from __future__ import annotations

import numpy as np

from bench.partial_gaps import PartialTiming, breakdown, gaps, longest_pause_ms

STEP_MS = 300.0
SPEECH = np.ones(300, dtype=bool)  # 3 s of 10 ms frames, all loud


def timing(at_ms: float, audio_end_ms: float, decode_ms: float = 100.0, waited_ms: float = 20.0):
    return PartialTiming(at_ms, audio_end_ms, audio_end_ms, decode_ms, decode_ms + waited_ms)


def causes(*partials: PartialTiming, loud: np.ndarray = SPEECH) -> list[str | None]:
    return [gap.cause for gap in gaps(partials, loud, 0.0, STEP_MS)]


def test_a_gap_within_the_target_has_no_cause():
    assert causes(timing(400, 300), timing(690, 600)) == [None]


def test_a_step_of_audio_plus_a_slower_decode_is_growth():
    assert causes(timing(400, 300), timing(740, 600, decode_ms=140)) == ["growth"]


def test_a_pause_of_the_speaker_comes_first():
    loud = SPEECH.copy()
    loud[40:55] = False  # 150 ms quiet between the two partials' audio ends
    assert longest_pause_ms(loud, 0.3, 0.9) == 150.0
    assert causes(timing(400, 300), timing(1100, 900), loud=loud) == ["pause"]


def test_more_audio_than_a_step_is_spaced():
    # A partial between the two went unpublished, or the cadence stretched.
    assert causes(timing(400, 300), timing(1000, 900)) == ["spaced"]


def test_a_long_decode_or_a_long_wait_is_named():
    assert causes(timing(400, 300), timing(790, 600, decode_ms=350)) == ["decode"]
    assert causes(timing(400, 300), timing(790, 600, waited_ms=150)) == ["waited"]


def test_breakdown_counts_causes_and_leaves_pauses_out_of_the_gaps_in_speech():
    loud = SPEECH.copy()
    loud[100:130] = False
    partials = [timing(400, 300), timing(690, 600), timing(1040, 900), timing(1700, 1500)]
    found = gaps(partials, loud, 0.0, STEP_MS)
    summary = breakdown(found, partials)
    assert summary["over_target_by_cause"] == {"growth": 1, "pause": 1}
    assert summary["gap_in_speech_ms"]["n"] == 2
    assert summary["gap_in_speech_ms"]["p95"] < 350
