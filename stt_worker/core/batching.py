"""Which waiting jobs decode together: the batch a free decode slot takes (sans-I/O).

The scheduler picks a job by its usual order (the lead); companions from other sessions then
join it, so one model call serves several sessions (on a GPU, nearly for the price of one).
Only jobs of one group join: the engine's word for jobs it decodes in one call (the same
model and, for CTranslate2, the same window size), so a final never waits on a companion's
decode of its own.
They join in the scheduler's own order, finals before partials, so batching never lets a
partial overtake a final. Barge-in probes and turn checks are never batched, and a batch
stops waiting for companions as soon as one is queued: a turn decision waits on each. While
another decode slot is free there is no batch: that slot decodes the next job beside this
one, sooner than a batch would (on a CPU a batch of two takes longer than one job).
"""

from __future__ import annotations

from collections.abc import Container, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Waiting(Generic[T]):
    """A queued job as batching sees it; `item` is the caller's handle on it."""

    session: Hashable
    # Jobs batch only with jobs of the same group (one model call); None: never batched.
    group: Hashable | None
    final: bool
    item: T


@dataclass(frozen=True, slots=True)
class BatchRule:
    """At most `max_size` jobs a batch; the lead waits up to `wait_s` for companions (0:
    only those already queued, so a lone session's job starts at once)."""

    max_size: int = 1
    wait_s: float = 0.0

    def batches(self, lead: Waiting[T]) -> bool:
        """Whether `lead` may take companions at all (1 = every job decoded alone)."""
        return self.max_size > 1 and lead.group is not None

    def companions(
        self,
        lead: Waiting[T],
        waiting: Sequence[Waiting[T]],
        busy: Container[Hashable],
        free_slots: int = 0,
    ) -> list[Waiting[T]]:
        """Up to `max_size - 1` jobs to decode with `lead`, from `waiting` (in queue order):
        one per session, none of a session with a job running, all of `lead`'s group;
        finals first, then partials. None while `free_slots` (other than `lead`'s) remain."""
        if not self.batches(lead) or free_slots > 0:
            return []
        sessions = {lead.session}
        chosen: list[Waiting[T]] = []
        for finals in (True, False):
            for job in waiting:
                if len(chosen) == self.max_size - 1:
                    return chosen
                if (
                    job.final is finals
                    and job.group is not None
                    and job.group == lead.group
                    and job.session not in sessions
                    and job.session not in busy
                ):
                    chosen.append(job)
                    sessions.add(job.session)
        return chosen

    def wait_left_s(
        self, size: int, waited_s: float, urgent_queued: bool, free_slots: int = 0
    ) -> float:
        """How much longer a batch of `size` jobs waits for companions: none once it is
        full, its wait is over, an urgent job (probe, turn check) is queued, or another slot
        is free (a job arriving now goes there)."""
        if size >= self.max_size or urgent_queued or free_slots > 0:
            return 0.0
        return max(0.0, self.wait_s - waited_s)
