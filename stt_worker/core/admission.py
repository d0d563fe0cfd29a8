"""Per-session admission: how fast one session may send, and how often it is told it sent too
fast.

A `TokenBucket` holds a budget that refills at `rate` per second up to `capacity`: a session
may send its budget at once (a burst), then no faster than `rate`. `Admission` keeps one
session's three buckets and its `RefusalNotice`:

- audio (``chunk``) in seconds of audio per wall second: ``STT_MAX_AUDIO_SPEED`` (2: twice
  real time) with ``STT_AUDIO_BURST_S`` seconds of audio up front;
- playback (the assistant's audio, the echo reference) by the same two numbers, apart;
- control messages (``start``, ``state_change``) in messages per second,
  ``STT_MAX_CONTROL_PER_S``, with as many up front. ``end`` is never refused: it closes.

A session that keeps sending far past its budget is flooding (`FloodMeter`): once each of
`FLOOD_SECONDS` whole seconds in a row brought more than ``STT_FLOOD_FACTOR`` times what its
audio budget allows (audio admitted, refused or shed unread alike), none of its audio is
admitted until a second brings less. What a flood's budget lets through is random slices of
its audio, which decode into nothing worth publishing, and those decodes were what a flood of
maximal chunks cost the honest sessions beside it on a shared CPU
(bench/results/neighbours-flood.md). A client catching up after a stall sends its backlog in
one second, not three, so it is never taken for a flood.

A refused message is dropped whole (a chunk is never cut) and summed; the session hears of it
at most once per `notice_interval_s` (one ``rate_limited`` error that says how much was refused
since the last). Everything here takes `now` from its caller and does no I/O; a caller that
replays stored messages passes the time each was first published, so a replay at full speed
is measured at the pace it was sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from stt_worker.core.protocol import Chunk, ClientMessage, Playback, Start, StateChange


class TokenBucket:
    """A budget of `capacity` that refills at `rate` per second; starts full."""

    __slots__ = ("_level", "_updated", "capacity", "rate")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._level = capacity
        self._updated = now

    def take(self, amount: float, now: float) -> bool:
        """Spend `amount` if the budget holds it; a refused amount spends nothing. An amount
        over `capacity` (one long chunk) passes on a full budget and leaves it in debt, so it
        costs its full time before the next passes."""
        self._refill(now)
        if self._level < min(amount, self.capacity):
            return False
        self._level -= amount
        return True

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._level >= self.capacity

    def _refill(self, now: float) -> None:
        # A clock that steps back (a replay's publish times out of order) refills nothing.
        elapsed = max(0.0, now - self._updated)
        self._updated = max(self._updated, now)
        self._level = min(self.capacity, self._level + elapsed * self.rate)


# Whole seconds in a row over the flood limit before a session's audio is all refused.
FLOOD_SECONDS = 3


class FloodMeter:
    """Seconds of audio that arrived in each whole second of the clock (`add`): the session is
    `flooding` while each of the last `FLOOD_SECONDS` whole seconds (the current one, not
    over yet, aside) brought more than `limit_s`."""

    __slots__ = ("_seconds", "limit_s")

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._seconds: dict[int, float] = {}  # whole second -> audio seconds; a few kept

    def add(self, audio_s: float, now: float) -> None:
        second = math.floor(now)
        self._seconds[second] = self._seconds.get(second, 0.0) + audio_s
        if len(self._seconds) > FLOOD_SECONDS + 1:
            for old in [s for s in self._seconds if s < second - FLOOD_SECONDS]:
                del self._seconds[old]

    def calm(self, now: float) -> bool:
        """No second that counts now was over the limit: a fresh meter would say the same."""
        since = math.floor(now) - FLOOD_SECONDS
        return all(v <= self.limit_s for s, v in self._seconds.items() if s >= since)

    def flooding(self, now: float) -> bool:
        second = math.floor(now)
        return all(
            self._seconds.get(second - back, 0.0) > self.limit_s
            for back in range(1, FLOOD_SECONDS + 1)
        )


class Traffic(StrEnum):
    """What a message spends: the `kind` label of `stt_rate_limited_total`."""

    AUDIO = "audio"
    PLAYBACK = "playback"
    CONTROL = "control"
    INBOX = "inbox"  # refused because the session's inbox was full, not by a bucket
    FLOOD = "flood"  # audio of a session that floods (`FloodMeter`), whatever its budget


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The admission settings every session shares; a speed of 0 admits everything."""

    max_audio_speed: float = 2.0
    audio_burst_s: float = 10.0
    max_control_per_s: float = 20.0
    notice_interval_s: float = 1.0
    # Times the audio budget (`max_audio_speed`) past which seconds count as a flood; 0: none.
    flood_factor: float = 2.0

    @property
    def flood_limit_s(self) -> float | None:
        """Seconds of audio one second may bring before it counts towards a flood."""
        if self.max_audio_speed <= 0 or self.flood_factor <= 0:
            return None
        return self.flood_factor * self.max_audio_speed


