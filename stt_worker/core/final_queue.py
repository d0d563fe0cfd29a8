"""`FinalQueue`: finals waiting for a decode slot, one FIFO per session, served round-robin.

A session with many queued finals takes one turn in each round, so it never delays another
session's first. Both bounds are checked when a final is queued: a session may hold
`per_session`, all sessions together `overall`; past either `put` raises `OverloadedError`
at once, so the session can tell its client and only its own final is lost. No I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from stt_worker.core.errors import OverloadedError

T = TypeVar("T")


class FinalQueue(Generic[T]):
    """Finals by session; the sessions in the order of their next turn."""

    def __init__(self, *, overall: int, per_session: int) -> None:
        self._overall = overall
        self._per_session = per_session
        self._queues: collections.OrderedDict[Hashable, collections.deque[T]] = (
            collections.OrderedDict()
        )
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, key: Hashable, item: T, utterance_id: int) -> None:
        queued = self._queues.get(key)
        utterance = f"utterance {utterance_id} was not transcribed"
        if queued is not None and len(queued) >= self._per_session:
            raise OverloadedError(
                f"this session has {len(queued)} finals queued "
                f"(STT_MAX_PENDING_FINALS_PER_SESSION); {utterance}"
            )
        if self._count >= self._overall:
            raise OverloadedError(
                f"{self._count} finals already queued (STT_MAX_PENDING_FINALS); {utterance}"
            )
        if queued is None:
            queued = self._queues[key] = collections.deque()
        queued.append(item)
        self._count += 1

    def sessions(self) -> Iterator[Hashable]:
        """The sessions with a final queued, whoever's turn is next first."""
        return iter(self._queues)

    def heads(self) -> list[T]:
        """Each session's next final, in turn order."""
        return [queued[0] for queued in self._queues.values()]

    def take(self, key: Hashable) -> T:
        """`key`'s next final; its following one waits for the next round."""
        queued = self._queues[key]
        item = queued.popleft()
        self._count -= 1
        if queued:
            self._queues.move_to_end(key)
        else:
            del self._queues[key]
        return item

    def withdraw(self, key: Hashable, match: Callable[[T], bool]) -> T | None:
        """Take `key`'s queued final that `match`es out of line (its answer came another
        way); None when none is queued (it is decoding, or was never queued)."""
        queued = self._queues.get(key) or collections.deque()
        # By position: `deque.remove` would compare items by value (their audio, too).
        at = next((index for index, item in enumerate(queued) if match(item)), None)
        if at is None:
            return None
        found = queued[at]
        del queued[at]
        self._count -= 1
        if not queued:
            del self._queues[key]
        return found
