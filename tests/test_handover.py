"""`core/handover.py`: a session moved between the wildcard connection and its own, at a
marker, has each of its messages handled exactly once and in order, however the two
connections' deliveries interleave. nats-server is modelled as it behaves: every message it
routes goes to each subscribed connection's queue in routing order, and each connection
delivers its queue in order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stt_worker.core.handover import Handover, Source

SESSION = "s1"


@dataclass(frozen=True)
class Marker:
    marker: int


@dataclass
class Server:
    """Routing order: a list of events, each a session message (int) or a `Marker`; the
    session's own subscription covers routing positions [own_from, own_to)."""

    events: list[int | Marker]
    own_from: int
    own_to: int

    def queue(self, source: Source) -> list[int | Marker]:
        if source is Source.WILDCARD:
            return list(self.events)
        return self.events[self.own_from : self.own_to]


def deliver(handover: Handover[int], server: Server, order: list[bool]) -> list[int]:
    """Pop the two queues in `order` (True: the wildcard's next, when it has one); returns
    what the handover says to handle."""
    queues = {source: server.queue(source) for source in Source}
    handled: list[int] = []
    picks = iter(order)
    while queues[Source.WILDCARD] or queues[Source.OWN]:
        pick = next(picks, True)
        source = Source.WILDCARD if pick else Source.OWN
        if not queues[source]:
            source = Source.OWN if source is Source.WILDCARD else Source.WILDCARD
        event = queues[source].pop(0)
        if isinstance(event, Marker):
            released = handover.marker(source, event.marker)
            if released is not None:
                handled += released.messages
        else:
            handled += handover.take(SESSION, source, event)
    return handled


# Any number of messages, marker position, delivery interleaving and bound on held messages.
interleavings = given(
    messages=st.integers(0, 30),
    data=st.data(),
    order=st.lists(st.booleans(), max_size=80),
    max_held=st.integers(1, 40),
)


def routing(messages: int, cut: int, marker: int) -> list[int | Marker]:
    events: list[int | Marker] = list(range(messages))
    events.insert(cut, Marker(marker))
    return events


@settings(max_examples=400, deadline=None)
@interleavings
def test_a_move_to_the_sessions_own_connection_handles_each_message_once(
    messages, data, order, max_held
):
    cut = data.draw(st.integers(0, messages), label="marker routed after this many")
    own_from = data.draw(st.integers(0, cut), label="own subscription from")
    handover: Handover[int] = Handover(max_held=max_held)
    marker = handover.switch(SESSION, Source.OWN, now=0.0)
    assert marker is not None
    server = Server(routing(messages, cut, marker), own_from, messages + 1)
    assert deliver(handover, server, order) == list(range(messages))
    # Done or given up (held past its bound), never stuck half-way once both markers came.
    assert not handover.switching(SESSION)


@settings(max_examples=400, deadline=None)
@interleavings
def test_a_move_back_to_the_wildcard_handles_each_message_once(messages, data, order, max_held):
    # Held past its bound, a move back completes without the own connection's marker (a
    # refused session's last messages may go): here the bound is never reached.
    handover: Handover[int] = Handover(max_held=max_held + messages)
    first = handover.switch(SESSION, Source.OWN, now=0.0)
    assert first is not None and handover.marker(Source.OWN, first) is None
    assert handover.marker(Source.WILDCARD, first) is not None
    assert handover.source(SESSION) is Source.OWN
    cut = data.draw(st.integers(0, messages), label="marker routed after this many")
    marker = handover.switch(SESSION, Source.WILDCARD, now=0.0)
    assert marker is not None
    # The own subscription is removed only once the switch is done: it covers everything.
    server = Server(routing(messages, cut, marker), 0, messages + 1)
    assert deliver(handover, server, order) == list(range(messages))
    assert not handover.switching(SESSION)


