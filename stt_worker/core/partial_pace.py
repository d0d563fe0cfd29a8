"""How much of the time partials may decode, from how long this process waits for a CPU.

No I/O: the runtime measures the wait (`runtime/cpu_wait.py`) and passes clock times in.

The scheduler's other back-pressure, partials waiting for a slot, cannot see cores shared
with other processes: three workers on two cores each keep a partial decoding (their own
slots are free), so every final runs beside three partial threads and takes 2-3 times as
long. What does show it is the kernel's per-thread count of time spent runnable but not
running (`schedstat`'s run delay): 0.4 of the runnable time for one worker serving 24
sessions on this 2-core machine, 0.8 for each of three workers sharing the same load.

So partials get a duty cycle, set by additive increase, multiplicative decrease (as TCP
paces its window): each second the wait share is over `max_wait_share` the duty shrinks by
`DECREASE`, down to `MIN_DUTY`; each second under it the duty grows by `INCREASE`, up to 1.
After a plain partial decoded for `busy` seconds, partials rest ``busy * (1 - duty) / duty``
(at duty 1, not at all): on cores of its own a worker never waits long and paces nothing.
Speculations (a final's decode done early) and everything else never rest: partials are
the work a voice assistant can go without for a moment, finals are not.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_DUTY = 0.1  # a partial still comes every second or two at worst
DECREASE = 0.7
INCREASE = 0.1


@dataclass(slots=True)
class PartialPace:
    """The partial duty cycle of one engine's slots; `max_wait_share` 0 or 1 turns it off."""

    max_wait_share: float
    duty: float = 1.0
    wait_share: float | None = None  # the last one observed; None: not measured
    rest_until: float = 0.0

    @property
    def enabled(self) -> bool:
        return 0.0 < self.max_wait_share < 1.0

    def observe(self, wait_share: float) -> None:
        """One interval's share of runnable time this process's threads waited for a CPU."""
        self.wait_share = wait_share
        if not self.enabled:
            return
        if wait_share > self.max_wait_share:
            self.duty = max(MIN_DUTY, self.duty * DECREASE)
        else:
            self.duty = min(1.0, self.duty + INCREASE)

    def ran(self, started: float, ended: float) -> float:
        """A plain partial decoded from `started` to `ended`: seconds partials now rest."""
        rest = max(0.0, ended - started) * (1.0 - self.duty) / self.duty
        self.rest_until = max(self.rest_until, ended + rest)
        return rest

    def resting(self, now: float) -> bool:
        return now < self.rest_until
