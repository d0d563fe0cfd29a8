"""The finals queue: one FIFO per session, round-robin, both bounds, withdrawal out of line."""

from __future__ import annotations

import pytest

from stt_worker.core.errors import OverloadedError
from stt_worker.core.final_queue import FinalQueue


def test_sessions_take_turns_and_each_keeps_its_order():
    queue: FinalQueue[str] = FinalQueue(overall=10, per_session=5)
    for item in ("a1", "a2", "a3"):
        queue.put("a", item, 1)
    queue.put("b", "b1", 1)
    assert len(queue) == 4 and queue.heads() == ["a1", "b1"]
    served = []
    while len(queue):
        served.append(queue.take(next(queue.sessions())))
    assert served == ["a1", "b1", "a2", "a3"]


def test_each_bound_refuses_only_the_final_over_it():
    queue: FinalQueue[str] = FinalQueue(overall=3, per_session=2)
    queue.put("a", "a1", 1)
    queue.put("a", "a2", 2)
    with pytest.raises(OverloadedError, match="STT_MAX_PENDING_FINALS_PER_SESSION"):
        queue.put("a", "a3", 3)
    queue.put("b", "b1", 1)
    with pytest.raises(OverloadedError, match=r"STT_MAX_PENDING_FINALS\)"):
        queue.put("c", "c1", 1)
    assert len(queue) == 3


def test_a_withdrawn_final_leaves_its_place_and_frees_its_bounds():
    queue: FinalQueue[str] = FinalQueue(overall=3, per_session=2)
    queue.put("a", "a1", 1)
    queue.put("a", "a2", 2)
    queue.put("b", "b1", 1)
    assert queue.withdraw("a", lambda item: item == "a1") == "a1"
    assert queue.withdraw("a", lambda item: item == "a1") is None  # gone already
    assert queue.withdraw("c", lambda item: True) is None  # nothing queued for it
    assert len(queue) == 2 and queue.heads() == ["a2", "b1"]
    queue.put("a", "a3", 3)  # room again under both bounds
    assert queue.withdraw("b", lambda item: item == "b1") == "b1"
    assert list(queue.sessions()) == ["a"]  # a session with none left has no turn
