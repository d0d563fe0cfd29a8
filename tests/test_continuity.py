"""Elastic mode's session continuity on its own (core/continuity): a moved session's numbering
goes on and what the previous owner published is not published again."""

from __future__ import annotations

import msgspec

from stt_worker.core.continuity import Continuation, SessionRecord
from stt_worker.core.protocol import (
    EagerEndOfTurn,
    Error,
    Interrupt,
    SessionClosed,
    Transcription,
    TurnResumed,
)


def transcript(
    utterance_id: int, sequence: int, first: int, last: int, *, final: bool
) -> Transcription:
    return Transcription(
        "s", "words", sequence, not final, final, 0.0, "alice", True, "listening",
        utterance_id=utterance_id, source_seq_first=first, source_seq_last=last,
    )  # fmt: skip


def test_a_new_session_is_published_as_it_is():
    go_on = Continuation()
    message = transcript(1, 0, 10, 20, final=True)
    assert go_on.outgoing(message) == message
    assert go_on.record == SessionRecord(next_utterance_id=2, next_sequence=1, last_final_seq=20)


def test_a_replay_of_published_finals_is_dropped_and_numbering_goes_on():
    # The previous owner published utterance 4's final (sequence 9) covering messages up to 50.
    go_on = Continuation(SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=50))
    # The replay re-transcribes utterance 4's audio as local utterance 1: nothing goes out.
    assert go_on.outgoing(transcript(1, 0, 30, 40, final=False)) is None
    assert go_on.outgoing(transcript(1, 1, 30, 50, final=True)) is None
    assert go_on.outgoing(Interrupt("s", 0.0, "alice", utterance_id=1)) is None
    # The next utterance starts on the boundary message (new, as equal is new) and goes on.
    partial = go_on.outgoing(transcript(2, 2, 50, 60, final=False))
    final = go_on.outgoing(transcript(2, 3, 50, 70, final=True))
    assert (partial.utterance_id, partial.sequence) == (5, 10)
    assert (final.utterance_id, final.sequence) == (5, 11)
    assert go_on.record == SessionRecord(next_utterance_id=6, next_sequence=12, last_final_seq=70)
    error = go_on.outgoing(Error("s", "engine_error", "failed", 0.0, utterance_id=3))
    assert error.utterance_id == 6
    closed = go_on.outgoing(SessionClosed("s", "end", 0.0, "alice", utterances=3))
    assert closed.utterances == 6


def test_an_utterance_the_previous_owner_left_open_keeps_its_id():
    """Partials of utterance 5 went out, then the owner died before its final: the new owner
    transcribes it again as its first utterance, under the same id."""
    go_on = Continuation(SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=50))
    final = go_on.outgoing(transcript(1, 0, 51, 80, final=True))
    assert (final.utterance_id, final.sequence) == (5, 10)


def test_a_session_closed_with_nothing_new_counts_what_was_published():
    go_on = Continuation(SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=50))
    closed = go_on.outgoing(SessionClosed("s", "end", 0.0, "alice", utterances=1))
    assert closed.utterances == 4


def test_a_record_round_trips_through_msgpack():
    record = SessionRecord(next_utterance_id=3, next_sequence=7, last_final_seq=99)
    data = msgspec.msgpack.encode(record)
    assert msgspec.msgpack.decode(data, type=SessionRecord) == record


def test_a_drained_session_moves_on_without_a_session_closed():
    go_on = Continuation()
    assert go_on.outgoing(SessionClosed("s", "shutdown", 0.0, "alice", utterances=2)) is None


def test_an_interrupt_of_a_replayed_utterance_is_dropped_and_shifts_no_id():
    """Killed between a final's publish and its audio's acknowledgement: the new owner hears
    utterance 4 again (local 1), and its barge-in fires at speech onset, before any text."""
    go_on = Continuation(SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=100))
    assert go_on.outgoing(Interrupt("s", 0.0, "alice", utterance_id=1), first_seq=60) is None
    assert go_on.outgoing(transcript(1, 0, 60, 100, final=True)) is None
    interrupt = go_on.outgoing(Interrupt("s", 0.0, "alice", utterance_id=2), first_seq=101)
    final = go_on.outgoing(transcript(2, 1, 101, 130, final=True))
    assert interrupt.utterance_id == final.utterance_id == 5


def test_an_error_without_known_audio_does_not_fix_the_numbering():
    go_on = Continuation(SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=100))
    error = go_on.outgoing(Error("s", "engine_error", "failed", 0.0, utterance_id=1))
    assert error.utterance_id == 5  # as if the first new utterance: nothing better is known
    # Utterance 1 was a replay after all; 2 is the first new one and takes the stored id.
    assert go_on.outgoing(transcript(1, 0, 60, 100, final=True)) is None
    assert go_on.outgoing(transcript(2, 1, 101, 130, final=True)).utterance_id == 5


def test_turn_events_share_the_transcripts_numbering_and_replays():
    go_on = Continuation(SessionRecord(next_utterance_id=5, next_sequence=10, last_final_seq=50))
    # A replayed utterance's turn events are dropped with it (told apart by where it began).
    assert go_on.outgoing(TurnResumed("s", 1, 0, 0.0), first_seq=40) is None
    eager = go_on.outgoing(EagerEndOfTurn("s", 2, 3, "words", 0.0), first_seq=55)
    assert (eager.utterance_id, eager.sequence) == (5, 10)
    final = go_on.outgoing(transcript(2, 4, 55, 70, final=True))
    assert (final.utterance_id, final.sequence) == (5, 11)
