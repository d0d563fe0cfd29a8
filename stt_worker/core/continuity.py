"""Elastic mode: a session that moves to another worker goes on where it stood.

Sans-I/O: `runtime/session_store.py` keeps each session's `SessionRecord` in a JetStream KV
bucket; this module decides what the new owner publishes. The session's format, speaker and
turn need nothing here: the `start` and `state_change` messages stay unacknowledged in the
stream until the session closes, so the new owner's consumer replays them first.

What a record adds is the numbering and what was already published:

- Audio the previous owner already covered with a published final comes again when its
  acknowledgements never reached the stream (they raced the consumer's deletion at a
  hand-over, or the owner died between the final and the acknowledgements): such a chunk is
  skipped, not heard again (`covers`).
- A transcript made from audio the previous owner already covered with a published final
  (its `source_seq_first` lies before that final's `source_seq_last`; one shared boundary
  message is new, as in docs/operations.md) is a replay: it is not published again, nor
  are the interrupts, errors and turn events of its utterance. An interrupt comes at speech
  onset, before any transcript: it is told apart by the stream message its utterance began
  in, as are turn events.
- The first utterance that is not a replay takes the record's next `utterance_id`, and the
  first transcript or turn event the record's next `sequence`; later ones keep their local
  spacing. Only a message whose audio is known fixes that offset.
- A session closed by a drain (`shutdown`) is moving, not ending: its `session_closed` is
  not published, and the utterance it had open is left unfinished, its audio in the stream
  for the next owner to transcribe whole under the same `utterance_id` (`moving` numbers
  the record past the partials already published for it). The next owner reopens it from
  its kept `start` and closes it for real (`end`, or `idle` when the publisher has stopped).
"""

from __future__ import annotations

import msgspec

from stt_worker.core.protocol import (
    EagerEndOfTurn,
    Error,
    Interrupt,
    ServerMessage,
    SessionClosed,
    Transcription,
    TurnResumed,
)


class SessionRecord(msgspec.Struct, frozen=True):
    """What the next owner of a session needs to go on numbering it (written on each final)."""

    next_utterance_id: int = 1
    next_sequence: int = 0
    # `source_seq_last` of the last final published: audio up to it is transcribed.
    last_final_seq: int = 0


class Continuation:
    """One session's published numbering, carried on from `record` (None: a new session)."""

    def __init__(self, record: SessionRecord | None = None) -> None:
        self._resumed = record or SessionRecord()
        self._utterance_offset: int | None = None if record else 0
        self._sequence_offset: int | None = None if record else 0
        self._replayed: set[int] = set()  # local utterance ids found to be replays
        self._next_sequence = self._resumed.next_sequence  # past every message published
        self.record = self._resumed

    def covers(self, stream_seq: int) -> bool:
        """Whether a message at `stream_seq` lies wholly within audio a published final was
        made from: the next owner skips it rather than transcribe it again (its audio would
        join the new audio after it into one utterance, all of it then a replay)."""
        return stream_seq < self._resumed.last_final_seq

    def outgoing(
        self, message: ServerMessage, first_seq: int | None = None
    ) -> ServerMessage | None:
        """`message` as consumers see it, or None for a replay of what they have. `first_seq`:
        for an interrupt, error or turn event, the stream sequence its utterance began in,
        when known."""
        match message:
            case Transcription():
                return self._transcription(message)
            case Interrupt(utterance_id=local) | Error(utterance_id=int(local)):
                if self._replay(local, first_seq):
                    return None
                utterance_id = self._utterance(local, fix=first_seq is not None)
                return msgspec.structs.replace(message, utterance_id=utterance_id)
            case EagerEndOfTurn(utterance_id=local) | TurnResumed(utterance_id=local):
                if self._replay(local, first_seq):
                    return None
                utterance_id = self._utterance(local, fix=first_seq is not None)
                sequence = self._sequence(message.sequence)
                return msgspec.structs.replace(
                    message, utterance_id=utterance_id, sequence=sequence
                )
            case SessionClosed(reason="shutdown"):
                return None
            case SessionClosed(utterances=count):
                if self._utterance_offset is None:  # nothing new since the move
                    return msgspec.structs.replace(
                        message, utterances=self._resumed.next_utterance_id - 1
                    )
                return msgspec.structs.replace(message, utterances=count + self._utterance_offset)
        return message

    def _transcription(self, message: Transcription) -> Transcription | None:
        first = message.source_seq_first
        if isinstance(first, int) and first < self._resumed.last_final_seq:
            self._replayed.add(message.utterance_id)
            return None
        utterance_id = self._utterance(message.utterance_id)
        sequence = self._sequence(message.sequence)
        if message.is_final:
            last = message.source_seq_last
            self.record = SessionRecord(
                next_utterance_id=utterance_id + 1,
                next_sequence=sequence + 1,
                last_final_seq=last if isinstance(last, int) else self.record.last_final_seq,
            )
        return msgspec.structs.replace(message, utterance_id=utterance_id, sequence=sequence)

    def _replay(self, local: int, first_seq: int | None) -> bool:
        """Whether a message about local utterance `local` (which began in stream message
        `first_seq`, when known) is a replay of what consumers have."""
        if first_seq is not None and first_seq < self._resumed.last_final_seq:
            self._replayed.add(local)
        return local in self._replayed

    def _sequence(self, local: int) -> int:
        """The published `sequence` of local `local`: the first new message takes the
        record's next one (transcripts and turn events share the count)."""
        if self._sequence_offset is None:
            self._sequence_offset = self._resumed.next_sequence - local
        published = local + self._sequence_offset
        self._next_sequence = max(self._next_sequence, published + 1)
        return published

    def moving(self) -> SessionRecord:
        """The record a drain leaves for the next owner: `record`, numbered past every
        message published, the partials of the utterance the drain left open included, so
        that the next owner, which transcribes that utterance again, reuses no `sequence`."""
        if self._next_sequence <= self.record.next_sequence:
            return self.record
        return msgspec.structs.replace(self.record, next_sequence=self._next_sequence)

    def _utterance(self, local: int, *, fix: bool = True) -> int:
        """The published id of local utterance `local`; the first new one takes the record's
        next id. `fix`: whether `local` is known to be new (without it, a replay's message
        would shift every later id)."""
        if self._utterance_offset is not None:
            return local + self._utterance_offset
        offset = self._resumed.next_utterance_id - local
        if fix:
            self._utterance_offset = offset
        return local + offset