@dataclass(frozen=True, slots=True)
class Refusals:
    """What a session had refused since it was last told: messages and audio seconds, by
    `Traffic`, and what the runtime dropped unread besides (`shed_*`)."""

    messages: dict[Traffic, int]
    audio_s: float
    shed_messages: int = 0
    shed_bytes: int = 0

    @property
    def total(self) -> int:
        """Messages refused or dropped unread."""
        return sum(self.messages.values()) + self.shed_messages

    def describe(self, limits: RateLimits, shed_messages: int = 0, shed_bytes: int = 0) -> str:
        """The notice's text; `shed_*`: more dropped unread, on top of those it holds."""
        shed_messages += self.shed_messages
        shed_bytes += self.shed_bytes
        told = []
        if self.messages:
            kinds = ", ".join(f"{count} {kind}" for kind, count in self.messages.items())
            told.append(
                f"{sum(self.messages.values())} messages refused ({kinds}; "
                f"{self.audio_s:.2f} s of audio)"
            )
        if shed_messages:
            more = "more " if self.messages else ""
            told.append(f"{shed_messages} {more}({shed_bytes} bytes) dropped unread")
        return (
            f"too fast: {'; '.join(told)}. Send audio at real time: at most "
            f"{limits.max_audio_speed:g}x after a {limits.audio_burst_s:g} s burst "
            f"(STT_MAX_AUDIO_SPEED, STT_AUDIO_BURST_S), control messages at most "
            f"{limits.max_control_per_s:g} a second (STT_MAX_CONTROL_PER_S)"
            f"{_flood_rule(limits)}"
        )


def _flood_rule(limits: RateLimits) -> str:
    if limits.flood_limit_s is None:
        return ""
    return (
        f"; after {FLOOD_SECONDS} s in a row past {limits.flood_limit_s:g}x, no audio is "
        f"taken until a second brings less (STT_FLOOD_FACTOR)"
    )


@dataclass(slots=True)
class RefusalNotice:
    """Sums refusals and says when the session may be told of them: at once for the first,
    then at most once per `interval_s`, each notice summing what came since the last. A
    flood that stops leaves a sum untold: `due`, asked again later, tells it."""

    interval_s: float
    _messages: dict[Traffic, int] = field(default_factory=dict)
    _audio_s: float = 0.0
    _shed: list[int] = field(default_factory=lambda: [0, 0])  # messages, bytes
    _told_at: float | None = None

    def refused(self, kind: Traffic, audio_s: float, now: float) -> Refusals | None:
        """Count one refused message; returns the refusals to report now, or None."""
        self._messages[kind] = self._messages.get(kind, 0) + 1
        self._audio_s += audio_s
        return self.due(now)

    def shed(self, messages: int, nbytes: int) -> None:
        """Messages dropped unread by the runtime (past a refusal): told with the next sum."""
        self._shed[0] += messages
        self._shed[1] += nbytes

    @property
    def untold(self) -> bool:
        return bool(self._messages or self._shed[0])

    def due(self, now: float) -> Refusals | None:
        """The refusals not yet reported, when a notice may go out now."""
        if not self.untold:
            return None
        if self._told_at is not None and now - self._told_at < self.interval_s:
            return None
        report = Refusals(dict(self._messages), self._audio_s, *self._shed)
        self._messages.clear()
        self._audio_s = 0.0
        self._shed = [0, 0]
        self._told_at = now
        return report

    def quiet(self, now: float) -> bool:
        """Nothing unreported and the next refusal would be told at once."""
        return not self.untold and (self._told_at is None or now - self._told_at >= self.interval_s)


