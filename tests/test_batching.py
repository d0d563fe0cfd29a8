"""Which waiting jobs form a batch (`core/batching.BatchRule`): plain calls, no loop."""

from __future__ import annotations

import pytest

from stt_worker.core.batching import BatchRule, Waiting

GROUP, OTHER = ("tiny", 600), ("tiny", 800)


def waiting(session: str, *, final: bool, group: tuple | None = GROUP) -> Waiting[str]:
    return Waiting(session, group, final, f"{session}-{'final' if final else 'partial'}")


QUEUE = [
    waiting("p1", final=False),
    waiting("f1", final=True),
    waiting("busy", final=True),
    waiting("p2", final=False),
    waiting("f2", final=True),
    waiting("lead", final=True),  # the lead session's next final waits for its next turn
    waiting("base", final=True, group=OTHER),
    waiting("probe", final=False, group=None),
]


def items(rule: BatchRule, lead: Waiting[str]) -> list[str]:
    return [job.item for job in rule.companions(lead, QUEUE, busy={"busy"})]


def test_one_job_a_batch_takes_no_companions() -> None:
    assert items(BatchRule(max_size=1), waiting("lead", final=True)) == []


def test_finals_join_first_then_partials_one_per_session_of_the_same_group() -> None:
    lead = waiting("lead", final=True)
    assert items(BatchRule(max_size=8), lead) == [
        "f1-final",
        "f2-final",
        "p1-partial",
        "p2-partial",
    ]
    assert items(BatchRule(max_size=3), lead) == ["f1-final", "f2-final"]
    assert items(BatchRule(max_size=4), waiting("p0", final=False)) == [
        "f1-final",
        "f2-final",
        "lead-final",
    ]


def test_no_batch_while_another_slot_is_free() -> None:
    lead = waiting("lead", final=True)
    assert items(BatchRule(max_size=8), lead) != []
    assert BatchRule(max_size=8).companions(lead, QUEUE, busy=(), free_slots=1) == []
    assert BatchRule(max_size=8, wait_s=0.1).wait_left_s(1, 0.0, False, free_slots=1) == 0.0


def test_a_session_appears_once_in_a_batch() -> None:
    twice = [waiting("a", final=True), waiting("a", final=False), waiting("b", final=False)]
    chosen = BatchRule(max_size=4).companions(waiting("lead", final=True), twice, busy=())
    assert [job.item for job in chosen] == ["a-final", "b-partial"]


def test_jobs_that_cannot_batch_never_lead_nor_join() -> None:
    probe = waiting("probe", final=False, group=None)
    assert not BatchRule(max_size=8).batches(probe)
    assert items(BatchRule(max_size=8), probe) == []
    assert "probe-partial" not in items(BatchRule(max_size=8), waiting("x", final=False))
    assert items(BatchRule(max_size=8), waiting("x", final=True, group=OTHER)) == ["base-final"]


@pytest.mark.parametrize(
    ("size", "waited_s", "urgent", "left_s"),
    [
        (1, 0.0, False, 0.004),  # alone: waits its whole wait
        (2, 0.003, False, 0.001),
        (2, 0.005, False, 0.0),  # waited out
        (4, 0.0, False, 0.0),  # full
        (1, 0.0, True, 0.0),  # a probe or turn check is queued: start now
    ],
)
def test_how_long_a_batch_waits_for_companions(
    size: int, waited_s: float, urgent: bool, left_s: float
) -> None:
    rule = BatchRule(max_size=4, wait_s=0.004)
    assert rule.wait_left_s(size, waited_s, urgent) == pytest.approx(left_s)


def test_no_wait_by_default() -> None:
    assert BatchRule(max_size=4).wait_left_s(1, 0.0, False) == 0.0