def test_messages_of_the_own_connection_wait_for_the_wildcards_marker_then_come_in_order():
    handover: Handover[str] = Handover(max_held=10)
    marker = handover.switch(SESSION, Source.OWN, now=0.0)
    assert marker is not None
    # The own connection is ahead: its marker, then two messages routed after it.
    assert handover.marker(Source.OWN, marker) is None
    assert handover.take(SESSION, Source.OWN, "c") == []
    assert handover.take(SESSION, Source.OWN, "d") == []
    # The wildcard, behind a flood, still delivers what was routed before the marker...
    assert handover.take(SESSION, Source.WILDCARD, "a") == ["a"]
    assert handover.take(SESSION, Source.WILDCARD, "b") == ["b"]
    released = handover.marker(Source.WILDCARD, marker)
    assert released is not None and released.messages == ["c", "d"]
    # ... and its copies after the marker are the own connection's to give.
    assert handover.take(SESSION, Source.WILDCARD, "c") == []
    assert handover.take(SESSION, Source.OWN, "e") == ["e"]
    assert handover.source(SESSION) is Source.OWN


def test_a_switch_held_past_its_bound_is_given_up_and_the_wildcard_goes_on():
    handover: Handover[int] = Handover(max_held=2)
    marker = handover.switch(SESSION, Source.OWN, now=0.0)
    assert marker is not None
    handover.marker(Source.OWN, marker)
    for message in range(3):
        assert handover.take(SESSION, Source.OWN, message) == []
    assert not handover.switching(SESSION) and handover.source(SESSION) is Source.WILDCARD
    assert [handover.take(SESSION, Source.WILDCARD, m) for m in range(3)] == [[0], [1], [2]]
    assert handover.marker(Source.WILDCARD, marker) is None  # late: ignored
    assert handover.take(SESSION, Source.OWN, 3) == []
    assert len(handover) == 0  # a session on the wildcard keeps no state


def test_a_switch_whose_marker_is_lost_expires_without_losing_messages():
    handover: Handover[int] = Handover(max_held=10)
    # Before the old connection's marker: given up, the wildcard still has everything.
    marker = handover.switch(SESSION, Source.OWN, now=0.0)
    assert marker is not None
    assert handover.expire(now=1.0, max_wait_s=5.0) == []
    assert handover.switching(SESSION)
    [(session, released)] = handover.expire(now=6.0, max_wait_s=5.0)
    assert session == SESSION and released.messages == []
    assert handover.source(SESSION) is Source.WILDCARD and not handover.switching(SESSION)
    # After it (the own connection's copy went missing in a reconnect): completed.
    marker = handover.switch(SESSION, Source.OWN, now=10.0)
    assert marker is not None
    handover.marker(Source.WILDCARD, marker)
    assert handover.take(SESSION, Source.WILDCARD, 7) == []
    [(session, released)] = handover.expire(now=16.0, max_wait_s=5.0)
    assert session == SESSION and released.messages == []
    assert handover.source(SESSION) is Source.OWN
    assert handover.take(SESSION, Source.OWN, 8) == [8]


def test_switches_are_one_at_a_time_and_forget_drops_a_session():
    handover: Handover[int] = Handover(max_held=10)
    assert handover.switch(SESSION, Source.WILDCARD, now=0.0) is None  # there already
    marker = handover.switch(SESSION, Source.OWN, now=0.0)
    assert marker is not None
    assert handover.switch(SESSION, Source.WILDCARD, now=0.0) is None  # one under way
    handover.forget(SESSION)
    assert handover.marker(Source.WILDCARD, marker) is None
    assert handover.take(SESSION, Source.OWN, 1) == [] and len(handover) == 0
    with pytest.raises(ValueError):
        Handover(max_held=0)


def test_a_move_back_held_past_its_bound_completes_with_what_it_held():
    # The own subscription of a refused session is going: its messages from the wildcard
    # past the marker are handed on rather than held without end.
    handover: Handover[int] = Handover(max_held=2)
    first = handover.switch(SESSION, Source.OWN, now=0.0)
    assert first is not None
    handover.marker(Source.OWN, first)
    handover.marker(Source.WILDCARD, first)
    marker = handover.switch(SESSION, Source.WILDCARD, now=0.0)
    assert marker is not None
    handover.marker(Source.WILDCARD, marker)
    assert handover.take(SESSION, Source.WILDCARD, 5) == []
    assert handover.take(SESSION, Source.WILDCARD, 6) == []
    assert handover.take(SESSION, Source.WILDCARD, 7) == [5, 6, 7]
    assert handover.source(SESSION) is Source.WILDCARD and not handover.switching(SESSION)
    assert handover.take(SESSION, Source.OWN, 8) == []  # its own connection's last: stray
