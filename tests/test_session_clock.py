"""The session's timeouts: idle, too old, and audio stopped mid-utterance, in that order."""

from __future__ import annotations

from stt_worker.core.session_clock import SessionClock


def clock() -> SessionClock:
    return SessionClock(idle_timeout_s=60.0, max_session_s=600.0, chunk_timeout_s=2.0, opened_at=0)


def test_audio_stopped_mid_utterance_is_due_only_with_one_open():
    c = clock()
    c.heard(1.0, audio=True)
    assert c.due(2.9, in_utterance=True) is None
    assert c.due(3.0, in_utterance=True) == "timeout"
    assert c.due(3.0, in_utterance=False) is None


def test_messages_without_audio_keep_the_session_not_the_utterance():
    c = clock()
    c.heard(1.0, audio=True)
    for now in (2.0, 30.0, 59.0):
        c.heard(now)  # a state change, an empty chunk
    assert c.due(59.5, in_utterance=True) == "timeout"
    assert c.due(59.5, in_utterance=False) is None
    assert c.due(119.0, in_utterance=False) == "idle"


def test_idle_comes_before_too_old_and_too_old_before_the_chunk_timeout():
    c = clock()
    assert c.due(600.0, in_utterance=True) == "idle"
    for now in range(0, 601, 30):
        c.heard(float(now), audio=True)
    assert c.due(600.0, in_utterance=True) == "max_duration"
    assert c.due(599.0, in_utterance=True) is None
