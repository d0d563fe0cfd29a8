"""The worker sessions one connection opens, in order: which is open, which are finishing.

Pure bookkeeping (no I/O: the bridge subscribes, publishes and unsubscribes). A flush or
reset ends the open worker session and the next audio opens another, ``<id>~2``,
``<id>~3``...; results of a later one are held until every earlier one has closed, so the
client reads results in the order it spoke.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from stt_worker.core.errors import ErrorCode, OverloadedError
from stt_worker.core.protocol import Error, ServerMessage
from stt_worker.runtime.bus import Subscription

# Joins a connection's id and the number of its next worker session ("ws-1f3a~2"); client ids
# may not hold it, so no client can pick another connection's later session.
SEGMENT_MARK = "~"


@dataclass(slots=True, eq=False)
class Segment:
    """One worker session of the connection: its worker id and the client's name for it."""

    session_id: str
    client_id: str
    subscription: Subscription | None = None
    next_seq: int = 0
    # Finals owed to flushes: the worker's final with end_reason "end" pays one; an empty
    # final pays each one left when the session closes.
    owed_finals: int = 0
    closed: bool = False
    # Results that arrived while an earlier session of the connection was still open: held
    # so that the client reads results in the order it spoke.
    held: list[ServerMessage] = field(default_factory=list)

    def as_client_sees(self, message: ServerMessage) -> ServerMessage:
        """`message` under the client's name for this session: the worker's id is the
        gateway's."""
        if isinstance(message, Error):
            text = message.message.replace(self.session_id, self.client_id)
            return msgspec.structs.replace(message, session_id=self.client_id, message=text)
        return msgspec.structs.replace(message, session_id=self.client_id)


class Segments:
    """A connection's worker sessions, oldest first; at most one of them is open (`current`)."""

    def __init__(self, session_id: str, client_id: str, max_pending: int) -> None:
        self._session_id = session_id
        self._client_id = client_id
        self._max_pending = max_pending
        self._opened = 0
        self.all: list[Segment] = []
        self.current: Segment | None = None

    def check_room(self) -> None:
        """OverloadedError when too many earlier worker sessions are still finishing."""
        pending = self.finishing()
        if len(pending) >= self._max_pending:
            raise OverloadedError(
                f"{len(pending)} worker sessions of this connection are still finishing "
                "(STT_GATEWAY_MAX_PENDING_SESSIONS); frame not used",
                code=ErrorCode.OVERLOADED,
            )

    def next(self) -> Segment:
        """The next worker session, named; not listed until `open` (once subscribed)."""
        self._opened += 1
        suffix = "" if self._opened == 1 else f"{SEGMENT_MARK}{self._opened}"
        return Segment(f"{self._session_id}{suffix}", f"{self._client_id}{suffix}")

    def open(self, segment: Segment) -> None:
        self.all.append(segment)
        self.current = segment

    def end_current(self) -> Segment | None:
        """The open worker session, no longer open (None if none was)."""
        segment, self.current = self.current, None
        return segment

    def closed(self) -> list[Segment]:
        """The worker sessions that have closed (still listed until `remove`)."""
        return [each for each in self.all if each.closed]

    def remove(self, segment: Segment) -> None:
        self.all.remove(segment)

    def finishing(self) -> list[Segment]:
        """The worker sessions not closed yet (the open one included)."""
        return [each for each in self.all if not each.closed]

    def oldest_open(self) -> Segment | None:
        """The worker session whose results the client may read now."""
        return next((each for each in self.all if not each.closed), None)

    def all_closed(self) -> bool:
        return self.current is None and all(each.closed for each in self.all)
