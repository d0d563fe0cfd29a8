"""The gateway's per-client bounds as plain objects: connections per client address, and the
rate of error frames one connection may be sent.

Pure (no I/O, no clock: callers pass ``now`` in seconds).
"""

from __future__ import annotations

import collections


class AddressSlots:
    """Open connections per client address, at most `per_address` each."""

    def __init__(self, per_address: int) -> None:
        if per_address < 1:
            raise ValueError(f"per_address must be at least 1, got {per_address}")
        self.per_address = per_address
        self._open: collections.Counter[str] = collections.Counter()

    def take(self, address: str) -> bool:
        """Count one more connection from `address`; False (nothing counted) when full."""
        if self._open[address] >= self.per_address:
            return False
        self._open[address] += 1
        return True

    def give_back(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]  # the table holds open addresses only

    def __len__(self) -> int:
        return len(self._open)


class ErrorBudget:
    """A token bucket for error frames: `burst` at once, then `per_s` a second.

    Bad input always earns a reply, but a client that sends bad frames as fast as it can must
    not make the gateway write error frames as fast as it can: past the budget, errors are
    counted instead of sent, and the next one sent says how many were not.
    """

    def __init__(self, burst: int, per_s: float) -> None:
        if burst < 1 or per_s <= 0:
            raise ValueError(f"need burst >= 1 and per_s > 0, got {burst}, {per_s}")
        self.burst = burst
        self.per_s = per_s
        self.withheld = 0
        self._tokens = float(burst)
        self._at: float | None = None

    def spend(self, now: float) -> bool:
        """True when an error frame may be sent at `now`; else it is counted as withheld."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.withheld += 1
        return False

    def take_withheld(self) -> int:
        """How many errors were withheld since the last call."""
        withheld, self.withheld = self.withheld, 0
        return withheld
