"""Error replies the worker may still send: a token bucket per session (or per subject, for
messages that never open one), one for the whole worker, and the count of those held back.

A hostile publisher's invalid messages must not cost the worker one reply (and one log line)
each: a flood of 20,000 would be 20,000 publishes. `ReplyLimiter.allow` says whether a
rejection may be answered now; when it may, it also says how many were held back for that
key since its last reply, so the client hears the sum ("and 17 more"). Every rejection is
still counted by the caller, replied to or not.

Rules:

- each key has `burst` replies at once, refilled at `per_s` a second;
- the worker as a whole has `overall_burst`, refilled at `overall_per_s` a second, so that a
  flood spread over many subjects is bounded too;
- at most `max_keys` keys are remembered; past that the least recently seen is forgotten
  (with its held-back count: the metrics still have it), so the table itself is bounded.

Plain calls, no clock: callers pass `now` (seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`burst` tokens, refilled at `per_s` a second up to `burst`."""

    per_s: float
    burst: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, per_s: float, burst: float, now: float) -> TokenBucket:
        return cls(per_s, burst, burst, now)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def _refill(self, now: float) -> None:
        elapsed_s = max(0.0, now - self.updated_at)
        self.tokens = min(self.burst, self.tokens + elapsed_s * self.per_s)
        self.updated_at = max(self.updated_at, now)


@dataclass(slots=True)
class _Key:
    bucket: TokenBucket
    held_back: int = 0
    code: str | None = None  # the last held-back rejection's error code


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply may go out; `held_back` replies to the same key were withheld before it."""

    held_back: int


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Rejections of `key` never answered, now due a reply of their own: `count` of them,
    the last with error `code`."""

    key: str
    count: int
    code: str | None


class ReplyLimiter:
    """Which rejections get a reply: see the module's rules."""

    def __init__(
        self,
        *,
        per_s: float,
        burst: int,
        overall_per_s: float,
        overall_burst: int,
        max_keys: int,
    ) -> None:
        if per_s <= 0 or burst < 1 or overall_per_s <= 0 or overall_burst < 1 or max_keys < 1:
            raise ValueError("rates must be positive and bursts and max_keys at least 1")
        self._per_s, self._burst = per_s, burst
        self._overall = TokenBucket.full(overall_per_s, overall_burst, 0.0)
        self._max_keys = max_keys
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._untold: set[str] = set()  # keys with held-back rejections

    def allow(
        self, key: str, now: float, code: str | None = None, messages: int = 1
    ) -> Reply | None:
        """A rejection of `messages` client messages for `key` (with error `code`): a
        `Reply` to send now, or None when it is held back."""
        entry = self._keys.get(key)
        if entry is None:
            entry = self._remember(key, now)
        else:
            self._keys.move_to_end(key)
        # The key's own bucket first: a key over its share never spends the shared tokens.
        if not entry.bucket.take(now) or not self._overall.take(now):
            entry.held_back += messages
            entry.code = code
            self._untold.add(key)
            return None
        reply = Reply(entry.held_back)
        entry.held_back = 0
        self._untold.discard(key)
        return reply

    def overdue(self, now: float) -> list[HeldBack]:
        """Held-back rejections whose key may be answered again: the sum a flood that stopped
        never got in a next reply, each within the same shares as any reply."""
        due = []
        for key in list(self._untold):
            entry = self._keys.get(key)
            if entry is None or not entry.held_back:
                self._untold.discard(key)  # forgotten: the metrics still count them
            elif entry.bucket.take(now) and self._overall.take(now):
                due.append(HeldBack(key, entry.held_back, entry.code))
                entry.held_back = 0
                self._untold.discard(key)
        return due

    @property
    def keys(self) -> int:
        """Keys remembered now (bounded by `max_keys`)."""
        return len(self._keys)

    def _remember(self, key: str, now: float) -> _Key:
        if len(self._keys) >= self._max_keys:
            forgotten, _ = self._keys.popitem(last=False)  # the least recently seen key
            self._untold.discard(forgotten)
        entry = _Key(TokenBucket.full(self._per_s, self._burst, now))
        self._keys[key] = entry
        return entry
