"""Durable mode's bookkeeping: which JetStream messages of a session may be acknowledged.

Sans-IO, like `session.py`: `runtime/delivery.py` owns the JetStream consumer and hands each
delivered message here; this module says which ones to acknowledge and when, and knows nothing
of NATS beyond the two calls an `Ackable` offers.

A message is acknowledged only once nothing that may still be published depends on it:

- a chunk, once all of its audio lies before `Session.first_unsettled_sample`: the results
  that cover it are published (or it was silence that can no longer join an utterance);
- the session's latest ``start`` and ``state_change``, when the session closes: a replay must
  reopen the session with the publisher's format and turn, so they stay until nothing of the
  session is left to replay (a drained worker leaves them to its successor, with the audio of
  the utterance it left open);
- ``end`` and everything else still held, when the session closes;
- a message that was rejected, at once: replaying it would fail again.

Ordering makes this safe: a result and the acknowledgements that follow it go out on the one
NATS connection, in that order, so the server never sees an acknowledgement for audio whose
result it has not seen. A crash in between replays the audio: a duplicate result, which the
`source_seq_first` / `source_seq_last` fields let consumers recognise.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from stt_worker.core.protocol import Chunk, ClientMessage, End, Playback, Start, StateChange


class Ackable(Protocol):
    """What a delivered JetStream message offers (nats-py's `Msg`)."""

    async def ack(self) -> None: ...

    async def in_progress(self) -> None: ...


ConfigKind = Literal["start", "state_change"]


@dataclass(slots=True)
class Held:
    message: Ackable
    stream_seq: int
    # Where the message's audio ends in the session's 16 kHz timeline (control messages: where
    # the audio stood when they arrived).
    end_sample: int
    touched_at: float


class AckLedger:
    """One session's messages not yet acknowledged, in delivery order."""

    def __init__(self) -> None:
        self._audio: collections.deque[Held] = collections.deque()
        self._config: dict[ConfigKind, Held] = {}
        self._until_close: list[Held] = []
        self._position_16k = 0.0  # end of the audio delivered so far, in 16 kHz samples

    def __len__(self) -> int:
        return len(self._audio) + len(self._config) + len(self._until_close)

    def hold(
        self,
        message: ClientMessage,
        delivered: Ackable,
        stream_seq: int,
        *,
        sample_rate_hz: int,
        channels: int,
        now: float,
    ) -> list[Held]:
        """Keep a message the session accepted; returns any it supersedes, to acknowledge."""
        match message:
            case Chunk():
                frames = _pcm_bytes(message) // (BYTES_PER_SAMPLE * channels)
                self.hold_audio(delivered, stream_seq, frames, sample_rate_hz, now)
            case Start():
                return self._superseded(self.hold_config("start", delivered, stream_seq, now))
            case StateChange():
                kind: ConfigKind = "state_change"
                return self._superseded(self.hold_config(kind, delivered, stream_seq, now))
            case End():
                self.hold_control(delivered, stream_seq, now)
            case Playback():
                # No microphone audio of its own: settled with the audio received before it,
                # so a replay brings it back beside the chunks it was sent with.
                self.hold_audio(delivered, stream_seq, 0, sample_rate_hz, now)
        return []

    @staticmethod
    def _superseded(held: Held | None) -> list[Held]:
        return [held] if held is not None else []

    def hold_audio(
        self, message: Ackable, stream_seq: int, frames: int, sample_rate_hz: int, now: float
    ) -> None:
        """A chunk of `frames` samples per channel at `sample_rate_hz`."""
        self._position_16k += frames * SAMPLE_RATE_HZ / sample_rate_hz
        end = math.ceil(self._position_16k - 1e-6)
        self._audio.append(Held(message, stream_seq, end, now))

    def hold_control(self, message: Ackable, stream_seq: int, now: float) -> None:
        """An ``end`` (or anything else to keep until the session closes)."""
        self._until_close.append(Held(message, stream_seq, 0, now))

    def hold_config(
        self, kind: ConfigKind, message: Ackable, stream_seq: int, now: float
    ) -> Held | None:
        """The session's latest `kind` message; returns the one it supersedes, to acknowledge."""
        previous = self._config.get(kind)
        self._config[kind] = Held(message, stream_seq, 0, now)
        return previous

    def settled(self, first_unsettled_sample: int) -> list[Held]:
        """Take the messages whose audio all lies before `first_unsettled_sample`."""
        done: list[Held] = []
        while self._audio and self._audio[0].end_sample <= first_unsettled_sample:
            done.append(self._audio.popleft())
        return done

    def release_all(self) -> list[Held]:
        """The session is closed: everything."""
        done = [*self._audio, *self._until_close, *self._config.values()]
        self._forget()
        return done

    def hand_over(self, first_unsettled_sample: int) -> list[Held]:
        """A drain moves the session to the next worker: its settled audio and its control
        messages, to acknowledge. The rest stays in the stream for the next owner, which
        replays it first: the ``start`` and ``state_change`` to reopen the session with, and
        the audio no published result covers yet (the open utterance, left unfinished here),
        to transcribe it whole rather than as a cut and a rest."""
        done = [*self.settled(first_unsettled_sample), *self._until_close]
        self._forget()
        return done

    def _forget(self) -> None:
        self._audio.clear()
        self._until_close.clear()
        self._config.clear()

    def source_seqs(self, start_sample: int, end_sample: int) -> tuple[int, int] | None:
        """Stream sequences of the first and last held message with audio in
        [start_sample, end_sample): what a result covering that audio was made from."""
        first = last = None
        for held in self._audio:
            if held.end_sample <= start_sample:
                continue
            first = held.stream_seq if first is None else first
            last = held.stream_seq
            if held.end_sample >= end_sample:
                break
        return None if first is None or last is None else (first, last)

    def stale(self, now: float, older_than_s: float) -> Iterator[Ackable]:
        """Messages untouched for `older_than_s`, marked touched: the caller tells the server
        they are still in progress, so it does not redeliver them while they are held."""
        for held in (*self._config.values(), *self._audio, *self._until_close):
            if now - held.touched_at >= older_than_s:
                held.touched_at = now
                yield held.message


def _pcm_bytes(chunk: Chunk) -> int:
    """The chunk's PCM byte count, without decoding its base64 a second time."""
    if chunk.audio is not None:
        return len(chunk.audio)
    b64 = chunk.audio_b64 or ""
    return len(b64) // 4 * 3 - b64[-2:].count("=")