def audio_seconds(message: Chunk | Playback, sample_rate_hz: int, channels: int) -> float:
    """Seconds of audio a chunk or playback carries, from its size alone (base64 not decoded:
    admission must stay cheap; a malformed payload is refused later, when it is used)."""
    if message.audio is not None:
        size = len(message.audio)
    else:
        size = len(message.audio_b64 or "") * 3 // 4
    if isinstance(message, Playback):
        sample_rate_hz = message.sample_rate or sample_rate_hz
        channels = message.channels or channels
    return size / (max(sample_rate_hz, 1) * max(channels, 1) * BYTES_PER_SAMPLE)


class Admission:
    """One session's budgets: `check` (or `admit`) says whether a message may be used."""

    __slots__ = (
        "_audio",
        "_control",
        "_flood",
        "_playback",
        "channels",
        "limits",
        "notice",
        "sample_rate_hz",
    )

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.limits = limits
        # The microphone format of the session's latest admitted `start`, to time its chunks.
        self.sample_rate_hz = SAMPLE_RATE_HZ
        self.channels = 1
        speed = limits.max_audio_speed
        self._audio = TokenBucket(speed, limits.audio_burst_s, now) if speed > 0 else None
        self._playback = TokenBucket(speed, limits.audio_burst_s, now) if speed > 0 else None
        per_s = limits.max_control_per_s
        self._control = TokenBucket(per_s, per_s, now) if per_s > 0 else None
        limit_s = limits.flood_limit_s
        self._flood = FloodMeter(limit_s) if limit_s is not None else None
        self.notice = RefusalNotice(limits.notice_interval_s)

    def check(self, message: ClientMessage, now: float) -> tuple[Traffic, float] | None:
        """None when `message` is within budget (and spent from it); else what it would have
        spent, for the caller to count and report. ``end`` always passes."""
        kind: Traffic
        audio_s = 0.0
        match message:
            case Chunk() | Playback():
                kind = Traffic.AUDIO if isinstance(message, Chunk) else Traffic.PLAYBACK
                audio_s = audio_seconds(message, self.sample_rate_hz, self.channels)
            case Start() | StateChange():
                kind = Traffic.CONTROL
            case _:
                return None
        if not self.admit(kind, audio_s, now):
            return (Traffic.FLOOD if self.flooding(now) else kind), audio_s
        if isinstance(message, Start):
            self.sample_rate_hz, self.channels = message.sample_rate, message.channels
        return None

    def admit(self, kind: Traffic, audio_s: float, now: float) -> bool:
        """Whether a message of `kind` (with `audio_s` seconds of audio) is within budget;
        no audio is while the session floods."""
        bucket = self._bucket(kind)
        if bucket is None:
            return True
        if kind is Traffic.CONTROL:
            return bucket.take(1.0, now)
        if self._flood is not None:
            self._flood.add(audio_s, now)
            if self._flood.flooding(now):
                return False
        return bucket.take(audio_s, now)

    def flooding(self, now: float) -> bool:
        """Whether the session's audio is all refused as a flood now."""
        return self._flood is not None and self._flood.flooding(now)

    def shed(self, nbytes: int, now: float) -> None:
        """`nbytes` of the session's messages were dropped unread: they arrived all the same,
        so they count towards a flood, as audio in its format."""
        if self._flood is not None:
            per_s = max(self.sample_rate_hz, 1) * max(self.channels, 1) * BYTES_PER_SAMPLE
            self._flood.add(nbytes / per_s, now)

    def idle(self, now: float) -> bool:
        """Every budget full and nothing to report: the same as a fresh `Admission`, so the
        caller may forget it."""
        buckets = (self._audio, self._playback, self._control)
        calm = self._flood is None or self._flood.calm(now)
        return calm and self.notice.quiet(now) and all(b is None or b.full(now) for b in buckets)

    def _bucket(self, kind: Traffic) -> TokenBucket | None:
        if kind is Traffic.AUDIO:
            return self._audio
        if kind is Traffic.PLAYBACK:
            return self._playback
        if kind is Traffic.CONTROL:
            return self._control
        return None
