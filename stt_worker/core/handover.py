"""Which of two NATS connections a session's messages are taken from, each exactly once.

The worker can take a session's messages from two connections: the wildcard subscription
(`WILDCARD`), which receives every session's messages and with them any flood, and a
subscription to the session's own subject on a second connection (`OWN`), which a flood on
another subject never reaches. Core NATS messages carry no id and the two connections
deliver the same messages at different delays, so a session moves from one to the other at
a *marker*: a message the worker publishes, after the new subscription is in place, on a
subject both connections subscribe to. nats-server appends each message it routes to every
matching connection's queue in the order it routes them, so the marker cuts both queues at
one instant. A session's messages are then taken from the old connection before its copy of
the marker and from the new one after its copy, and every message is handled exactly once
(the new connection's messages wait here while the old one's marker is still on its way).

A switch that holds more than its bound, or waits too long for a marker (lost with a
reconnect), is settled without it. A move to `OWN` is given up: the wildcard has every message,
so nothing is lost. A move back to the wildcard (a session refused for its pace, whose own
subscription is going) is completed: the last of its own connection's messages before the
marker may be lost, a refused session's own loss. Sans-I/O: the worker subscribes, publishes
markers and hands messages on.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

M = TypeVar("M")

# The NATS header that makes a message a marker: "<worker>:<number>", on the session's own
# subject, with no payload. The shedding parser never skips one (`runtime/shed_parser.py`).
MARKER_HEADER = "Stt-Handover"


class Source(enum.Enum):
    WILDCARD = "wildcard"
    OWN = "own"


@dataclass(slots=True)
class _Switch(Generic[M]):
    marker: int
    source: Source  # the connection taken from before the marker
    target: Source  # and after it
    started_at: float
    seen: set[Source] = field(default_factory=set)  # whose copy of the marker came
    held: list[M] = field(default_factory=list)  # the target's messages past its marker


@dataclass(slots=True)
class _State(Generic[M]):
    current: Source = Source.WILDCARD
    switch: _Switch[M] | None = None


@dataclass(frozen=True, slots=True)
class Released(Generic[M]):
    """Messages of `session` to handle now, in order."""

    session: Hashable
    messages: list[M]


class Handover(Generic[M]):
    """Per session: the connection its messages are taken from, and a switch under way."""

    def __init__(self, *, max_held: int) -> None:
        if max_held < 1:
            raise ValueError("max_held must be at least 1")
        self._max_held = max_held
        self._sessions: dict[Hashable, _State[M]] = {}
        self._switches: dict[int, Hashable] = {}  # marker -> session
        self._next_marker = 0

    def source(self, session: Hashable) -> Source:
        state = self._sessions.get(session)
        return state.current if state else Source.WILDCARD

    def switching(self, session: Hashable) -> bool:
        state = self._sessions.get(session)
        return state is not None and state.switch is not None

    def switching_back(self, session: Hashable) -> bool:
        """Whether `session` is moving back to the wildcard."""
        state = self._sessions.get(session)
        return (
            state is not None
            and state.switch is not None
            and state.switch.target is Source.WILDCARD
        )

    def switch(self, session: Hashable, target: Source, now: float) -> int | None:
        """Start moving `session` to `target`: the marker to publish once `target`'s
        subscription is in place (moving to `OWN`) or before it is removed (moving back), or
        None when the session is there already or a switch is under way."""
        state = self._sessions.get(session)
        current = state.current if state else Source.WILDCARD
        if current is target or (state is not None and state.switch is not None):
            return None
        if state is None:
            state = self._sessions[session] = _State()  # the wildcard's sessions have none
        marker, self._next_marker = self._next_marker, self._next_marker + 1
        state.switch = _Switch(marker, state.current, target, now)
        self._switches[marker] = session
        return marker

    def take(self, session: Hashable, source: Source, message: M) -> list[M]:
        """`message` of `session` arrived from `source`: what to handle now (it, or nothing:
        a copy the other connection delivers, or held until the old connection's marker)."""
        state = self._sessions.get(session)
        if state is None:
            return [message] if source is Source.WILDCARD else []
        switch = state.switch
        if switch is None:
            return [message] if source is state.current else []
        if source is switch.source:
            # Before its marker only this connection has it (or has it first in the cut).
            return [] if source in switch.seen else [message]
        if switch.target not in switch.seen:
            return []  # routed before the marker: the old connection has it before its own
        switch.held.append(message)
        if len(switch.held) > self._max_held:
            return self._settle(session, state).messages
        return []

    def marker(self, source: Source, marker: int) -> Released[M] | None:
        """`source`'s copy of `marker` arrived: the session's held messages when the switch
        is complete."""
        session = self._switches.get(marker)
        if session is None:
            return None  # an aborted or finished switch, or another worker's marker
        state = self._sessions[session]
        switch = state.switch
        assert switch is not None and switch.marker == marker
        switch.seen.add(source)
        if switch.source not in switch.seen:
            return None
        if switch.target not in switch.seen:
            return None  # the target's messages after its own marker are taken directly
        return self._complete(session, state)

    def expire(self, now: float, max_wait_s: float) -> list[tuple[Hashable, Released[M]]]:
        """Settle the switches that have waited longer than `max_wait_s` for a marker (see
        the module); returns the messages that released."""
        released = []
        for session in list(self._switches.values()):
            state = self._sessions[session]
            switch = state.switch
            assert switch is not None
            if now - switch.started_at > max_wait_s:
                released.append((session, self._settle(session, state)))
        return released

    def moves(self, marker: int) -> Hashable | None:
        """The session whose switch under way `marker` cuts, or None (an aborted or finished
        switch, or a marker that was never this one's)."""
        return self._switches.get(marker)

    def forget(self, session: Hashable) -> None:
        state = self._sessions.pop(session, None)
        if state is not None and state.switch is not None:
            del self._switches[state.switch.marker]

    def __len__(self) -> int:
        return len(self._sessions)

    def _complete(self, session: Hashable, state: _State[M]) -> Released[M]:
        switch = state.switch
        assert switch is not None
        del self._switches[switch.marker]
        state.current, state.switch = switch.target, None
        if state.current is Source.WILDCARD:
            del self._sessions[session]
        return Released(session, switch.held)

    def _settle(self, session: Hashable, state: _State[M]) -> Released[M]:
        """End a switch without its markers: given up before the wildcard's marker on a move
        to `OWN` (the wildcard delivers, or has delivered, every message held, so the held
        copies go), else completed."""
        switch = state.switch
        assert switch is not None
        if switch.target is Source.OWN and switch.source not in switch.seen:
            del self._switches[switch.marker]
            state.switch = None
            del self._sessions[session]  # back on the wildcard, which needs no state
            return Released(session, [])
        return self._complete(session, state)
