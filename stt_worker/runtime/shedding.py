"""Shedding at the NATS client's door: the messages of a session just refused for sending too
fast are dropped before the client builds them, for a moment.

Why: with core NATS the server pushes everything published on our subjects, and closes a
connection that lets 64 MB pile up (Slow Consumer). One nats-py publisher sends about 250,000
tiny messages a second; a nats-py subscriber takes at most about 160,000 a second through its
callbacks on this machine (docs/operations.md), so the worker cannot afford even the cheapest
admission for each message of a flood. Once `Intake` refuses a session's message for its
budget, that subject is `shed` for `hold_s`: the client's protocol parser skips its next
messages by offset (`shed_parser.ShedParser`: no bytes, message object, queue or callback;
a large payload is dropped as it arrives, in the kernel on a plain connection:
`shed_transport.ShedTransport`), counted in
`stt_shed_messages_total` and summed in the session's next ``rate_limited``. The first message
after the hold goes through admission again, which sheds anew while the session is still over
budget (its next messages wait shed for that verdict, so a flood does not pour through
meanwhile; an admitted one ends the hold). ``end`` is never shed (tiny payloads are looked
at), so a flooding session still closes. Durable mode needs none of this: JetStream pushes
at most ``STT_MAX_ACK_PENDING`` unacknowledged messages.
"""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client
from nats.aio.transport import TcpTransport

from stt_worker.core.errors import ProtocolError
from stt_worker.core.protocol import End, decode_client_message
from stt_worker.runtime.shed_parser import ShedParser
from stt_worker.runtime.shed_transport import ShedTransport
from stt_worker.runtime.telemetry.metrics import Metrics

logger = logging.getLogger(__name__)

# How long a refused session's subject is shed; short, so a session back within budget loses
# little and an `end` that comes in the window is still looked at (below).
HOLD_S = 0.2
# `{"type": "end"}` is 10 bytes of msgpack; anything this short is looked at to keep `end`.
_SMALL_BYTES = 32
# Subjects shed at once at most (a flood over many session ids sheds the first this many).
_MAX_SUBJECTS = 10_000


class Shedder:
    """Which subjects are shed until when; `install` puts it in front of a client's reader."""

    def __init__(self, metrics: Metrics, hold_s: float = HOLD_S) -> None:
        self._hold_s = hold_s
        self._until: dict[bytes, float] = {}
        # Per subject: messages and bytes shed since `take` last reported them.
        self._shed: dict[bytes, list[int]] = {}
        # Per subject: bytes shed since `arrivals` last took them (every tick, for the flood
        # meter, which must see them in the second they came, not with the next notice).
        self._arrived: dict[bytes, int] = {}
        self.shed_count = 0
        metrics.watch(
            "stt_shed_messages",
            "Messages of sessions over their budget dropped unread by the NATS client's "
            "reader (core NATS), on top of those refused with `rate_limited`",
            lambda: self.shed_count,
            counter=True,
        )

    def shed(self, subject: str) -> None:
        """`subject`'s session was refused for its budget: drop its next messages a moment."""
        if len(self._until) >= _MAX_SUBJECTS:
            now = time.monotonic()
            self._until = {s: t for s, t in self._until.items() if t > now}
            if len(self._until) >= _MAX_SUBJECTS:
                return
        self._until[subject.encode()] = time.monotonic() + self._hold_s

    def take(self, subject: str) -> tuple[int, int]:
        """Messages and bytes (on the wire: control lines and payloads) of `subject` shed
        since the last call (for its next notice)."""
        counts = self._shed.pop(subject.encode(), None)
        return (counts[0], counts[1]) if counts else (0, 0)

    def leftovers(self) -> list[tuple[str, int, int]]:
        """Subjects no longer shed with counts not yet told (the flood stopped within its
        hold): subject, messages, bytes; each told once."""
        now = time.monotonic()
        done = [subject for subject in self._shed if self._until.get(subject, 0.0) <= now]
        told = []
        for subject in done:
            messages, nbytes = self._shed.pop(subject)
            told.append((subject.decode(errors="replace"), messages, nbytes))
        return told

    def arrivals(self) -> list[tuple[str, int]]:
        """Subjects with bytes shed since the last call, and how many."""
        arrived, self._arrived = self._arrived, {}
        return [(subject.decode(errors="replace"), n) for subject, n in arrived.items()]

    def holds(self, subject: bytes, now: float) -> bool:
        """Whether the message of `subject` at hand is shed at `now`."""
        until = self._until
        if not until:
            return False
        deadline = until.get(subject)
        if deadline is None:
            return False
        if now < deadline:
            return True
        # The hold is over: this message goes to admission as a probe, and the subject's
        # next ones stay shed until its verdict (`release` when admitted, `shed` again when
        # refused); otherwise a flood pours through to the callback meanwhile.
        until[subject] = now + self._hold_s
        return False

    def release(self, subject: str) -> None:
        """A message of `subject` was admitted: stop shedding it."""
        if self._until:
            self._until.pop(subject.encode(), None)

    @staticmethod
    def maybe_end(size: int) -> bool:
        """Whether a payload of `size` bytes may be an `end` (to be looked at, not shed)."""
        return size <= _SMALL_BYTES

    @staticmethod
    def is_end(data: bytes) -> bool:
        # An `end` holds the bytes "end" (its type), whatever else a client packs with it.
        if len(data) > _SMALL_BYTES or b"end" not in data:
            return False
        try:
            return isinstance(decode_client_message(data), End)
        except ProtocolError:
            return False

    def count(self, subject: bytes, nbytes: int, messages: int = 1) -> None:
        """`messages` of `nbytes` in all (on the wire) on `subject` shed: in the metric and
        its next notice."""
        self.shed_count += messages
        counts = self._shed.get(subject)
        if counts is None and len(self._shed) < _MAX_SUBJECTS:
            counts = self._shed[subject] = [0, 0]
        if counts is not None:
            counts[0] += messages
            counts[1] += nbytes
        if subject in self._arrived or len(self._arrived) < _MAX_SUBJECTS:
            self._arrived[subject] = self._arrived.get(subject, 0) + nbytes

    def install(self, nc: Client) -> None:
        """Put a `ShedParser` in place of the client's protocol parser, and a transport that
        drops its shed payloads unread in place of nats-py's TCP one."""
        nc._ps = parser = ShedParser.replacing(nc._ps, self)
        transport = getattr(nc, "_transport", None)
        if isinstance(transport, ShedTransport):
            transport.parser = parser  # installed again: the new parser says what to drop
        elif type(transport) is TcpTransport:
            nc._transport = ShedTransport.replacing(transport, parser)
